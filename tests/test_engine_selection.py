"""Choosing an engine by name (``auto`` included), the device checks, and the engine benchmark's smoke mode."""

import json

import numpy as np
import pytest
import torch

import curvedit
from curvedit.bench.engine import edit_flops
from curvedit.bundle import load_bundle
from curvedit.cli import main
from curvedit.engines import ENGINE_NAMES, make_engine, resolve_engine
from curvedit.kernels.configs import triton_available
from curvedit.models.editors import DeCurvEd

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the choice on a machine without a GPU")
needs_interpreter = pytest.mark.skipif(not triton_available("cpu"),
                                       reason="needs Triton and TRITON_INTERPRET=1 (conftest sets it)")


@cpu_only
def test_auto_is_onnxruntime_on_a_cpu_machine(tiny_bundle):
    assert resolve_engine("auto") == "onnxruntime"
    assert resolve_engine("auto", "cpu") == "onnxruntime"
    assert curvedit.load(tiny_bundle).engine == "onnxruntime"


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_named_engine_is_reported(tiny_bundle, engine):
    model = curvedit.load(tiny_bundle, engine=engine, device="cpu")
    assert model.engine == engine
    assert model.edit(model.sample(2, seed=0), {"y": 0.5}).shape == (2, 8)


def test_unknown_engine_lists_the_choices(tiny_bundle):
    with pytest.raises(ValueError, match="unknown engine 'tensorrt'") as info:
        curvedit.load(tiny_bundle, engine="tensorrt")
    assert all(name in str(info.value) for name in ENGINE_NAMES)


@pytest.mark.parametrize(("device", "message"), [("tpu", "not a valid device"), ("meta", "not supported")])
def test_bad_device_is_refused(tiny_bundle, device, message):
    with pytest.raises(ValueError, match=message):
        make_engine(load_bundle(tiny_bundle), "auto", device)


@cpu_only
def test_cuda_without_a_gpu_is_refused(tiny_bundle):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        curvedit.load(tiny_bundle, engine="onnxruntime", device="cuda")


@needs_interpreter
def test_triton_engine_under_the_interpreter(tiny_bundle):
    """conftest sets TRITON_INTERPRET=1, so the triton engine runs (slowly) on the CPU and agrees with torch."""
    model = curvedit.load(tiny_bundle, engine="triton", device="cpu")
    assert model.engine == "triton"
    z = model.sample(3, seed=0)
    expected = curvedit.load(tiny_bundle, engine="torch").edit(z, {"x": 1.0})
    np.testing.assert_allclose(model.edit(z, {"x": 1.0}), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_is_triton_on_a_gpu(tiny_bundle):
    model = curvedit.load(tiny_bundle)
    assert model.engine == "triton"
    z = model.sample(64, seed=0)
    expected = curvedit.load(tiny_bundle, engine="torch", device="cpu").edit(z, {"x": 1.0})
    np.testing.assert_allclose(model.edit(z, {"x": 1.0}), expected, rtol=1e-4, atol=1e-5)


def test_shipped_model_runs_on_onnxruntime_without_a_manual_export():
    model = curvedit.load(engine="onnxruntime", device="cpu")
    z = model.sample(4, seed=0)
    edits = {model.directions[0]: 1.0}
    np.testing.assert_allclose(model.edit(z, edits), curvedit.load(engine="torch", device="cpu").edit(z, edits),
                               rtol=1e-4, atol=1e-5)
    assert model.generate(z).shape == (4, *model.image_shape)


def test_flops_formula():
    editor = DeCurvEd(512, ["a"], hidden=512, layers=8)
    assert edit_flops(editor) == 2 * (256 * 512 + 512 * 512 + 512 * 512) * 2 * 8  # 21.0 MFLOP
    odd = DeCurvEd(7, ["a"], hidden=5, layers=2)  # a = 3 conditioning, b = 4 transformed coordinates
    assert edit_flops(odd) == 2 * (3 * 5 + 5 * 5 + 5 * 8) * 2 * 2


def test_bench_engine_quick(tmp_path, capsys):
    """Every derived column of a timed row follows from its time: rates, FLOP/s, the fraction of the measured
    peak, the speed-up over torch eager; and the printed table carries the rows."""
    out = tmp_path / "bench.json"
    code = main(["bench", "engine", "--quick", "--flows", "d512", "--batch-sizes", "1", "3", "--repeats", "2",
                 "--warmup", "1", "--device", "cpu", "--json", str(out), "--image-model", ""])
    assert code == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["device"] == "cpu"
    flops = edit_flops(DeCurvEd(64, ["a"], hidden=64, layers=4))  # --quick's stand-in for d512: d = h = 64, L = 4
    peak = result["peaks_gflops"]["fp32"]
    rows = {(r["batch"], r["backend"]): r for r in result["rows"] if r["flow"] == "synthetic-d64"}
    assert set(rows) == {(b, name) for b in (1, 3)
                         for name in ("torch", "torch.compile", "onnxruntime", "auto", "triton")}
    for batch in (1, 3):
        eager, ort = rows[(batch, "torch")], rows[(batch, "onnxruntime")]
        for row in (eager, ort):
            seconds = row["ms"] / 1e3
            assert row["edits_per_s"] == pytest.approx(batch / seconds)
            assert row["gflops"] == pytest.approx(flops * batch / seconds / 1e9)
            assert row["frac_peak"] == pytest.approx(row["gflops"] / peak)
            assert row["max_err"] < 1e-4
            assert f"| synthetic-d64 | {batch} | {row['backend']} | fp32 | {row['ms']:.3f} |" in printed
        assert ort["vs_eager"] == pytest.approx(eager["ms"] / ort["ms"])
        assert rows[(batch, "torch.compile")]["ms"] is None and "--quick" in rows[(batch, "torch.compile")]["note"]
        assert rows[(batch, "triton")]["ms"] is None and "CUDA only" in rows[(batch, "triton")]["note"]
        auto = rows[(batch, "auto")]
        assert auto["ms"] > 0 and auto["max_err"] < 1e-4
        assert auto["note"].split("routed to ")[1] in ("torch", "onnxruntime")
    checks = {(c["batch"], c["backend"]): c for c in result["auto_checks"] if c["flow"] == "synthetic-d64"}
    for batch in (1, 3):
        check = checks[(batch, "auto")]
        best = min(rows[(batch, "torch")]["ms"], rows[(batch, "onnxruntime")]["ms"])
        assert check["best_ms"] == pytest.approx(best) and check["ratio"] == pytest.approx(
            rows[(batch, "auto")]["ms"] / best)
        assert check["met"] == (check["ratio"] <= 1.05)


def test_bench_engine_quick_times_every_cpu_backend(tmp_path):
    """The benchmark end to end on tiny settings: every row on the CPU is timed or says why it is not."""
    out = tmp_path / "bench.json"
    assert main(["bench", "engine", "--quick", "--device", "cpu", "--json", str(out)]) == 0
    everything = json.loads(out.read_text())["rows"]
    images = [r for r in everything if r["flow"].endswith(" images")]  # the image pass (`--image-model`)
    assert {(r["flow"], r["batch"], r["backend"]) for r in images} == {
        ("shapes-vae images", b, name) for b in (1, 16) for name in ("torch", "onnxruntime")}
    assert all(r["ms"] > 0 and r["max_err"] <= 1 for r in images)  # uint8 images: errors in grey levels
    rows = [r for r in everything if r not in images]
    assert {r["batch"] for r in rows} == {1, 16}
    assert {r["flow"] for r in rows} == {"shipped", "synthetic-d64"}
    for row in rows:
        if row["backend"] in ("torch", "onnxruntime", "auto"):
            assert row["ms"] > 0 and row["max_err"] < 1e-4, row
        else:  # torch.compile is skipped in --quick, triton needs CUDA: each row carries its reason
            assert row["ms"] is None and row["note"], row
    ort = [r for r in rows if r["backend"] == "onnxruntime" and not r["flow"].endswith("images")]
    assert all("batch-major below 16 rows" in r["note"] for r in ort)
