"""The README is the front door: its Python example runs, and the commands it gives exist."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def test_python_examples_run():
    code = blocks("python")
    assert code, "README has no python example"
    for block in code:
        exec(compile(block, str(README), "exec"), {})


def test_make_targets_named_in_the_readme_exist():
    makefile = (README.parent / "Makefile").read_text()
    for target in set(re.findall(r"^make (\w+)", "\n".join(blocks("bash")), flags=re.M)):
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"README names `make {target}`, Makefile lacks it"


def test_curvedit_commands_in_the_readme_parse():
    """Every `curvedit ...` line in the README parses with the real argument parser (no typos, no stale flags)."""
    from curvedit.cli import build_parser

    parser = build_parser()
    for line in "\n".join(blocks("bash")).splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("curvedit ") and "--help" not in line:
            args = line.split()[1:]
            parser.parse_args(args)  # raises SystemExit on an unknown command or flag


def test_ci_runs_the_readme_test_command():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in README.read_text()


def test_help_runs():
    subprocess.run([sys.executable, "-m", "curvedit.cli", "--help"], check=True, capture_output=True)
