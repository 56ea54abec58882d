"""``serve --model-repository``: versions swapped under load with no failed request, a broken version that leaves
the old one serving, explicit load/unload (OIP repository extension), all on a real server over loopback, with
the real ``/metrics`` scraped."""

import json
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from conftest import randomize, tiny_modules
from service_util import metric, wait_until

import curvedit
from curvedit.bundle import write_bundle
from curvedit.client import edit_request
from curvedit.inference import grpc_service_pb2 as oip
from curvedit.inference import grpc_service_pb2_grpc as oip_grpc
from curvedit.models.editors import DeCurvEd
from curvedit.service import codec
from curvedit.service.background import BackgroundServer
from curvedit.service.config import ServeConfig
from curvedit.v1 import latent_edit_pb2 as pb
from curvedit.v1 import latent_edit_pb2_grpc as pb_grpc

ATOL = 1e-5
POLL_S = 0.05


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[int, Path]:
    """Three versions of a model ``tiny`` (latent dim 8, same directions), each editor with its own weights, so a
    response computed by the wrong version cannot pass for the right one."""
    root = tmp_path_factory.mktemp("versions")
    out = {}
    for version in (1, 2, 3):
        generator, _, regressor = tiny_modules()
        editor = randomize(DeCurvEd(8, ["x", "y", "scale", "rotation"], hidden=16, layers=4, mixing=True),
                           seed=version).eval()
        torch.manual_seed(0)
        out[version] = write_bundle(root / str(version), name="tiny", version=f"0.0.{version}",
                                    generator=generator, editors={"decurved": (editor, "supervised", {})},
                                    default_editor="decurved", regressor=regressor, seed=0)
    return out


@pytest.fixture(scope="module")
def expected(bundles) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """One request's latents and each version's edit of them (``Model.edit``, the reference)."""
    models = {v: curvedit.load(path, engine="onnxruntime") for v, path in bundles.items()}
    z = models[1].sample(3, seed=2)
    return z, {v: m.edit(z, {"x": 0.7}) for v, m in models.items()}


def put_version(repo: Path, name: str, version: int, bundle: Path) -> None:
    """Copy a bundle into the repository the way an operator should: next to it, then one rename into place."""
    staging = repo / name / f".staging-{version}"
    shutil.copytree(bundle, staging)
    staging.rename(repo / name / str(version))


def serve(repo: Path, **overrides) -> BackgroundServer:
    config = dict(port=0, http_port=-1, metrics_port=0, model_repository=str(repo), repository_poll_s=POLL_S,
                  engine="onnxruntime", max_batch_size=8, max_queue_delay_ms=1)
    return BackgroundServer(ServeConfig(**{**config, **overrides}))


def stubs(bg):
    channel = grpc.insecure_channel(f"127.0.0.1:{bg.port}")
    return channel, pb_grpc.LatentEditServiceStub(channel), oip_grpc.GRPCInferenceServiceStub(channel)


class Load:
    """Client threads sending Edit requests without pause until stopped; every outcome kept, none lost."""

    def __init__(self, edit, z: np.ndarray, threads: int = 4):
        self.edit, self.z, self.stop = edit, z, threading.Event()
        self.outcomes: list[list] = [[] for _ in range(threads)]
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        request = edit_request(latents=self.z, edits={"x": 0.7}, model="tiny")
        while not self.stop.is_set():
            try:
                response = self.edit(request, timeout=30)
                self.outcomes[i].append(("OK", response.repository_version, codec.from_tensor(response.latents)))
            except grpc.RpcError as exc:
                self.outcomes[i].append((exc.code().name, exc.details(), None))

    def versions(self) -> set[int]:
        return {o[1] for thread in self.outcomes for o in thread if o[0] == "OK"}

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


def test_versions_swap_under_load_with_no_failed_request(tmp_path, bundles, expected):
    z, reference = expected
    put_version(tmp_path, "tiny", 1, bundles[1])
    with serve(tmp_path) as bg:
        channel, native, inference = stubs(bg)
        with channel, Load(native.Edit, z) as load:
            wait_until(lambda: 1 in load.versions(), 30, "answers from version 1")
            put_version(tmp_path, "tiny", 2, bundles[2])  # picked up by polling
            wait_until(lambda: 2 in load.versions(), 60, "answers from version 2")
            put_version(tmp_path, "tiny", 3, bundles[3])
            inference.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="tiny"), timeout=60)
            wait_until(lambda: 3 in load.versions(), 30, "answers from version 3")
            time.sleep(0.2)
            load.stop.set()
            info = native.GetModel(pb.GetModelRequest(name="tiny"), timeout=10)
            assert (info.repository_version, info.version) == (3, "0.0.3")
        outcomes = [o for thread in load.outcomes for o in thread]
        failed = [o[:2] for o in outcomes if o[0] != "OK"]
        assert not failed, f"{len(failed)} of {len(outcomes)} requests failed during the swaps: {failed[:5]}"
        for thread in load.outcomes:  # each client moved forward only: never back to a retired version
            seen = [o[1] for o in thread]
            assert seen == sorted(seen)
        for _, version, latents in outcomes:  # each answer is what the version it names computes
            np.testing.assert_allclose(latents, reference[version], atol=ATOL)
        port = bg.server.metrics_port
        loaded = "curvedit_model_version_loaded"
        assert metric(port, loaded, model="tiny", version="3", bundle_version="0.0.3") == 1
        assert metric(port, "curvedit_model_version_loaded", model="tiny", version="1") == 0
        assert metric(port, "curvedit_model_load_failures_total", model="tiny") == 0
        assert metric(port, "grpc_server_handled_total", grpc_method="Edit", grpc_code="OK") == len(outcomes)
        print(f"{len(outcomes)} requests, versions {sorted(load.versions())}, none failed")


def test_a_broken_version_leaves_the_old_one_serving(tmp_path, bundles, expected):
    z, reference = expected
    put_version(tmp_path, "tiny", 1, bundles[1])
    broken = tmp_path / "broken"
    shutil.copytree(bundles[2], broken)
    with open(broken / "editor_decurved.safetensors", "ab") as f:  # damaged weights: the sha256 no longer matches
        f.write(b"\0")
    with serve(tmp_path) as bg:
        channel, native, inference = stubs(bg)
        with channel:
            port = bg.server.metrics_port
            put_version(tmp_path, "tiny", 2, broken)
            wait_until(lambda: metric(port, "curvedit_model_load_failures_total", model="tiny", version="2") == 1,
                       30, "the load failure counted")
            time.sleep(5 * POLL_S)  # polling does not retry a version whose files did not change
            assert metric(port, "curvedit_model_load_failures_total", model="tiny", version="2") == 1
            ready = inference.ModelReady
            assert not ready(oip.ModelReadyRequest(name="tiny", version="2"), timeout=10).ready
            assert ready(oip.ModelReadyRequest(name="tiny", version="1"), timeout=10).ready
            response = native.Edit(edit_request(latents=z, edits={"x": 0.7}, model="tiny"), timeout=30)
            assert response.repository_version == 1
            np.testing.assert_allclose(codec.from_tensor(response.latents), reference[1], atol=ATOL)
            index = inference.RepositoryIndex(oip.RepositoryIndexRequest(), timeout=10).models
            states = {(m.name, m.version): (m.state, m.reason) for m in index}
            assert states[("tiny", "1")] == ("READY", "")
            assert states[("tiny", "2")][0] == "UNAVAILABLE" and "checksum mismatch" in states[("tiny", "2")][1]
            with pytest.raises(grpc.RpcError) as err:
                inference.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="tiny"), timeout=60)
            assert err.value.code() == grpc.StatusCode.INTERNAL
            assert "version 2 failed to load" in err.value.details()
            assert "version 1 keeps serving" in err.value.details()
            shutil.rmtree(tmp_path / "tiny" / "2")  # the fix: a good copy of version 2
            put_version(tmp_path, "tiny", 2, bundles[2])
            wait_until(lambda: native.Edit(edit_request(latents=z, edits={"x": 0.7}, model="tiny"),
                                           timeout=30).repository_version == 2, 30, "version 2 serving")
            assert ready(oip.ModelReadyRequest(name="tiny", version="2"), timeout=10).ready


def test_unload_load_and_pinned_versions(tmp_path, bundles, expected):
    z, reference = expected
    put_version(tmp_path, "tiny", 1, bundles[1])
    put_version(tmp_path, "tiny", 2, bundles[2])
    with serve(tmp_path, repository_versions=2, http_port=0) as bg:
        channel, native, inference = stubs(bg)
        with channel:
            for version in (1, 2):  # both kept loaded: a request may pin either
                request = edit_request(latents=z, edits={"x": 0.7}, model="tiny")
                request.repository_version = version
                response = native.Edit(request, timeout=30)
                assert (response.repository_version, response.model_version) == (version, f"0.0.{version}")
                np.testing.assert_allclose(codec.from_tensor(response.latents), reference[version], atol=ATOL)
            meta = inference.ModelMetadata(oip.ModelMetadataRequest(name="tiny"), timeout=10)
            assert list(meta.versions) == ["2"]
            http = f"http://127.0.0.1:{bg.server.http_port}/v2"
            meta = json.loads(urllib.request.urlopen(f"{http}/models/tiny/versions/1", timeout=10).read())
            assert (meta["versions"], meta["bundle_version"]) == (["1"], "0.0.1")
            request = edit_request(latents=z, model="tiny")
            request.repository_version = 7
            with pytest.raises(grpc.RpcError) as err:
                native.Edit(request, timeout=30)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND and "loaded: [2, 1]" in err.value.details()
            inference.RepositoryModelUnload(oip.RepositoryModelUnloadRequest(model_name="tiny"), timeout=30)
            time.sleep(5 * POLL_S)  # polling does not bring an unloaded model back
            with pytest.raises(grpc.RpcError) as err:
                native.Edit(edit_request(latents=z, model="tiny"), timeout=30)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert not inference.ModelReady(oip.ModelReadyRequest(name="tiny"), timeout=10).ready
            with pytest.raises(grpc.RpcError) as err:
                inference.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="nope"), timeout=30)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no model 'nope'" in err.value.details()
            inference.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="tiny"), timeout=60)
            response = native.Edit(edit_request(latents=z, edits={"x": 0.7}, model="tiny"), timeout=30)
            assert response.repository_version == 2
            for action in ("unload", "load"):  # the same over HTTP
                post = urllib.request.Request(f"{http}/repository/models/tiny/{action}", data=b"{}", method="POST")
                assert urllib.request.urlopen(post, timeout=60).status == 200
            assert inference.ModelReady(oip.ModelReadyRequest(name="tiny", version="1"), timeout=10).ready


def test_a_server_without_a_repository_refuses_load_rpcs(tiny_bundle):
    config = ServeConfig(port=0, http_port=-1, metrics_port=-1, models=(str(tiny_bundle),), warmup=False)
    with BackgroundServer(config) as bg:
        channel, _, inference = stubs(bg)
        with channel, pytest.raises(grpc.RpcError) as err:
            inference.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="tiny"), timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "--model-repository" in err.value.details()


def test_an_empty_repository_is_refused_at_start(tmp_path):
    (tmp_path / "tiny" / "not-a-number").mkdir(parents=True)
    with pytest.raises(ValueError, match="no model of repository"):
        serve(tmp_path).__enter__()


@pytest.mark.parametrize("changes, message", [
    ({"models": ("a",)}, "not both"),
    ({"repository_poll_s": -1.0}, "repository_poll_s"),
    ({"repository_versions": 0}, "repository_versions"),
])
def test_repository_settings_are_checked(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        ServeConfig(model_repository=str(tmp_path), **changes)
