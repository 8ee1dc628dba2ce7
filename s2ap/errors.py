"""The errors a user can cause, and the one-line form every error is shown in.

:class:`ConfigError` is a bad input: ``field`` is its dotted path, the message says what is
allowed. The CLIs print it as one ``error: ...`` line (exit status 2), the service as a JSON
error naming the field. :func:`error_line` shortens any error (a worker's traceback, a
Ray job's log) to the one line a table or a status page shows.
"""

from __future__ import annotations

ERROR_LINE_LIMIT = 500


class ConfigError(ValueError):
    """A bad user input: ``field`` is the dotted path, the message says what is allowed."""

    def __init__(self, field_path: str, message: str) -> None:
        self.field = field_path
        self.message = message
        super().__init__(f"{field_path}: {message}" if field_path else message)

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str]]:
        # Ray copies and pickles a trial's exception on its way to the driver; without this
        # the copy calls ``ConfigError(str(self))`` and the trial's message becomes a TypeError.
        return ConfigError, (self.field, self.message)

    def within(self, prefix: str) -> ConfigError:
        """The same error seen from one level up: ``prune.sparsity`` inside ``base``."""
        if not prefix:
            return self
        return ConfigError(f"{prefix}.{self.field}" if self.field else prefix, self.message)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def error_line(text: object, limit: int = ERROR_LINE_LIMIT) -> str | None:
    """The last non-blank line of ``text`` (an exception or a log), at most ``limit``
    characters; None when there is none."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return None
    return lines[-1][:limit]
