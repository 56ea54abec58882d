"""The operator's files in deploy/: the Prometheus config and alert rules pass promtool and their own unit tests,
the Grafana dashboard's queries parse and run on a real Prometheus scraping a real server, and every metric that
the dashboard and the rules name is one the real server exports (or one of the two in ``NOT_FROM_THE_SERVER``).

promtool, prometheus and the blackbox exporter come from Debian (``apt-get install prometheus
prometheus-blackbox-exporter``; ``.ci/run`` installs them); a test that needs one skips where it is missing.
"""

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from curvedit.client import Client
from curvedit.service.background import BackgroundServer
from curvedit.service.client import edit_request
from curvedit.service.config import ServeConfig

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "curvedit.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMTOOL, PROMETHEUS = shutil.which("promtool"), shutil.which("prometheus")
BLACKBOX = shutil.which("prometheus-blackbox-exporter") or shutil.which("blackbox_exporter")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: apt-get install prometheus")

# Named by the rules and the dashboard, exported by someone else on purpose:
NOT_FROM_THE_SERVER = {
    "up": "Prometheus itself, per scrape target (the server process is gone)",
    "probe_success": "the blackbox exporter's grpc.health.v1 probe (blackbox.yml): the server is not SERVING",
}
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "${datasource}": "", "$job": ".*", "$instance": ".*",
                     "$model": ".*", "$__range": "1h"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, labels, keywords or numbers)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values may hold anything
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)  # label matchers, ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][\w:]*", expr):
        if not expr[match.end():].lstrip().startswith("(") and match.group() not in PROMQL_WORDS:
            names.add(match.group())
    return names


@pytest.mark.parametrize(("expr", "names"), [
    ('histogram_quantile(0.99, sum by (model, le) (rate(a_bucket{job=~"$job", x="by(y)"}[$__rate_interval])))',
     {"a_bucket"}),
    ("sum(rate(a_total[5m])) by (instance) / ignoring(le) b > 1e6 and on (x) c offset 5m", {"a_total", "b", "c"}),
    ("count by (model, version) (nv_x) > bool 0.5", {"nv_x"}),
])
def test_metric_names_of_promql(expr, names):
    assert metric_names(expr) == names


def panels() -> list[dict]:
    board = json.loads(DASHBOARD.read_text())
    return [p for top in board["panels"] for p in [top, *top.get("panels", [])]]


def dashboard_exprs() -> dict[str, str]:
    """``{"panel title / refId": expr}`` of every query on the dashboard, and of its template variables."""
    board = json.loads(DASHBOARD.read_text())
    exprs = {f"{p['title']} / {t['refId']}": t["expr"] for p in panels() for t in p.get("targets", [])}
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["query"]["query"])
            exprs[f"variable {var['name']}"] = inner.group(1)
    return exprs


def rule_exprs() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def with_values(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def test_dashboard_is_well_formed():
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for p in panels():
        assert p["gridPos"]["x"] >= 0 and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
    assert {"job", "instance", "model", "datasource"} <= {v["name"] for v in board["templating"]["list"]}


@needs_promtool
def test_promtool_accepts_the_config_and_the_rules():
    for command in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]):
        result = subprocess.run([PROMTOOL, *command], cwd=DEPLOY / "prometheus", capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_each_alert_fires_on_its_condition_and_not_on_a_near_miss():
    result = subprocess.run([PROMTOOL, "test", "rules", "tests/alerts_test.yml"], cwd=DEPLOY / "prometheus",
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", (DEPLOY / "prometheus/tests/alerts_test.yml").read_text()))
    assert tested == set(rule_exprs()), "every alert needs a unit test"


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path):
    """Each query, Grafana's variables filled in, as a recording rule: promtool parses the PromQL."""
    rules = [{"record": f"dashboard:query_{i}", "expr": with_values(expr)}
             for i, expr in enumerate(dashboard_exprs().values())]
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "dashboard.yml")], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def server(tiny_bundle):
    """A real server on loopback that has answered OK, INVALID_ARGUMENT and a stream: its metrics have samples."""
    config = ServeConfig(port=0, http_port=-1, metrics_port=0, models=(str(tiny_bundle),), max_batch_size=8)
    with BackgroundServer(config) as bg, Client(f"127.0.0.1:{bg.port}", timeout=30) as client:
        for n in (1, 3, 8, 20):
            client.edit(seeds=range(n), edits={"x": 1.0}, images="raw")
        with pytest.raises(grpc.RpcError):
            client.edit(seeds=range(2), edits={"no-such-direction": 1.0})
        stream = [edit_request(latents=np.zeros((4, 8), np.float32), edits={"y": 1.0}, id=str(i))
                  for i in range(3)]
        assert len(list(client.edit_stream(stream))) == 3
        yield bg


def exported(port: int) -> tuple[set[str], str]:
    """Every sample name ``/metrics`` can carry (declared families, suffixes included), and the text itself."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {s.name for s in family.samples}
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
    return names, text


def test_every_metric_the_dashboard_and_the_alerts_name_is_exported(server):
    names, text = exported(server.server.metrics_port)
    used = {(where, name) for where, exprs in (("dashboard", dashboard_exprs()), ("alerts", rule_exprs()))
            for title, expr in exprs.items() for name in metric_names(expr)}
    missing = sorted(f"{where}: {name}" for where, name in used if name not in names | NOT_FROM_THE_SERVER.keys())
    assert not missing, f"named but not exported: {missing}"
    for name in ("curvedit_request_latency_seconds_bucket", "curvedit_batch_size_bucket", "nv_inference_count",
                 "grpc_server_handled_total", "nv_inference_pending_request_count"):
        assert f"\n{name}{{" in text, f"{name} has no sample after the requests"


def test_label_values_the_alerts_match_are_ones_the_server_uses(server):
    _, text = exported(server.server.metrics_port)
    matched = {(label, value) for expr in [*rule_exprs().values(), *dashboard_exprs().values()]
               for label, values in re.findall(r'(grpc_code|reason)!?=~?"([^"]*)"', expr)
               for value in values.split("|")}
    codes = {code.name for code in grpc.StatusCode}
    reasons = set(re.findall(r'curvedit_rejections_total\{[^}]*reason="(\w+)"', text))
    reasons |= {"REJECTED", "CANCELED", "BACKEND", "OTHER"}  # nv_inference_request_failure's, Triton's own set
    assert {"OK", "INVALID_ARGUMENT"} <= set(re.findall(r'grpc_code="(\w+)"', text))  # StatusCode names, as sent
    unknown = sorted(f"{label}={value}" for label, value in matched
                     if value not in (codes if label == "grpc_code" else reasons))
    assert not unknown, f"matched but never exported: {unknown}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], url: str) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, f"{argv[0]} did not come up"
            time.sleep(0.2)


def wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.2)


def get(url: str) -> str:
    return urllib.request.urlopen(url, timeout=10).read().decode()


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus missing: apt-get install prometheus")
@pytest.mark.slow
def test_every_dashboard_query_runs_on_prometheus_scraping_the_server(server, tmp_path):
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "curvedit",
                            "static_configs": [{"targets": [f"127.0.0.1:{server.server.metrics_port}"]}]}]}))
    base = f"http://127.0.0.1:{port}"
    proc = start([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path}/db",
                  f"--web.listen-address=127.0.0.1:{port}"], f"{base}/-/ready")
    try:
        def query(expr: str) -> list:
            answer = json.loads(get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
            assert answer["status"] == "success", (expr, answer)
            return answer["data"]["result"]

        def scrapes() -> int:
            found = query("count_over_time(up[1m])")
            return int(found[0]["value"][1]) if found else 0

        wait_for(lambda: scrapes() >= 1, "a first scrape")  # Prometheus applies new targets after ~5 s
        with Client(f"127.0.0.1:{server.port}", timeout=30) as client:
            first = scrapes()
            while scrapes() < first + 4:  # requests between scrapes: the rates over the last minute are not 0
                client.edit(seeds=range(5), edits={"x": 1.0})
                time.sleep(0.2)
        empty = [title for title, expr in dashboard_exprs().items() if not query(with_values(expr))]
        # the requests above caused no failures, refusals or drops, and nothing probes health here
        quiet = ("Errors/s", "Server error ratio", "Health", "Failed inference", "Queued items dropped",
                 "Model versions that failed")
        assert [title for title in empty if not title.startswith(quiet)] == []
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.skipif(BLACKBOX is None,
                    reason="blackbox exporter missing: apt-get install prometheus-blackbox-exporter")
def test_the_health_probe_says_serving_only_for_a_serving_server(server):
    port = free_port()
    proc = start([BLACKBOX, f"--config.file={DEPLOY / 'prometheus' / 'blackbox.yml'}",
                  f"--web.listen-address=127.0.0.1:{port}"], f"http://127.0.0.1:{port}/metrics")
    try:
        def probe(target: str) -> float:
            text = get(f"http://127.0.0.1:{port}/probe?module=grpc_health&target={target}")
            return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                        if s.name == "probe_success")

        assert probe(f"127.0.0.1:{server.port}") == 1
        assert probe(f"127.0.0.1:{free_port()}") == 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# Per-model families whose every (model, version) series must exist from the start, so that rate() and increase()
# see the first event: which label set is known at start beyond model and version.
PER_MODEL = ("model", "version")


def test_every_series_the_dashboard_and_the_alerts_name_exists_right_after_serving(tiny_bundle):
    """The real ``curvedit serve``, scraped the moment it says SERVING, before any request: each metric the
    dashboard or the rules name has a sample, and each per-model one has a sample for the loaded model."""
    from test_service_warmup import start_cli, wait_for_line

    proc, lines = start_cli("--model", str(tiny_bundle), "--metrics-port", str(port := free_port()))
    try:
        wait_for_line(lines, r"SERVING ")
        text = get(f"http://127.0.0.1:{port}/metrics")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    present: dict[str, list[dict]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            present.setdefault(sample.name, []).append(sample.labels)
    used = {name for exprs in (dashboard_exprs(), rule_exprs()) for expr in exprs.values()
            for name in metric_names(expr)} - NOT_FROM_THE_SERVER.keys()
    missing = sorted(name for name in used if name not in present)
    assert not missing, f"no sample at start (rate/increase would miss the first event): {missing}"
    model_less = sorted(name for name in used if any("model" in labels for labels in present[name])
                        and not any(labels.get("model") == "tiny" for labels in present[name]))
    assert not model_less, f"no series for the loaded model at start: {model_less}"
