"""Server configuration: defaults < file < environment < flags, merged in one place, checked at once."""

import json

import pytest

from curvedit.cli import build_parser
from curvedit.service.cli import _flags
from curvedit.service.config import ServeConfig, build_config


def test_defaults():
    config = build_config({}, {})
    assert (config.host, config.port, config.metrics_port) == ("127.0.0.1", 50051, 8002)
    assert config.models == () and config.max_batch_size >= 1


def test_precedence_file_env_flags(tmp_path):
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({"port": 1, "max_batch_size": 8, "max_queue_delay_ms": 3, "grace_s": 4}))
    env = {"CURVEDIT_MAX_BATCH_SIZE": "16", "CURVEDIT_GRACE_S": "5", "CURVEDIT_WARMUP": "off",
           "CURVEDIT_MODELS": "a:b", "UNRELATED": "x"}
    config = build_config({"grace_s": 6.0, "port": None}, env, path)
    assert (config.port, config.max_batch_size, config.max_queue_delay_ms, config.grace_s) == (1, 16, 3.0, 6.0)
    assert config.models == ("a", "b") and config.warmup is False


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        ServeConfig().port = 1


@pytest.mark.parametrize(("flags", "message"), [
    ({"max_batch_size": 0}, "max_batch_size must be at least 1"),
    ({"port": 70000}, "port must be in"),
    ({"max_queue_size": 10, "max_items_per_request": 20}, "raise --max-queue-size"),
    ({"max_queue_delay_ms": -1}, "max_queue_delay_ms must be >= 0"),
    ({"bogus": 1}, "unknown setting 'bogus'"),
])
def test_bad_settings_say_the_fix(flags, message):
    with pytest.raises(ValueError, match=message):
        build_config(flags, {})


def test_bad_environment_value_names_its_source():
    with pytest.raises(ValueError, match="environment: max_batch_size must be a int"):
        build_config({}, {"CURVEDIT_MAX_BATCH_SIZE": "many"})


def test_serve_flags_reach_the_config():
    args = build_parser().parse_args(["serve", "--model", "m1", "--model", "m2", "--max-batch-size", "1",
                                      "--metrics-port", "9100", "--no-warmup"])
    config = build_config(_flags(args), {})
    assert config.models == ("m1", "m2") and config.max_batch_size == 1 and config.metrics_port == 9100
    assert config.warmup is False and config.port == 50051
