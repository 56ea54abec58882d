"""The Dockerfile, linted (no container daemon runs here, so it is never built in CI): multi-stage, a CPU and a
CUDA target from pinned bases, installs only through deploy/image/install.sh and the lock, runs as a user that
is not root, has a HEALTHCHECK, and its ports, command and health check are the server's own. That the install
script and the image's commands work is checked by .ci/check_base_install.py (`make check-install`), which runs
them in a fresh venv."""

import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from curvedit.cli import build_parser
from curvedit.service.config import ServeConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "image"))
from dockerfile import exec_form, healthcheck_command, instructions, stage  # noqa: E402

FOUND = instructions(ROOT / "Dockerfile")
ARGS = {i.args.split("=", 1)[0]: i.args.split("=", 1)[1] for i in FOUND if i.keyword == "ARG" and "=" in i.args}


def froms() -> dict[str, str]:
    """stage name → its base."""
    return {i.stage: i.args.split()[0] for i in FOUND if i.keyword == "FROM"}


def test_stages_targets_and_pinned_bases():
    bases = froms()
    assert {"wheel", "install-cpu", "install-cuda", "runtime", "cpu", "cuda"} <= set(bases), bases
    assert [i.stage for i in FOUND if i.keyword == "FROM"][-1] == "cpu"  # `docker build .` gives the CPU image
    assert bases["cpu"] == bases["cuda"] == "runtime"
    for name, base in bases.items():
        image = ARGS.get(base.strip("${}"), base) if base.startswith("$") else base
        if image in bases:
            continue  # an earlier stage
        assert ":" in image and not image.endswith(":latest"), f"stage {name}: base {image} has no pinned tag"
    assert ARGS["PYTHON_IMAGE"].startswith("python:3.11-")  # the lock's platform: CPython 3.11


def test_installs_go_through_the_lock_and_the_install_script():
    runs = [i for i in FOUND if i.keyword == "RUN"]
    for i in runs:
        if "pip" in i.args:
            assert "pip wheel" in i.args and i.stage == "wheel", f"line {i.line}: pip outside install.sh: {i.args}"
    for variant in ("cpu", "cuda"):
        (install,) = [i for i in runs if i.stage == f"install-{variant}"]
        assert "install.sh" in install.args and "LOCK=/build/lock.txt" in install.args
        assert install.args.rstrip().endswith(f" {variant}")
        copies = " ".join(i.args for i in stage(FOUND, f"install-{variant}") if i.keyword == "COPY")
        assert "requirements/lock.txt" in copies and "deploy/image/install.sh" in copies
    # The runtime copies the finished venv and nothing to build with.
    for name in ("cpu", "cuda"):
        (copy,) = [i for i in stage(FOUND, name) if i.keyword == "COPY"]
        assert copy.args == f"--from=install-{name} /opt/curvedit /opt/curvedit"
    assert "+cpu" in (ROOT / "requirements" / "lock.txt").read_text().split("torch==", 1)[1].split("\n")[0]


def test_runs_as_a_user_that_is_not_root():
    runtime = stage(FOUND, "runtime")
    users = [i for i in runtime if i.keyword == "USER"]
    assert users, "no USER in the runtime stage"
    uid = users[-1].args.split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric: Kubernetes' runAsNonRoot can check it
    entry = next(i for i in runtime if i.keyword == "ENTRYPOINT")
    assert users[-1].line < entry.line
    assert not [i for i in stage(FOUND, "cpu") + stage(FOUND, "cuda") if i.keyword == "USER"]  # not undone


def test_ports_command_and_health_check_are_the_servers():
    runtime = {i.keyword: i.args for i in stage(FOUND, "runtime")}
    d = ServeConfig()
    assert sorted(int(p) for p in runtime["EXPOSE"].split()) == sorted([d.port, d.http_port, d.metrics_port])
    command = exec_form(runtime["ENTRYPOINT"]) + exec_form(runtime["CMD"])
    assert command[:2] == ["curvedit", "serve"]
    args = build_parser().parse_args(command[1:])  # the server's own parser takes CMD as it is
    assert args.host == "0.0.0.0" and args.metrics_host == "0.0.0.0"  # published ports reach the server
    assert runtime["STOPSIGNAL"] == "SIGTERM"  # the drain
    health = healthcheck_command(runtime["HEALTHCHECK"])
    assert health[:3] == ["curvedit", "client", "health"]
    assert health[health.index("--server") + 1] == f"127.0.0.1:{d.port}"
    build_parser().parse_args(health[1:])
    assert "--start-period=" in runtime["HEALTHCHECK"]  # a cold warm-up is not a failure


def ignored(path: str, patterns: list[str]) -> bool:
    """``.dockerignore`` semantics for the patterns used here: the last matching line wins, ``!`` re-includes,
    and a pattern matching a folder covers what is inside it."""
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, "**/" + pattern) for p in prefixes):
            verdict = not negate
    return verdict


def test_every_copied_path_is_in_the_build_context():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = []
    for i in FOUND:
        if i.keyword == "COPY" and not i.args.startswith("--from"):
            copied += i.args.split()[:-1]
    assert "deploy/image/install.sh" in copied
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
        assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    assert ignored(".venv", patterns) and ignored("tests/test_container.py", patterns)
    assert ignored("deploy/kubernetes/base/hpa.yaml", patterns)
    assert not ignored("deploy/image/install.sh", patterns)


def test_the_install_script_is_posix_sh_and_refuses_a_bad_variant(tmp_path):
    script = ROOT / "deploy" / "image" / "install.sh"
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    done = subprocess.run(["sh", str(script), str(tmp_path / "venv"), "x.whl", "rocm"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "variant must be cpu or cuda" in done.stderr
    if shutil.which("shellcheck"):
        assert subprocess.run(["shellcheck", "-s", "sh", str(script)]).returncode == 0


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (the checks above stand in)")
def test_hadolint():
    assert subprocess.run(["hadolint", str(ROOT / "Dockerfile")]).returncode == 0
