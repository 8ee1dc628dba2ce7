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


def raised_line(error: BaseException | None, limit: int = ERROR_LINE_LIMIT) -> str | None:
    """The one line an error stands for after it crossed processes: the exception a trial
    raised, not the wrappers Ray put around it (a task error keeps it in ``.cause``, a Train
    failure per worker in ``.worker_failures``). A :class:`ConfigError` reads as the CLI
    prints it (``data.root: no data set found at ...``), anything else as ``Type: message``."""
    exc, seen = error, 0
    while exc is not None and seen < 10:
        failures = getattr(exc, "worker_failures", None)
        inner = next(iter(failures.values()), None) if isinstance(failures, dict) else None
        inner = inner if isinstance(inner, BaseException) else getattr(exc, "cause", None)
        if not isinstance(inner, BaseException) or inner is exc:
            break
        exc, seen = inner, seen + 1
    if exc is None:
        return None
    if isinstance(exc, ConfigError) or type(exc).__name__ == "TrialFailed":
        return error_line(exc, limit) or type(exc).__name__
    message = error_line(exc, limit)
    return f"{type(exc).__name__}: {message}"[:limit] if message else type(exc).__name__
