"""The README is the front door: its Python example runs, and the commands it gives exist."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def commands() -> list[str]:
    """Every `curvedit ...` line of the README's bash blocks (comments stripped; --help lines are not parsed)."""
    lines = (line.split("#")[0].strip() for line in "\n".join(blocks("bash")).splitlines())
    return [line for line in lines if line.startswith("curvedit ") and "--help" not in line]


def test_readme_has_examples_to_check():
    assert blocks("python"), "README has no python example"
    assert commands(), "README has no curvedit command"


@pytest.mark.parametrize("code", blocks("python"), ids=lambda code: code.splitlines()[0][:40])
def test_python_example_runs(code):
    exec(compile(code, str(README), "exec"), {})


def test_make_targets_named_in_the_readme_exist():
    makefile = (README.parent / "Makefile").read_text()
    for target in set(re.findall(r"^make (\w+)", "\n".join(blocks("bash")), flags=re.M)):
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"README names `make {target}`, Makefile lacks it"


@pytest.mark.parametrize("line", commands())
def test_curvedit_command_in_the_readme_parses(line):
    """The line parses with the real argument parser (no typos, no stale flags)."""
    from curvedit.cli import build_parser

    build_parser().parse_args(line.split()[1:])  # raises SystemExit on an unknown command or flag


def test_ci_runs_the_readme_test_command():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in README.read_text()


def test_help_runs():
    subprocess.run([sys.executable, "-m", "curvedit.cli", "--help"], check=True, capture_output=True)
