"""The README's promise: two Quick start commands, both run verbatim by CI in a fresh
virtual environment, the main one pointing at a spec that validates."""

import re
import shlex
import subprocess
import sys
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


def test_ci_runs_both_readme_commands_verbatim_in_a_fresh_venv() -> None:
    # .ci/run executes, line by line, what .ci/readme_commands.py prints: that must be the
    # README's two commands exactly as a newcomer reads them.
    printed = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "readme_commands.py")], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert printed == [c.strip() for c in quickstart_commands()]
    test_cmd = printed[1]
    assert "pytest" in test_cmd and "pip install" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-m venv" in ci and '. "$work/venv/bin/activate"' in ci
    assert "readme_commands.py" in ci and 'bash -euo pipefail -c "$cmd"' in ci
    assert "ruff check ." in ci and "ruff format --check ." in ci


def test_readme_commands_refuses_a_readme_without_quickstart(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_commands", ROOT / ".ci" / "readme_commands.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.quickstart_commands("## Quick start\n```bash\n# c\na && b\n```\n## Next\n") == ["a && b"]
    try:
        module.quickstart_commands("# s2ap\nno section\n")
    except ValueError as exc:
        assert "Quick start" in str(exc)
    else:
        raise AssertionError("a README without Quick start was accepted")


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


def test_ci_runs_each_slow_test_once_after_the_fast_tier() -> None:
    """.ci/run's mark expressions split the slow tier: a test with any combination of marks
    (ray, browser and s3 imply slow, tests/conftest.py) matches exactly one of them, and a
    test without slow matches none (the README's command ran it)."""
    import itertools

    ci = (ROOT / ".ci" / "run").read_text()
    block = re.search(r"\ntiers=\(\n(.*?)\n\)", ci, re.S)
    assert block, ".ci/run has no tiers=( ... ) list"
    tiers = [line.strip().strip('"') for line in block.group(1).splitlines() if line.strip()]
    assert 'python -m pytest -q -m "$tier"' in ci and '"$status" -ne 5' in ci
    names = ("slow", "ray", "browser", "s3")
    for values in itertools.product([False, True], repeat=len(names)):
        marks = dict(zip(names, values, strict=True))
        if (marks["ray"] or marks["browser"] or marks["s3"]) and not marks["slow"]:
            continue  # the conftest adds slow to these
        hits = [t for t in tiers if eval(t, {"__builtins__": {}}, marks)]  # and / or / not only
        assert len(hits) == (1 if marks["slow"] else 0), (marks, hits)


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors of a markdown text (headings inside code blocks are not headings)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    titles = re.findall(r"^#{1,6} (.+)$", prose, re.M)
    return {re.sub(r"[^\w\- ]", "", t.strip().lower()).replace(" ", "-") for t in titles}


def test_every_link_in_the_readme_and_docs_resolves() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.is_file(), f"{page.name} links to a missing {path}"
            if anchor:
                assert anchor in _anchors(linked.read_text()), f"{page.name} links to a missing #{anchor}"


def test_the_contents_come_first_and_name_every_section() -> None:
    text = (ROOT / "README.md").read_text()
    sections = re.findall(r"^## (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M)
    contents = text.split("**Contents**", 1)[1].split("\n## ", 1)[0]
    assert text.index("**Contents**") < text.index("## Quick start")
    for title in sections:
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        assert f"(#{slug})" in contents, f"the contents list lacks {title!r}"
    # A newcomer's order: install and run, then their own model and the Python API, then the rest.
    assert sections[:4] == ["Quick start", "Prune your own model", "Python API", "Tests"]
