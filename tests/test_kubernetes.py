"""deploy/kubernetes, checked offline: the rendered overlays are current (and are what `kubectl kustomize` gives,
where kubectl is installed), every core manifest validates against the Kubernetes schemas (kubernetes-validate),
the manifests agree with each other and with the image, and the ports, health services and metric names they
name are the ones a real `curvedit serve`, started with the Deployment's own arguments, serves."""

import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from curvedit.cli import build_parser
from curvedit.service.config import ServeConfig

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="the dev extra's kubernetes-validate")

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "deploy" / "kubernetes"
sys.path.insert(0, str(KUBE))
import render  # noqa: E402

# The oldest Kubernetes these manifests are for (gRPC probes are GA since 1.27), and the newest schemas shipped.
VERSIONS = ("1.30", kubernetes_validate.latest_version())
CORE = {"Deployment", "Service", "PersistentVolumeClaim", "PodDisruptionBudget", "HorizontalPodAutoscaler"}


def docs(overlay: str) -> dict[tuple[str, str], dict]:
    text = (KUBE / "rendered" / f"{overlay}.yaml").read_text()
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(text) if d}


def container(overlay: str) -> dict:
    (c,) = docs(overlay)[("Deployment", "curvedit")]["spec"]["template"]["spec"]["containers"]
    return c


def test_the_rendered_overlays_are_current():
    done = subprocess.run([sys.executable, str(KUBE / "render.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (render.py stands in)")
@pytest.mark.parametrize("overlay", render.OVERLAYS)
def test_kubectl_kustomize_gives_the_same(overlay):
    done = subprocess.run(["kubectl", "kustomize", str(KUBE / "overlays" / overlay)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    theirs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(done.stdout) if d}
    assert theirs == docs(overlay)


@pytest.mark.parametrize("overlay", render.OVERLAYS)
@pytest.mark.parametrize("version", VERSIONS)
def test_every_core_manifest_validates_against_the_kubernetes_schemas(overlay, version):
    found = docs(overlay)
    assert {kind for kind, _ in found} == CORE | {"PodMonitor"}
    for (kind, _name), doc in found.items():
        if kind in CORE:
            kubernetes_validate.validate(doc, version, strict=True)  # raises, naming the field, if not


def test_a_wrong_field_is_caught():
    doc = docs("gpu")[("Deployment", "curvedit")]
    doc["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["prot"] = 50051
    with pytest.raises(kubernetes_validate.ValidationError, match="prot"):
        kubernetes_validate.validate(doc, VERSIONS[0], strict=True)


def test_the_pod_monitor_names_the_pods_and_their_metrics_port():
    """The PodMonitor's CRD schema is not shipped offline: its fields are checked against the pods here."""
    found = docs("cpu")
    monitor = found[("PodMonitor", "curvedit")]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    pod = found[("Deployment", "curvedit")]["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert set(endpoint) <= {"port", "path", "interval"}
    assert endpoint["port"] in {p["name"] for p in container("cpu")["ports"]} and endpoint["path"] == "/metrics"


def parsed_args(c: dict):
    """The container's arguments as ``curvedit serve`` parses them (the image's ENTRYPOINT)."""
    return build_parser().parse_args(["serve", *c["args"]])


def ports(c: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c["ports"]}


@pytest.mark.parametrize("overlay", render.OVERLAYS)
def test_ports_probes_and_the_drain_agree_with_the_server(overlay):
    c, d = container(overlay), ServeConfig()
    args = parsed_args(c)
    served = {"grpc": args.port or d.port, "http": args.http_port or d.http_port,
              "metrics": args.metrics_port or d.metrics_port}
    assert ports(c) == served  # the ports the server binds with these arguments
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == served["grpc"], probe
    assert c["livenessProbe"]["grpc"]["service"] == "liveness"
    assert "service" not in c["readinessProbe"]["grpc"]  # "": SERVING only when warm and not draining
    pod = docs(overlay)[("Deployment", "curvedit")]["spec"]["template"]["spec"]
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    engine_stop_s = 10  # service/workers.py: Supervisor.stop waits this long for the engine
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + args.grace_s + engine_stop_s
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["models"] == args.model_repository and mounts["cache"] == args.cache_dir
    assert args.repository_poll_s > 0  # hot reload from the volume
    for service in ("curvedit", "curvedit-grpc"):
        for port in docs(overlay)[("Service", service)]["spec"]["ports"]:
            assert port["targetPort"] in ports(c) and port["port"] == served[port["targetPort"]]


def test_the_overlays_differ_where_they_should():
    cpu, gpu = container("cpu"), container("gpu")
    assert cpu["image"] == "curvedit:cpu" and gpu["image"] == "curvedit:cuda"  # the Dockerfile's targets
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1 and "nvidia.com/gpu" not in str(cpu["resources"])
    assert parsed_args(gpu).workers == 4 and parsed_args(cpu).workers is None
    tolerations = docs("gpu")[("Deployment", "curvedit")]["spec"]["template"]["spec"]["tolerations"]
    assert {t["key"] for t in tolerations} == {"nvidia.com/gpu"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "AS cpu" in dockerfile and "AS cuda" in dockerfile


def adapter_rule() -> dict:
    (rule,) = yaml.safe_load((KUBE / "prometheus-adapter" / "values.yaml").read_text())["rules"]["custom"]
    return rule


def test_the_autoscaler_scales_on_the_metric_the_adapter_serves():
    hpa = docs("cpu")[("HorizontalPodAutoscaler", "curvedit")]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == adapter_rule()["name"]["as"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "curvedit"}
    assert hpa["spec"]["minReplicas"] > docs("cpu")[("PodDisruptionBudget", "curvedit")]["spec"]["minAvailable"]


@pytest.fixture(scope="module")
def deployed(tiny_bundle, tmp_path_factory):
    """``curvedit serve`` with the CPU Deployment's arguments: its model repository and cache are folders here
    (one version of the tiny bundle), the host and ports are loopback ones that are free (the ports' agreement
    with the manifests is checked above)."""
    tmp = tmp_path_factory.mktemp("kube")
    shutil.copytree(tiny_bundle, tmp / "models" / "tiny" / "1")
    args = [a for a in container("cpu")["args"] if not a.startswith(("--host=", "--metrics-host="))]
    args = [a.replace("=/models", f"={tmp / 'models'}").replace("=/cache", f"={tmp / 'cache'}") for a in args]
    proc = subprocess.Popen([sys.executable, "-m", "curvedit.cli", "serve", *args, "--port", "0",
                             "--http-port", "0", "--metrics-port", "0", "--engine", "onnxruntime"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        found = re.search(r"SERVING .* on 127\.0\.0\.1:(\d+); metrics http://127\.0\.0\.1:(\d+)/metrics", line)
        if found:
            break
    else:
        raise AssertionError("serve exited before SERVING:\n" + "".join(lines))
    yield int(found.group(1)), int(found.group(2))
    proc.terminate()
    proc.wait(60)
    assert proc.returncode == 0


def test_the_probes_health_services_answer_serving(deployed):
    port, _ = deployed
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            service = container("cpu")[probe]["grpc"].get("service", "")
            answer = check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, probe


def test_the_metrics_the_manifests_name_are_served(deployed):
    _, metrics_port = deployed
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    series = adapter_rule()["seriesQuery"].split("{")[0]
    assert re.search(rf"^{series}{{.*model=\"tiny\"", text, re.M), f"{series} not served"
    assert adapter_rule()["name"]["matches"] == f"^{series}$"


def test_the_deploy_guide_shows_the_rendered_gpu_container():
    """docs/deploy.md's GPU block is the rendered overlay's container (resources, arguments), not a copy that
    drifted."""
    guide = (ROOT / "docs" / "deploy.md").read_text()
    block = guide.split("<!-- rendered: gpu container -->", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    shown = yaml.safe_load(block)
    c = container("gpu")
    assert shown == {"image": c["image"], "args": c["args"], "resources": c["resources"]}


def test_a_shipped_model_copies_out_into_a_repository_version(tmp_path):
    """docs/deploy.md fills the repository volume with `curvedit models --copy`."""
    import curvedit

    out = tmp_path / "models" / "shapes32" / "1"
    argv = [sys.executable, "-m", "curvedit.cli", "models", "--copy", "shapes32", "--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert curvedit.load(out).digest == curvedit.load("shapes32").digest  # verified, standing on its own
    assert not [p for p in out.iterdir() if p.is_symlink()]
    again = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "exists" in again.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["1"]  # no partial copy left behind
