"""The README is the front door: its Python examples run, and the commands it and every docs page give exist.

Every ``curvedit ...`` command in a bash (or sh) block of README.md and docs/**/*.md parses with the real argument
parser, whether or not tests/test_docs.py runs the block; every ``make TARGET`` named there exists. The README's
client example talks to ``127.0.0.1:50051`` (``make run``); here it talks to a server of the same models started
in this process on a free port.
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
SHELLS = ("bash", "sh")
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")"}
KEYWORDS = {"until", "while", "if", "then", "do", "else", "time", "!", "exec"}


def blocks(language: str, page: Path = README) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), flags=re.S | re.M)


def shell_lines(code: str) -> list[str]:
    """The block's command lines: continuations and quotes that span lines joined, heredoc bodies left out."""
    lines, heredoc = [], None
    for line in code.replace("\\\n", " ").splitlines():
        if heredoc is not None:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        if lines and _open_quote(lines[-1]):
            lines[-1] += "\n" + line
            continue
        match = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if match:
            heredoc = match.group(1)
        lines.append(line)
    return lines


def _open_quote(line: str) -> bool:
    try:
        shlex.split(line, comments=True)
    except ValueError:  # "No closing quotation": the string goes on on the next line
        return True
    return False


def simple_commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line, as argv lists: comments, redirections, ``VAR=value`` prefixes and
    leading keywords (``until``, ``do``, …) removed."""
    line = re.sub(r"<<-?\s*['\"]?\w+['\"]?", " ", line)  # a heredoc's opening
    line = re.sub(r"(^|\s)\d*(>>?|<)&?\s*[^\s;|&]+", " ", line)  # > file, 2>&1, >/dev/null, < in
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    out = []
    for argv in commands:
        while argv and (argv[0] in KEYWORDS or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0])):
            argv = argv[1:]
        if argv:
            out.append(argv)
    return out


def commands(pages=PAGES) -> list[tuple[str, list[str]]]:
    """Every ``curvedit ...`` command of the pages' shell blocks, with its page (``--help`` lines not parsed)."""
    found = []
    for page in pages:
        for language in SHELLS:
            for code in blocks(language, page):
                for line in shell_lines(code):
                    for argv in simple_commands(line):
                        if argv[0] == "curvedit" and "--help" not in argv:
                            found.append((str(page.relative_to(ROOT)), argv))
    return found


def test_readme_has_examples_to_check():
    assert blocks("python"), "README has no python example"
    assert commands([README]), "README has no curvedit command"


def test_the_readme_stays_short():
    """The front door: what it is, the two commands, a client example, the models, links; the rest is in docs/."""
    lines = len(README.read_text().splitlines())
    assert lines <= 150, f"README.md has {lines} lines (at most 150): move the detail to a page under docs/"


def test_the_command_splitter():
    line = "until curvedit client health --server 127.0.0.1:50051 >/dev/null 2>&1; do sleep 1; done  # wait"
    assert simple_commands(line) == [["curvedit", "client", "health", "--server", "127.0.0.1:50051"],
                                     ["sleep", "1"], ["done"]]
    assert simple_commands("OMP_NUM_THREADS=1 curvedit eval --out docs --threads 1 && echo ok") == \
        [["curvedit", "eval", "--out", "docs", "--threads", "1"], ["echo", "ok"]]
    assert simple_commands("curvedit bench engine --image-model '' --json out/b.json &") == \
        [["curvedit", "bench", "engine", "--image-model", "", "--json", "out/b.json"]]
    assert shell_lines("cat > f <<'EOF'\ncurvedit nope\nEOF\ncurvedit models \\\n  --copy x\n") == \
        ["cat > f <<'EOF'", "curvedit models    --copy x"]
    assert shell_lines("curl -d '{\"a\": 1,\n  \"b\": 2}' url\necho ok\n") == \
        ["curl -d '{\"a\": 1,\n  \"b\": 2}' url", "echo ok"]


@pytest.fixture(scope="module")
def server_address():
    """The README's client example needs `make run`'s server; this is one with the same models it names."""
    from curvedit.service.background import BackgroundServer
    from curvedit.service.config import ServeConfig

    config = ServeConfig(port=0, metrics_port=-1, http_port=-1, models=("shapes32", "shapes-vae"))
    with BackgroundServer(config) as background:
        yield f"127.0.0.1:{background.port}"


@pytest.mark.parametrize("code", blocks("python"), ids=lambda code: code.splitlines()[0][:40])
def test_python_example_runs(code, request):
    if "Client(" in code:
        code = code.replace("127.0.0.1:50051", request.getfixturevalue("server_address"))
    exec(compile(code, str(README), "exec"), {})


def test_make_targets_named_in_the_docs_exist():
    makefile = (ROOT / "Makefile").read_text()
    shell = "\n".join(code for page in PAGES for language in SHELLS for code in blocks(language, page))
    targets = set(re.findall(r"^make (\w+)", shell, flags=re.M))
    assert {"run", "test"} <= targets
    for target in targets:
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"the docs name `make {target}`, Makefile lacks it"


@pytest.mark.parametrize("page, argv", commands(), ids=lambda x: x if isinstance(x, str) else " ".join(x)[:90])
def test_curvedit_command_in_the_docs_parses(page, argv):
    """The command parses with the real argument parser (no typos, no stale flags)."""
    from curvedit.cli import build_parser

    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"{page}: `{shlex.join(argv)}` does not parse (exit {exc.code})")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in README.read_text()


def test_help_runs():
    subprocess.run([sys.executable, "-m", "curvedit.cli", "--help"], check=True, capture_output=True)
