"""The parts of a Dockerfile this project's checks read (stdlib only): its instructions, each with the stage it
belongs to, continuation lines joined and comments dropped; the exec form (JSON array) of CMD, ENTRYPOINT and
HEALTHCHECK CMD. Used by tests/test_container.py (the lint) and .ci/check_base_install.py (which runs the image's
commands)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    stage: str  # the name after FROM ... AS (or the stage's index)
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str
    line: int  # where it starts, 1-based


def instructions(path: Path) -> list[Instruction]:
    found: list[Instruction] = []
    stage, pending, start = "", "", 0
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text, pending = (pending + line).strip(), ""
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            named = re.search(r"\s+AS\s+(\S+)$", args, re.IGNORECASE)
            stage = named.group(1) if named else str(sum(1 for i in found if i.keyword == "FROM"))
        found.append(Instruction(stage, keyword, args.strip(), start))
    return found


def exec_form(args: str) -> list[str]:
    """``["a", "b"]`` → ``["a", "b"]``; a shell-form command raises ``ValueError``."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        raise ValueError(f"not the exec form (a JSON array): {args}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"not the exec form (a JSON array of strings): {args}")
    return value


def stage(found: list[Instruction], name: str) -> list[Instruction]:
    return [i for i in found if i.stage == name]


def healthcheck_command(args: str) -> list[str]:
    """HEALTHCHECK's options, then ``CMD [...]``: the command."""
    _, sep, command = args.partition("CMD ")
    if not sep:
        raise ValueError(f"HEALTHCHECK without CMD: {args}")
    return exec_form(command.strip())
