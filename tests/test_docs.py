"""The docs' code blocks: every block marked runnable runs as written, and every Python block at least compiles.

The convention. An HTML comment alone on the line right before a fenced block marks it as runnable (MkDocs
renders the comment as nothing)::

    <!-- runnable -->
    ```bash
    curvedit traverse --seed 3 --out out/traverse.png
    ```

Mark every ``bash`` or ``python`` block that finishes in well under a minute on a 2-core CPU and needs nothing
beyond this repository and its venv. Leave unmarked what trains, benchmarks at full size, or needs Docker, a
cluster, a GPU, a browser or a server the block does not start itself (tests/test_readme.py still parses every
``curvedit`` line of every bash block against the real argument parser).

How a marked block runs: in a fresh temporary directory holding links to the repository's ``docs/``,
``deploy/`` and ``benchmarks/`` and a copy of ``examples/``, so that it reads ``docs/figures/...`` and writes
``out/...`` as it would from the repository root, without writing into the checkout; with this interpreter's bin
directory (the venv's) first on ``PATH``. ``bash`` blocks run under ``bash -euo pipefail``, ``python`` blocks
with this interpreter; each gets ``TIMEOUT_S``. A block that starts a server stops it before it ends (``kill
-TERM $server && wait $server``, with a ``trap`` for the failure path); a block whose ports (``--port``,
``--http-port``, ``--metrics-port``) another process holds is skipped, not failed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- runnable -->"
TIMEOUT_S = 120
LINKED = ("docs", "deploy", "benchmarks")  # read by the blocks, never written
COPIED = ("examples",)  # blocks may write beside these (e.g. ../../runs from examples/byo_generator)
NAV = ["Getting started", "Editing images", "Models and training", "Bring your own generator",
       "Serving and the protocol", "Operations", "Deployment", "Benchmarks", "Evaluation", "Architecture"]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    runnable: bool

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of one Markdown file, in order."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = re.match(r"^```(\w*)\s*$", lines[i])
        if not opening:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "```"), None)
        assert end is not None, f"{path}:{i + 1}: a fenced block is never closed"
        runnable = i > 0 and lines[i - 1].strip() == MARKER
        found.append(Block(path, i + 1, opening.group(1), "\n".join(lines[i + 1:end]) + "\n", runnable))
        i = end + 1
    return found


ALL = [block for page in pages() for block in blocks(page)]
RUNNABLE = [block for block in ALL if block.runnable]


def test_every_marker_stands_right_before_a_bash_or_python_block():
    for page in pages():
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip() == MARKER:
                nxt = lines[i + 1] if i + 1 < len(lines) else ""
                assert nxt in ("```bash", "```python"), \
                    f"{page.relative_to(ROOT)}:{i + 1}: the marker must be followed by ```bash or ```python"


def test_the_docs_have_runnable_blocks_on_every_page_with_commands_to_try():
    marked = {block.path.name for block in RUNNABLE}
    assert {"index.md", "editing.md", "models.md", "serving.md", "operations.md", "benchmarks.md",
            "EVALUATION.md"} <= marked, marked
    assert len(RUNNABLE) >= 20


@pytest.mark.parametrize("block", [b for b in ALL if b.language == "python"], ids=lambda b: b.name)
def test_every_python_block_compiles(block):
    compile(block.code, block.name, "exec")


def test_the_site_builds_strict(tmp_path):
    """`make docs` (mkdocs build --strict): no broken link or anchor, no page left out of the nav."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    if not mkdocs.exists():
        pytest.skip("mkdocs is not installed (the docs extra)")
    argv = [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_nav_is_the_documented_structure():
    yaml = pytest.importorskip("yaml")

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # !relative, !!python/name
    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)
    assert [next(iter(entry)) for entry in config["nav"]] == NAV


def _ports(code: str) -> list[int]:
    return [int(p) for p in re.findall(r"--(?:port|http-port|metrics-port)[ =](\d+)", code) if int(p) > 0]


def _busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _workspace(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    for name in LINKED:
        (work / name).symlink_to(ROOT / name, target_is_directory=True)
    for name in COPIED:
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    return work


@pytest.mark.slow
@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.name)
def test_runnable_block_runs(block, tmp_path):
    busy = [port for port in _ports(block.code) if _busy(port)]
    if busy:
        pytest.skip(f"ports {busy} are held by another process")
    work = _workspace(tmp_path)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
    script = work / ("block.sh" if block.language == "bash" else "block.py")
    script.write_text(block.code)
    argv = ["bash", "-euo", "pipefail", str(script)] if block.language == "bash" else [sys.executable, str(script)]
    # A session of its own, so that whatever the block left running (a server after a failure) is stopped too.
    proc = subprocess.Popen(argv, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        out, err = proc.communicate()
        pytest.fail(f"{block.name} ran past {TIMEOUT_S} s:\n{out[-3000:]}\n{err[-3000:]}")
    finally:
        _stop_group(proc)
    assert proc.returncode == 0, f"{block.name} exited {proc.returncode}:\n{out[-3000:]}\n{err[-3000:]}"


def _stop_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
