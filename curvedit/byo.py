"""Bring your own generator: train an editor on a user's frozen generator and write a servable bundle.

``curvedit train editor --generator my_pkg.my_module:factory --out DIR`` (see ``docs/BRING_YOUR_OWN.md``):
the factory's module is probed (latent dim, image shape), an editor is trained on it — unsupervised by default
(the reconstructor recipe, directions ``d0, d1, …``), supervised with ``--regressor my_pkg.mod:factory`` (a module
mapping images to the user's attribute values, one column per ``--directions`` name) — and a bundle is written
with the generator's weights and every ONNX graph exported and verified. A graph that cannot be exported is
reported in one line; the bundle then needs the user's package importable wherever it is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from curvedit.bundle import write_bundle
from curvedit.extras import require_extra
from curvedit.models.external import ExternalGenerator, build_user_module
from curvedit.models.train_editor import EditorTrainConfig


class NamedRegressor(nn.Module):
    """A user's regressor with names for its output columns (what supervised training ties directions to)."""

    def __init__(self, module: nn.Module, names: list[str]):
        super().__init__()
        self.module = module
        self.factor_names = tuple(names)

    def forward(self, images):
        return self.module(images)


@dataclass(frozen=True)
class UserEditorJob:
    generator: str  # "package.module:factory"
    out: Path
    config: EditorTrainConfig
    method: str = "decurved"
    latent_dim: int | None = None
    regressor: str | None = None
    directions: tuple[str, ...] = ()
    count: int | None = None  # unsupervised: how many directions (default: the latent dim)
    name: str | None = None  # the bundle's model name (default: the factory's module name)
    editor_name: str = "decurved"
    device: str = "cpu"
    options: tuple[tuple[str, object], ...] = ()


def _directions(job: UserEditorJob, latent_dim: int) -> list[str]:
    if job.config.mode == "supervised":
        if job.regressor is None or not job.directions:
            raise ValueError("supervised training on your generator needs --regressor package.module:factory (a "
                             "module mapping images to attribute values) and --directions name1,name2,… naming "
                             "its output columns")
        return list(job.directions)
    if job.regressor is not None:
        raise ValueError("--regressor is for --mode supervised; unsupervised training finds its own directions")
    count = job.count or latent_dim
    if not 1 <= count <= latent_dim:
        raise ValueError(f"--directions must be 1..{latent_dim} (the latent dim), got {count}")
    return [f"d{k}" for k in range(count)]


def train_user_editor(job: UserEditorJob, log=print) -> Path:
    """Train an editor on the user's generator and write the bundle to ``job.out``; returns its path."""
    require_extra("export", "writing the bundle's ONNX graphs")
    from curvedit.export.onnx_export import export_bundle
    from curvedit.models.fit_editors import make_editor

    generator = ExternalGenerator.wrap(build_user_module(job.generator), job.generator, job.latent_dim)
    directions = _directions(job, generator.latent_dim)
    regressor = None
    if job.regressor is not None:
        regressor = NamedRegressor(build_user_module(job.regressor), directions).eval()
    log(f"generator {job.generator}: latent dim {generator.latent_dim}, images {list(generator.image_shape)}; "
        f"directions {directions}")
    editor, report = make_editor(job.method, generator, directions, job.config, regressor=regressor,
                                 options=dict(job.options), device=job.device)
    report["config"] = job.config.to_dict()
    name = job.name or job.generator.partition(":")[0].rsplit(".", 1)[-1]
    path = write_bundle(job.out, name=name, version="0.1.0", generator=generator.eval(),
                        editors={job.editor_name: (editor, job.config.mode, report)},
                        default_editor=job.editor_name, seed=job.config.seed,
                        training={"command": "curvedit train editor --generator", "generator": job.generator,
                                  "regressor": job.regressor})
    for result in export_bundle(path):
        if result.written:
            log(f"onnx: {result.filename} verified")
        else:
            log(f"onnx: {result.filename} not exported ({result.reason}); loading this bundle will need "
                f"{job.generator.partition(':')[0]} importable")
    return path
