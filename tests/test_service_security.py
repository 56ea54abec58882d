"""TLS, mutual TLS and bearer tokens on a real server, with certificates made here by ``openssl``."""

import asyncio
import logging
import shutil
import subprocess

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from service_util import metric

import curvedit
from curvedit.client import AsyncClient, Client, Security, edit_request
from curvedit.service import security
from curvedit.service.background import BackgroundServer
from curvedit.service.batch_job import BatchJob, run_batch_job
from curvedit.service.config import ServeConfig

TOKENS = ("s3cret-token-one", "s3cret-token-two")
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN=curvedit test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign,cRLSign",
            cwd=directory)


def make_cert(directory, name: str, ca: str, extensions: str) -> None:
    (directory / f"{name}.ext").write_text(extensions)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "1", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=directory)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, and an unrelated CA."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_cert(d, "server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    make_cert(d, "client", "ca", "extendedKeyUsage=clientAuth\n")
    return d


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    path.write_text(f"# tokens of the test clients\n{TOKENS[0]}\n\n  {TOKENS[1]}  \n")
    return path


@pytest.fixture(scope="module")
def model(tiny_bundle):
    return curvedit.load(tiny_bundle)


def config(tiny_bundle, **settings) -> ServeConfig:
    return ServeConfig(**{"port": 0, "http_port": 0, "metrics_port": 0, "models": (str(tiny_bundle),),
                          "max_batch_size": 8, "max_queue_delay_ms": 1, "warmup": False, **settings})


def edit_ok(client: Client, model) -> None:
    np.testing.assert_allclose(client.edit(seeds=[2], edits={"x": 1.0}).latents,
                               model.edit(model.sample_seeds([2]), {"x": 1.0}), atol=1e-5)


@needs_openssl
def test_tls_client_succeeds_plaintext_and_untrusting_clients_fail(tiny_bundle, pki, model):
    settings = {"tls_cert": str(pki / "server.pem"), "tls_key": str(pki / "server.key")}
    with BackgroundServer(config(tiny_bundle, **settings)) as bg:
        target = f"127.0.0.1:{bg.port}"
        with Client(target, timeout=10, security=Security(ca_file=str(pki / "ca.pem"))) as client:
            edit_ok(client, model)
        for wrong in (None, Security(ca_file=str(pki / "other-ca.pem"))):
            with Client(target, timeout=10, security=wrong) as client, pytest.raises(grpc.RpcError) as info:
                client.edit(seeds=[2], edits={"x": 1.0})
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@needs_openssl
def test_mutual_tls_needs_a_client_certificate_signed_by_the_client_ca(tiny_bundle, pki, model):
    settings = {"tls_cert": str(pki / "server.pem"), "tls_key": str(pki / "server.key"),
                "tls_client_ca": str(pki / "ca.pem")}
    with BackgroundServer(config(tiny_bundle, **settings)) as bg:
        target = f"127.0.0.1:{bg.port}"
        with_cert = Security(ca_file=str(pki / "ca.pem"), cert_file=str(pki / "client.pem"),
                             key_file=str(pki / "client.key"))
        with Client(target, timeout=10, security=with_cert) as client:
            edit_ok(client, model)
        without_cert = Security(ca_file=str(pki / "ca.pem"))
        with Client(target, timeout=10, security=without_cert) as client, pytest.raises(grpc.RpcError) as info:
            client.edit(seeds=[2], edits={"x": 1.0})
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def guarded(tiny_bundle, token_file):
    with BackgroundServer(config(tiny_bundle, auth_token_file=str(token_file))) as bg:
        yield bg


def test_every_rpc_but_health_needs_a_token(guarded, caplog):
    channel = grpc.insecure_channel(f"127.0.0.1:{guarded.port}")
    port = guarded.server.metrics_port
    before = metric(port, "curvedit_rejections_total", reason="unauthenticated")
    with Client(f"127.0.0.1:{guarded.port}", timeout=10) as client:
        calls = {
            "Edit": lambda: client.edit(seeds=[0], edits={"x": 1.0}),
            "ListModels": client.list_models,
            "GetModel": client.get_model,
            "Generate": lambda: client.generate(seeds=[0]),
            "Traverse": lambda: list(client.traverse("x", seed=0, steps=2)),
            "EditStream": lambda: list(client.edit_stream([edit_request(seeds=[0], edits={"x": 1.0})])),
            "reflection": lambda: list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == UNAUTHENTICATED, name
            assert "authorization: Bearer" in info.value.details() and "--token-file" in info.value.details()
        assert client.health() == "SERVING"  # health needs no token (load balancers probe it)
    assert metric(port, "curvedit_rejections_total", reason="unauthenticated") - before == len(calls)
    assert metric(port, "grpc_server_handled_total", grpc_method="Edit", grpc_code="UNAUTHENTICATED") >= 1
    channel.close()


@pytest.mark.parametrize("header", ["Bearer wrong-token", TOKENS[0], f"bearer {TOKENS[0]}", "Bearer ",
                                    f"Bearer {TOKENS[0]}x", f"Basic {TOKENS[0]}"])
def test_a_wrong_or_malformed_token_is_refused_and_never_logged(guarded, header, caplog):
    stub_channel = grpc.insecure_channel(f"127.0.0.1:{guarded.port}")
    from curvedit.v1 import latent_edit_pb2_grpc as pb_grpc

    with caplog.at_level(logging.DEBUG), pytest.raises(grpc.RpcError) as info:
        pb_grpc.LatentEditServiceStub(stub_channel).Edit(edit_request(seeds=[0], edits={"x": 1.0}), timeout=10,
                                                         metadata=(("authorization", header),))
    assert info.value.code() == UNAUTHENTICATED
    logged = caplog.text + info.value.details()
    assert not any(t in logged for t in TOKENS) and "wrong-token" not in logged
    stub_channel.close()


@pytest.mark.parametrize("which", [0, 1])
def test_each_token_of_the_file_is_accepted_by_client_and_async_client(guarded, model, tmp_path, which):
    mine = tmp_path / "my-token"
    mine.write_text(TOKENS[which] + "\n")
    target = f"127.0.0.1:{guarded.port}"
    with Client(target, timeout=10, security=Security(token_file=str(mine))) as client:
        edit_ok(client, model)
        assert len(list(client.traverse("x", seed=0, steps=2))) == 2
        (streamed,) = client.edit_stream([edit_request(seeds=[0], edits={"x": 1.0}, id="s")])
        assert streamed.id == "s"

    async def scenario():
        async with AsyncClient(target, timeout=10, security=Security(token_file=str(mine))) as client:
            one = await client.edit(seeds=[2], edits={"x": 1.0})
            frames = [f async for f in client.traverse("x", seed=0, steps=2)]
            streamed = [r async for r in client.edit_stream([edit_request(seeds=[2], edits={"x": 1.0})])]
            return one, frames, streamed

    one, frames, streamed = asyncio.run(scenario())
    np.testing.assert_allclose(one.latents, model.edit(model.sample_seeds([2]), {"x": 1.0}), atol=1e-5)
    np.testing.assert_allclose(streamed[0].latents, one.latents)
    assert len(frames) == 2


def test_tokens_are_compared_in_constant_time_against_every_token(monkeypatch):
    compared = []
    real = security.hmac.compare_digest
    monkeypatch.setattr(security.hmac, "compare_digest", lambda a, b: compared.append(b) or real(a, b))
    tokens = [t.encode() for t in ("first", "second", "third")]
    assert security.token_matches("Bearer first", tokens)  # a match on the first token still compares all
    assert compared == tokens
    compared.clear()
    assert not security.token_matches("Bearer fourth", tokens) and compared == tokens
    compared.clear()
    assert not security.token_matches(None, tokens) and not security.token_matches("first", tokens)


@needs_openssl
def test_cli_and_batch_jobs_reach_a_tls_and_token_server(tiny_bundle, pki, token_file, tmp_path, capsys, model):
    from curvedit.cli import main

    settings = {"tls_cert": str(pki / "server.pem"), "tls_key": str(pki / "server.key"),
                "auth_token_file": str(token_file)}
    with BackgroundServer(config(tiny_bundle, **settings)) as bg:
        target = f"127.0.0.1:{bg.port}"
        secure = ["--server", target, "--ca-file", str(pki / "ca.pem"), "--token-file", str(token_file)]
        assert main(["client", "models", *secure]) == 0
        assert "tiny 0.0.1 d=8" in capsys.readouterr().out
        assert main(["client", "models", "--server", target, "--ca-file", str(pki / "ca.pem")]) == 2
        err = capsys.readouterr().err
        assert "UNAUTHENTICATED" in err and "--token-file" in err and len(err.strip().splitlines()) == 1
        assert main(["client", "models", "--server", target, "--token-file", str(token_file)]) == 2
        err = capsys.readouterr().err
        assert "--ca-file" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        out = tmp_path / "job"
        assert main(["batch", "--seeds", "0:20", "--edit", "x=1", "--out", str(out), "--chunk-size", "8",
                     "--quiet", *secure]) == 0
        job = BatchJob(out=tmp_path / "job2", edits={"x": 1.0}, seeds=(0, 20), server=target, chunk_size=8,
                       progress=False, security=Security(ca_file=str(pki / "ca.pem"), token_file=str(token_file)))
        assert run_batch_job(job)["computed"] == 20
    edited = np.load(out / "shards" / "edited-00000.npy")
    np.testing.assert_allclose(edited, model.edit(model.sample(20, seed=0), {"x": 1.0}), atol=1e-5)


def test_reflection_can_be_switched_off_and_health_stays(tiny_bundle):
    with BackgroundServer(config(tiny_bundle, reflection=False)) as bg:
        channel = grpc.insecure_channel(f"127.0.0.1:{bg.port}")
        with pytest.raises(grpc.RpcError) as info:
            list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        channel.close()


@pytest.mark.parametrize(("settings", "message"), [
    ({"tls_cert": "cert.pem"}, "both --tls-cert and --tls-key"),
    ({"tls_key": "key.pem"}, "both --tls-cert and --tls-key"),
    ({"tls_client_ca": "ca.pem"}, "needs TLS itself"),
])
def test_incomplete_tls_settings_say_the_fix(settings, message):
    with pytest.raises(ValueError, match=message):
        ServeConfig(**settings)


def test_unreadable_or_empty_secret_files_say_the_fix(tiny_bundle, tmp_path):
    missing = {"tls_cert": str(tmp_path / "nope.pem"), "tls_key": str(tmp_path / "nope.key")}
    with pytest.raises(ValueError, match="cannot read the TLS certificate"), \
            BackgroundServer(config(tiny_bundle, **missing)):
        pass
    (tmp_path / "empty").write_text("# no tokens yet\n\n")
    with pytest.raises(ValueError, match="holds no token"), \
            BackgroundServer(config(tiny_bundle, auth_token_file=str(tmp_path / "empty"))):
        pass


@pytest.mark.parametrize(("settings", "warning"), [
    ({"host": "0.0.0.0"}, "neither TLS nor tokens"), ({"host": "::"}, "neither TLS nor tokens"),
    ({"host": "example.org"}, "neither TLS nor tokens"),
    ({"host": "0.0.0.0", "auth_token_file": "t"}, "tokens cross the network unencrypted"),
    ({"host": "127.0.0.1"}, None), ({"host": "localhost"}, None), ({"host": "::1"}, None),
    ({"host": "0.0.0.0", "tls_cert": "c", "tls_key": "k"}, None),
    ({"host": "0.0.0.0", "tls_cert": "c", "tls_key": "k", "auth_token_file": "t"}, None),
])
def test_exposed_bind_without_tls_warns(settings, warning):
    said = security.exposure_warning(ServeConfig(**settings))
    assert (said is None) == (warning is None)
    if warning is not None:
        assert warning in said and "--tls-cert" in said


def test_serve_prints_the_warning_before_anything_else(tmp_path, capsys):
    from curvedit.service.server import serve_until_signal

    missing = ServeConfig(host="0.0.0.0", port=0, http_port=0, metrics_port=-1,
                          models=(str(tmp_path / "no-bundle"),))
    with pytest.raises(ValueError, match="no-bundle"):  # missing on purpose: nothing gets bound
        asyncio.run(serve_until_signal(missing))
    assert "WARNING: serving on 0.0.0.0" in capsys.readouterr().err
