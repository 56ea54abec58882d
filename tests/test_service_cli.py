"""`curvedit serve / client / batch` as a user meets them: help that says each default, flags that reach the
config, and one clear line for a server that is not there."""

import argparse

import pytest

from curvedit.cli import build_parser, main
from curvedit.service.cli import _flags, unreachable_message
from curvedit.service.config import build_config


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def service_parsers() -> dict[str, argparse.ArgumentParser]:
    commands = subparsers(build_parser())
    found = {"serve": commands["serve"], "batch": commands["batch"]}
    for name, parser in subparsers(commands["client"]).items():
        found[f"client {name}"] = parser
    return found


OPTIONS = [(command, action.dest) for command, parser in service_parsers().items() for action in parser._actions
           if not isinstance(action, argparse._HelpAction) and action.help != argparse.SUPPRESS]


def test_the_service_commands_are_all_checked():
    assert {c for c, _ in OPTIONS} == {"serve", "batch", "client models", "client health", "client edit",
                                       "client encode", "client traverse"}
    assert len(OPTIONS) > 60


@pytest.mark.parametrize(("command", "dest"), OPTIONS, ids=[f"{c}:{d}" for c, d in OPTIONS])
def test_every_option_says_its_default(command, dest):
    (action,) = [a for a in service_parsers()[command]._actions if a.dest == dest]
    assert action.help and ("default" in action.help or "required" in action.help), (command, dest, action.help)


@pytest.mark.parametrize("argv", [
    ["client", "models"], ["client", "health"], ["client", "traverse", "--direction", "x"],
    ["client", "edit", "--edit", "x=1"], ["batch", "--seeds", "0:4", "--edit", "x=1", "--out", "unused"]])
def test_no_server_is_one_line_saying_how_to_start_one(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--server", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err]
    assert "no server at 127.0.0.1:1" in err and "start one with `curvedit serve`" in err
    assert "failed to connect" not in err and "ipv4" not in err and "Traceback" not in err


def test_unreachable_message_tells_a_tls_failure_and_passes_a_draining_server_through():
    assert "--ca-file" in unreachable_message("h:1", "Ssl handshake failed: SSL_ERROR_SSL")
    assert unreachable_message("h:1", "server is shutting down (draining); retry ...") is None


def test_serve_flags_reach_the_config():
    args = build_parser().parse_args([
        "serve", "--metrics-host", "0.0.0.0", "--max-concurrent-requests", "64", "--max-message-mb", "8",
        "--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-client-ca", "ca.pem", "--auth-token-file", "t",
        "--no-reflection"])
    config = build_config(_flags(args), {})
    assert (config.metrics_host, config.max_concurrent_requests, config.max_message_mb) == ("0.0.0.0", 64, 8)
    assert (config.tls_cert, config.tls_key, config.tls_client_ca) == ("c.pem", "k.pem", "ca.pem")
    assert config.auth_token_file == "t" and config.reflection is False


def test_environment_reaches_the_new_settings():
    config = build_config({}, {"CURVEDIT_MAX_CONCURRENT_REQUESTS": "32", "CURVEDIT_REFLECTION": "off",
                               "CURVEDIT_METRICS_HOST": "::1"})
    assert (config.max_concurrent_requests, config.reflection, config.metrics_host) == (32, False, "::1")
