"""Benchmark results: one file per benchmark (the latest run per machine), RESULTS.md generated from them and
kept current, and no run-numbered copies in benchmarks/."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from curvedit.bench.results import BENCHMARKS, record, render

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def test_results_md_is_generated_from_the_results_files_and_current():
    assert (BENCH / "RESULTS.md").read_text() == render(BENCH / "results"), (
        "benchmarks/RESULTS.md is stale: run `curvedit bench results render` and commit it")


def test_benchmarks_holds_one_results_file_per_benchmark_and_no_run_numbered_copies():
    files = [p.relative_to(BENCH).as_posix() for p in BENCH.rglob("*") if p.is_file()]
    assert not [f for f in files if re.search(r"run\d+|_r\d+\b|_\d{4}-\d\d-\d\d", f)], files
    assert {Path(f).stem for f in files if f.startswith("results/")} <= set(BENCHMARKS)
    for path in (BENCH / "results").glob("*.json"):
        book = json.loads(path.read_text())
        assert book["benchmark"] == path.stem and book["runs"], path
        for run in book["runs"].values():
            assert run["tables"] and all(len(row) == len(t["columns"]) for t in run["tables"] for row in t["rows"])


def _csv(path: Path, rate: float) -> Path:
    path.write_text(f"batch,images_s,identical,rounds\n1,{rate},True,\"(1.0, 2.0)\"\n16,nan,False,\"(3.0,)\"\n")
    return path


def test_a_new_run_replaces_that_machines_last_and_keeps_the_others(tmp_path):
    results = tmp_path / "results"
    kw = {"command": "python benchmarks/bench_pixelcnn.py", "results_dir": results}
    record("pixelcnn", [_csv(tmp_path / "a.csv", 1.5)], "CPU", date="2026-01-01", **kw)
    record("pixelcnn", [_csv(tmp_path / "b.csv", 9.0)], "NVIDIA H100", date="2026-01-02", notes=["first"], **kw)
    record("pixelcnn", [_csv(tmp_path / "c.csv", 2.5), _csv(tmp_path / "d.csv", 3.5)], "CPU", date="2026-01-03",
           **kw)
    runs = json.loads((results / "pixelcnn.json").read_text())["runs"]
    assert list(runs) == ["CPU", "NVIDIA H100"]
    assert runs["CPU"]["date"] == "2026-01-03" and runs["CPU"]["source"] == "c.csv, d.csv"
    first = runs["CPU"]["tables"][0]
    assert first["title"] == "c" and first["columns"] == ["batch", "images_s", "identical"]  # lists: raw only
    assert first["rows"] == [[1, 2.5, True], [16, None, False]]
    assert runs["NVIDIA H100"]["notes"] == ["first"]
    assert [p.name for p in results.iterdir()] == ["pixelcnn.json"]  # nothing half-written left beside it
    text = render(results)
    assert text.index("### CPU, 2026-01-03") < text.index("### NVIDIA H100, 2026-01-02")
    assert "| 16 | – | no |" in text and "- first" in text


def test_a_json_run_keeps_its_record_lists_as_tables_and_its_sentences_as_notes(tmp_path):
    raw = tmp_path / "cells.json"
    raw.write_text(json.dumps({"cells": [{"workers": 1, "requests_per_s": 3854.2, "rounds": [1, 2]}],
                               "checks": ["N=1 c=64: 0.9 of the no-op's req/s"], "medians": {"start s": 1.25}}))
    record("scale", [raw], "CPU", command="curvedit bench serve --workers 1", date="2026-12-07",
           results_dir=tmp_path)
    run = json.loads((tmp_path / "scale.json").read_text())["runs"]["CPU"]
    assert [t["title"] for t in run["tables"]] == ["cells", "medians"]
    assert run["notes"] == ["N=1 c=64: 0.9 of the no-op's req/s"]
    assert "| 1 | 3,854 |" in render(tmp_path)


def test_a_file_that_is_not_a_benchmarks_output_is_refused_naming_what_to_record(tmp_path):
    raw = tmp_path / "x.json"
    raw.write_text(json.dumps({"status": "complete"}))
    with pytest.raises(ValueError, match="--json-file"):
        record("engine", [raw], "CPU", command="c", date="d", results_dir=tmp_path)
    with pytest.raises(ValueError, match="choose one of engine"):
        record("enigne", [raw], "CPU", command="c", date="d", results_dir=tmp_path)
    assert not list(tmp_path.glob("*.json.*"))


def test_render_check_fails_on_a_stale_results_md_through_the_cli(tmp_path):
    raw = _csv(tmp_path / "run.csv", 1.0)
    cli = [sys.executable, "-m", "curvedit.cli", "bench", "results"]
    where = ["--results-dir", str(tmp_path / "results")]
    subprocess.run([*cli, "record", "pixelcnn", str(raw), "--machine", "CPU", *where], check=True,
                   capture_output=True)
    out = tmp_path / "RESULTS.md"
    out.write_text("old\n")
    stale = subprocess.run([*cli, "render", "--check", "--out", str(out), *where], capture_output=True, text=True)
    assert stale.returncode == 1 and "not current" in stale.stdout
    subprocess.run([*cli, "render", "--out", str(out), *where], check=True, capture_output=True)
    assert subprocess.run([*cli, "render", "--check", "--out", str(out), *where]).returncode == 0
    missing = subprocess.run([*cli, "record", "scale", str(raw), *where], capture_output=True, text=True)
    assert missing.returncode == 2 and "pass --machine" in missing.stderr
