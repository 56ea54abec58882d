"""The base install is a product: build the wheel, install it without extras into a fresh venv (versions from the
lock), then use it as a new user would.

1. ``curvedit <command> --help`` exits 0 for every subcommand at every depth;
2. the read-only commands run: models, info, edit (latents and a real image), traverse, translate, batch;
3. a command that needs an extra (export, training that writes ONNX graphs) says which one in one line, exit 2;
4. the container image's command (the Dockerfile's ENTRYPOINT + CMD, ports swapped for free ones) reports
   SERVING, passes the image's HEALTHCHECK command, answers ``curvedit client edit``, and SIGTERM stops it cleanly
   (exit 0).

The install is the image's: ``deploy/image/install.sh`` (a fresh venv, the wheel, the lock's versions).

Run by ``.ci/run`` after the tests (``make check-install`` runs it alone); stdlib only, any python3 ≥ 3.10.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
SERVE_START_S = 180  # the first start on a fresh machine warms the default model up (no route cache)
WHEEL_LIMIT_MB = 25  # each weight byte stored once (models/bundle_files.py): 18 MB at the last count
WALK = """
import argparse, json
from curvedit.cli import build_parser

def walk(parser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield [*path, name]
                yield from walk(sub, (*path, name))

print(json.dumps(list(walk(build_parser()))))
"""


def step(text: str) -> None:
    print(f"check-install: {text}", flush=True)


def run(cmd: list[str], expect: int = 0, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if done.returncode != expect:
        sys.exit(f"check-install: `{' '.join(map(str, cmd))}` exited {done.returncode}, expected {expect}\n"
                 f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
    return done


def install(tmp: Path) -> Path:
    wheels = tmp / "wheels"
    step("building the wheel")
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(ROOT)])
    (wheel,) = wheels.glob("curvedit-*.whl")
    step(f"{wheel.name}: {wheel.stat().st_size / 1e6:.1f} MB; installing it without extras into a fresh venv")
    if wheel.stat().st_size > WHEEL_LIMIT_MB * 1e6:
        sys.exit(f"check-install: the wheel is {wheel.stat().st_size / 1e6:.1f} MB, over {WHEEL_LIMIT_MB} MB")
    # The container image's own install script (the Dockerfile's install stages run it the same way).
    run(["sh", str(ROOT / "deploy" / "image" / "install.sh"), str(tmp / "venv"), str(wheel), "cpu"])
    python = tmp / "venv" / "bin" / "python"
    for module in ("onnx", "onnxscript", "sklearn", "ray", "pytest"):
        run([str(python), "-c", f"import importlib.util as u, sys; sys.exit(u.find_spec({module!r}) is not None)"])
    return tmp / "venv" / "bin"


def check_help(bin_dir: Path, work: Path) -> None:
    paths = json.loads(run([str(bin_dir / "python"), "-c", WALK], cwd=work).stdout)  # not the source tree's
    step(f"--help of {len(paths) + 1} commands")
    run([str(bin_dir / "curvedit"), "--help"])
    for path in paths:
        run([str(bin_dir / "curvedit"), *path, "--help"])


def check_read_only(bin_dir: Path, work: Path) -> None:
    curvedit = str(bin_dir / "curvedit")
    drawn = ROOT / "docs" / "figures" / "drawn" / "shape_00.png"
    commands = [
        ["models"],
        ["info"],
        ["edit", "--seed", "0", "--count", "4", "--edit", "scale=1", "--out", str(work / "edit")],
        ["edit", "--model", "shapes-vae", "--image", str(drawn), "--edit", "x=1", "--out", str(work / "real")],
        ["traverse", "--out", str(work / "traverse.png")],
        ["translate", "--model", "faces-photo", "--to", "faces-avatar", "--seed", "0", "--count", "2",
         "--out", str(work / "translate")],
        ["batch", "--seeds", "0:64", "--edit", "scale=1", "--out", str(work / "batch"), "--quiet"],
    ]
    for args in commands:
        step("curvedit " + " ".join(args[:3]))
        run([curvedit, *args], cwd=work)
    for name in ("edit/edited.npy", "real/edit.png", "traverse.png"):
        if not (work / name).is_file():
            sys.exit(f"check-install: {name} was not written")


def check_extras_are_named(bin_dir: Path, work: Path) -> None:
    curvedit = str(bin_dir / "curvedit")
    for args, extra in ((["export", "--out", str(work / "exported")], "export"),
                        (["train", "default", "--out", str(work / "trained")], "export"),
                        (["train", "generator", "--family", "vae", "--data", "digits", "--out", str(work / "g")],
                         "train")):
        done = run([curvedit, *args], expect=2, cwd=work)
        lines = done.stderr.strip().splitlines()
        if len(lines) != 1 or f"pip install 'curvedit[{extra}]'" not in lines[0]:
            sys.exit(f"check-install: `curvedit {' '.join(args)}` should name the {extra!r} extra in one line, "
                     f"said: {done.stderr!r}")
        step(f"curvedit {args[0]} {args[1]}: {lines[0]}")
    if (work / "exported").exists() or (work / "trained").exists():
        sys.exit("check-install: a refused command left output behind")


def image_commands() -> tuple[list[str], list[str]]:
    """The Dockerfile's ENTRYPOINT + CMD, and its HEALTHCHECK command."""
    sys.path.insert(0, str(ROOT / "deploy" / "image"))
    from dockerfile import exec_form, healthcheck_command, instructions

    found = {i.keyword: i.args for i in instructions(ROOT / "Dockerfile") if i.stage == "runtime"}
    return exec_form(found["ENTRYPOINT"]) + exec_form(found["CMD"]), healthcheck_command(found["HEALTHCHECK"])


def check_serve(bin_dir: Path, work: Path) -> None:
    command, health = image_commands()
    step(f"the image's command `{' '.join(command)}` (default models) until SERVING")
    if command[0] != "curvedit" or health[0] != "curvedit":
        sys.exit(f"check-install: the image runs {command[0]!r} / {health[0]!r}, expected curvedit")
    server = subprocess.Popen([str(bin_dir / "curvedit"), *command[1:], "--port", "0", "--http-port", "0",
                               "--metrics-port", "0", "--cache-dir", str(work / "cache")], cwd=work,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    start, lines, port = time.monotonic(), [], None
    try:
        while port is None:
            line = server.stdout.readline()
            if not line:
                sys.exit("check-install: serve exited before SERVING:\n" + "".join(lines[-40:]))
            lines.append(line)
            found = re.search(r"SERVING .* on [\w.:]+:(\d+);", line)
            if found:
                port = int(found.group(1))
            if time.monotonic() - start > SERVE_START_S:
                sys.exit(f"check-install: no SERVING within {SERVE_START_S} s:\n" + "".join(lines[-40:]))
        step(f"SERVING on port {port} after {time.monotonic() - start:.1f} s")
        target = f"127.0.0.1:{port}"
        health = [str(bin_dir / "curvedit"), *(a.replace("127.0.0.1:50051", target) for a in health[1:])]
        step(f"the image's HEALTHCHECK: {' '.join(health[1:])}")
        run(health)
        run([str(bin_dir / "curvedit"), "client", "edit", "--server", target, "--seed", "0", "--count", "4",
             "--edit", "scale=1", "--out", str(work / "client")], cwd=work)
        server.send_signal(signal.SIGTERM)
        rest, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    if server.returncode != 0 or "stopped" not in rest:
        sys.exit(f"check-install: serve exited {server.returncode} after SIGTERM:\n{rest[-3000:]}")
    step("SIGTERM: drained and stopped, exit 0")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="curvedit-base-") as tmp:
        tmp = Path(tmp)
        bin_dir = install(tmp)
        work = tmp / "work"
        work.mkdir()
        env_note = {k: v for k, v in os.environ.items() if k.startswith("CURVEDIT_")}
        if env_note:
            step(f"environment: {env_note}")
        check_help(bin_dir, work)
        check_read_only(bin_dir, work)
        check_extras_are_named(bin_dir, work)
        check_serve(bin_dir, work)
    step("the base install runs every read-only command")


if __name__ == "__main__":
    main()
