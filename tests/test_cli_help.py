"""Every option of every `curvedit` command says what it does and its default (issue 8, item 7)."""

import argparse

import pytest

from curvedit.cli import build_parser


def commands(parser: argparse.ArgumentParser, prefix: str = ""):
    """``(command words, parser)`` for every leaf command."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix.strip(), parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from commands(sub, f"{prefix} {name}")


OPTIONS = [(command, action) for command, parser in commands(build_parser()) for action in parser._actions
           if action.option_strings and not isinstance(action, argparse._HelpAction)
           and action.help != argparse.SUPPRESS]


def test_every_command_is_covered():
    names = {command for command, _ in OPTIONS}
    assert {"edit", "traverse", "info", "train editor", "train recipe", "export", "eval", "serve", "batch",
            "bench engine", "client encode"} <= names


@pytest.mark.parametrize(("command", "action"), OPTIONS,
                         ids=[f"{c}:{a.option_strings[-1]}" for c, a in OPTIONS])
def test_every_option_has_help_with_its_default(command, action):
    assert action.help, f"`curvedit {command} {action.option_strings[-1]}` has no help text"
    assert "default" in action.help or "required" in action.help or action.required, (
        f"`curvedit {command} {action.option_strings[-1]}` does not say its default: {action.help!r}")


def test_each_command_module_registers_the_commands_the_cli_maps_to_it():
    """``curvedit COMMAND`` builds only its owner's parser (curvedit/cli.py), so the map must be exact."""
    import importlib

    from curvedit.cli import COMMAND_MODULES

    for name, commands in COMMAND_MODULES.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(name).register(sub)
        assert tuple(sub.choices) == commands, name
