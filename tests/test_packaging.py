"""Installing puts one package, `curvedit`, into site-packages — with the shipped bundle and the .proto inside."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> list[str]:
    pytest.importorskip("setuptools")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(ROOT)], check=True, capture_output=True)
    (wheel,) = out.glob("curvedit-*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_only_curvedit_is_top_level(wheel_names):
    top = {name.split("/")[0] for name in wheel_names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"curvedit"}
    for sub in ("service", "kernels", "export", "models", "engines", "evaluation", "v1"):
        assert f"curvedit/{sub}/__init__.py" in wheel_names


def test_shipped_bundle_and_proto_are_inside(wheel_names):
    assert "curvedit/bundles/shapes32/manifest.json" in wheel_names
    assert "curvedit/bundles/shapes32/editor_decurved.safetensors" in wheel_names
    assert "curvedit/v1/latent_edit.proto" in wheel_names


def test_studio_page_is_inside(wheel_names):
    """`curvedit serve` from an installed wheel serves the browser studio: its files ship as package data."""
    for name in ("index.html", "studio.js", "studio.css"):
        assert f"curvedit/service/studio/static/{name}" in wheel_names
