"""The ``curvedit`` command line. Each area registers its own subcommands; this file only dispatches.

Every command module has ``register(subparsers)``, which adds its parsers and sets ``func`` on each; ``func``
receives the parsed arguments and returns an exit code. A ``ValueError`` (bad input, a refused bundle) becomes
a one-line message on stderr and exit code 2, an ``OSError`` (a file that cannot be read or written) one line and
exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Each command module and the commands it registers (tests/test_cli_help.py checks the two agree).
COMMAND_MODULES = {
    "curvedit.commands": ("edit", "traverse", "info", "models"),
    "curvedit.translate_cli": ("translate",),
    "curvedit.train_cli": ("train",),
    "curvedit.export.cli": ("export",),
    "curvedit.bench.cli": ("bench",),
    "curvedit.service.cli": ("serve", "client", "batch"),
    "curvedit.evaluation.cli": ("eval",),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with ``command`` only of the module that owns it: ``curvedit serve``
    then imports neither the benchmarks nor the trainers (an unknown ``command`` gets them all, for the error)."""
    parser = argparse.ArgumentParser(
        prog="curvedit", description="Commutative, nonlinear latent-space image editing (DeCurvEd)."
    )
    parser.add_argument("--version", action="version", version=f"curvedit {_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    owners = [name for name, commands in COMMAND_MODULES.items() if command in commands] or COMMAND_MODULES
    for name in owners:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise
            continue  # an area not built yet
        module.register(subparsers)
    return parser


def _is_rpc_error(exc: Exception) -> bool:
    grpc = sys.modules.get("grpc")  # only commands that talk to a server have imported it
    return grpc is not None and isinstance(exc, grpc.RpcError) and hasattr(exc, "code")


def _version() -> str:
    from curvedit import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        print(f"curvedit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that cannot be read or written: one line, not a traceback
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"curvedit {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except Exception as exc:
        if not _is_rpc_error(exc):
            raise
        # A server's answer (or an unreachable one) is a message for the user, not a traceback.
        print(f"curvedit {args.command}: error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"curvedit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
