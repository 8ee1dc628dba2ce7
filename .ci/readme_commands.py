"""Print the README's Quick start commands, one per line, exactly as written there.

``.ci/run`` runs what this prints, so CI and the README cannot drift apart; the tests
(``tests/test_readme.py``) check that the README holds exactly two such commands.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def quickstart_commands(text: str) -> list[str]:
    """The command lines of the first bash block under "## Quick start" (no comments)."""
    if "## Quick start" not in text:
        raise ValueError("README.md has no '## Quick start' section")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    if block is None:
        raise ValueError("the Quick start section has no bash block")
    return [
        line.strip()
        for line in block.group(1).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


if __name__ == "__main__":
    try:
        commands = quickstart_commands(README.read_text())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(commands))
