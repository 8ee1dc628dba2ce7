"""The README's promise: two Quick start commands, the test one run verbatim by CI, the main
one pointing at a spec that validates."""

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "Quick start has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_quickstart_has_exactly_two_commands() -> None:
    assert len(quickstart_commands()) == 2


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_cmd = quickstart_commands()[1]
    assert "pytest" in test_cmd and "pip install" in test_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def test_main_command_installs_and_runs_a_valid_spec() -> None:
    from s2ap.tune.spec import load_spec

    main_cmd = quickstart_commands()[0]
    assert main_cmd.startswith("pip install")
    run = main_cmd.split("&&", 1)[1]
    argv = shlex.split(run)
    assert argv[:3] == ["python", "-m", "s2ap.tune"]
    spec_path = ROOT / argv[3]
    assert spec_path.is_file()
    load_spec(spec_path)
