"""The declared dependencies install a working package: minimums match what the generated stubs check at import,
and platform-bound wheels are asked for only where they exist."""

import re
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
STUBS = ROOT / "proto" / "curvedit" / "v1"

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the 3.10 fallback the package itself declares
    import tomli as tomllib

# (sys_platform, platform_machine, platform_system) of the platforms a user may install on.
PLATFORMS = {
    "linux-x86_64": ("linux", "x86_64", "Linux"),
    "linux-aarch64": ("linux", "aarch64", "Linux"),
    "macos-arm64": ("darwin", "arm64", "Darwin"),
    "windows-amd64": ("win32", "AMD64", "Windows"),
}


def requirements(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [Requirement(text) for text in listed]


def minimum(name: str) -> Version:
    (req,) = [r for r in requirements() if r.name == name]
    (spec,) = [s for s in req.specifier if s.operator == ">="]
    return Version(spec.version)


def installs_on(name: str, platform: str, python: str = "3.11") -> bool:
    sys_platform, machine, system = PLATFORMS[platform]
    env = {**default_environment(), "sys_platform": sys_platform, "platform_machine": machine,
           "platform_system": system, "python_version": python}
    return any(r.name == name and (r.marker is None or r.marker.evaluate(env)) for r in requirements())


def test_protobuf_minimum_is_what_the_stubs_validate():
    text = (STUBS / "latent_edit_pb2.py").read_text()
    generated = Version(re.search(r"# Protobuf Python Version: (\S+)", text).group(1))
    (req,) = [r for r in requirements() if r.name == "protobuf"]
    assert minimum("protobuf") >= generated, "the stubs refuse an older protobuf runtime at import"
    assert generated in req.specifier, "the stubs' own protobuf version must be allowed"


@pytest.mark.parametrize("package", ["grpcio", "grpcio-health-checking", "grpcio-reflection"])
def test_grpc_minimums_are_what_the_stubs_need(package):
    text = (STUBS / "latent_edit_pb2_grpc.py").read_text()
    generated = Version(re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", text).group(1))
    assert minimum(package) >= generated, "the grpc stub raises at import on an older grpcio"


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_exactly_one_onnxruntime_everywhere(platform):
    gpu, cpu = installs_on("onnxruntime-gpu", platform), installs_on("onnxruntime", platform)
    assert gpu != cpu, f"{platform}: onnxruntime-gpu {gpu}, onnxruntime {cpu}"
    assert gpu == (platform in ("linux-x86_64", "windows-amd64")), "onnxruntime-gpu has wheels only there"


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_triton_only_on_linux(platform):
    assert installs_on("triton", platform) == platform.startswith("linux")


def test_tomli_only_where_tomllib_is_missing():
    assert installs_on("tomli", "linux-x86_64", python="3.10")
    assert not installs_on("tomli", "linux-x86_64", python="3.11")


def test_exporters_are_an_extra_not_a_runtime_requirement():
    runtime = {r.name for r in requirements()}
    assert not runtime & {"onnx", "onnxscript"}
    assert {r.name for r in requirements("export")} == {"onnx", "onnxscript"}
    assert "scikit-learn" not in runtime, "only the digits training recipe needs it"


# -- the lock ----------------------------------------------------------------------------------------------------
LOCK = ROOT / "requirements" / "lock.txt"
LOCK_ENV = {**default_environment(), "sys_platform": "linux", "platform_machine": "x86_64",
            "platform_system": "Linux", "python_version": "3.11", "python_full_version": "3.11.7"}


def locked() -> dict[str, Version]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{line}: the lock pins exact versions"
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def dev_requirements() -> list[Requirement]:
    """Every requirement `pip install -e '.[dev]'` asks for directly on the lock's platform."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    texts = list(project["dependencies"])
    for text in extras["dev"]:
        req = Requirement(text)
        if req.name == "curvedit":
            for extra in req.extras:
                texts += extras[extra]
        else:
            texts.append(text)
    return [r for r in map(Requirement, texts) if r.marker is None or r.marker.evaluate(LOCK_ENV)]


@pytest.mark.parametrize("req", dev_requirements(), ids=str)
def test_the_lock_pins_every_declared_dependency_inside_its_range(req):
    pins = locked()
    name = canonicalize_name(req.name)
    assert name in pins, f"{req.name} is declared but not locked: run `make lock`"
    assert req.specifier.contains(pins[name], prereleases=True), \
        f"the lock has {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}: run `make lock`"


def test_the_lock_pins_the_generator_of_the_committed_stubs():
    text = (STUBS / "latent_edit_pb2_grpc.py").read_text()
    generated = Version(re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", text).group(1))
    assert locked()["grpcio-tools"] == generated, "requirements/pins.txt must name the stubs' generator"


def test_the_lock_takes_torch_from_the_cpu_wheel():
    assert locked()["torch"].local == "cpu", "a CUDA build of torch is several GB; the lock pins the CPU wheel"
