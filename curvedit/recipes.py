"""The recipes of the shipped models: ``curvedit train recipe NAME`` (``curvedit train default`` = ``shapes32``).

A recipe is data: which generator family to train on which data, where the factor regressor comes from, and
which editors to train or fit on the frozen generator. ``run_recipe`` executes it into a run directory and then
writes the bundle, with every ONNX graph verified. Every stage is reused or resumed on rerun: a finished
regressor or generator is loaded, a generator continues from its checkpoint, each editor from its own.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from safetensors.torch import load_file

from curvedit.bundle import (
    borrow_generator_weights,
    read_manifest,
    save_weights,
    weights_meta,
    write_bundle,
    write_manifest,
)
from curvedit.models import all_trainers  # noqa: F401  (register every family's training recipe)
from curvedit.models.alignment import AlignmentTrainConfig
from curvedit.models.datasets import factor_names_of
from curvedit.models.editors import EDITOR_KINDS
from curvedit.models.families import GENERATOR_FAMILIES, GeneratorFamily, build_generator
from curvedit.models.files import write_json
from curvedit.models.generator import GeneratorConfig
from curvedit.models.infogan import InfoGANConfig, InfoGANTrainConfig
from curvedit.models.pixelcnn import PixelCNNConfig
from curvedit.models.regressor import FactorRegressor, RegressorTrainConfig, regressor_for, train_regressor
from curvedit.models.train_editor import EditorTrainConfig
from curvedit.models.train_generator import GANTrainConfig
from curvedit.models.train_pixelcnn import PixelCNNTrainConfig
from curvedit.models.vae import VAEConfig, VAETrainConfig

# The shipped DeCurvEd editors' training (supervised: 2,500 steps at lr 1e-3, light log-det regulariser).
DEFAULT_EDITOR_TRAINING = EditorTrainConfig(mode="supervised", steps=2500, lr=1e-3, regulariser_weight=0.1)


@dataclass(frozen=True)
class EditorStage:
    name: str
    method: str
    train: EditorTrainConfig
    options: dict = field(default_factory=dict)


def _shapes_editors(axes: bool = False) -> tuple[EditorStage, ...]:
    """Supervised DeCurvEd (the default), the four baselines of the shapes32 bundle, the group-difference attribute
    vectors (``attrdiff``) and the NeuralODE fields (``neuralode``, trained like DeCurvEd); with ``axes``, also the
    generator's own latent axes named by the factor each moves most (for the families trained under constraints,
    β-VAE and InfoGAN)."""
    baseline = EditorTrainConfig(mode="supervised", steps=400, lr=1e-2)
    fitted = EditorTrainConfig(mode="supervised")
    stages = (EditorStage("decurved", "decurved", DEFAULT_EDITOR_TRAINING),
              EditorStage("sefa", "sefa", fitted),
              EditorStage("ganspace", "ganspace", fitted),
              EditorStage("linear", "linear", baseline),
              EditorStage("rbf", "rbf", baseline),
              EditorStage("attrdiff", "attrdiff", fitted),
              EditorStage("neuralode", "neuralode", DEFAULT_EDITOR_TRAINING))
    return (*stages, EditorStage("axes", "axes", fitted)) if axes else stages


@dataclass(frozen=True)
class Recipe:
    name: str
    family: str
    config: object  # the family's config dataclass
    train_config: object  # the family's training config dataclass
    editors: tuple[EditorStage, ...]
    regressor: str | None  # "train": train one; a shipped model's name: reuse its regressor; None: no regressor
    version: str = "1.0.0"
    # A shipped model whose editors are reused as they are, for a generator conditioned on that model's latent
    # space (the PixelCNN on the shapes-vae's z; its sampling has no gradient to train editors through).
    editors_from: str | None = None
    # Graphs not to ship, each with the reason, recorded in the manifest as ``onnx_not_shipped`` (the ONNX
    # Runtime engine runs those parts on PyTorch).
    skip_graphs: dict[str, str] = field(default_factory=dict)
    # Prefixes of the generator's weights stored in half precision (``write_bundle``'s ``generator_float16``).
    generator_float16: tuple[str, ...] = ()
    # (prefix, shipped model): the generator's weights under prefix are that model's, stored once, in its file
    # (``bundle.borrow_generator_weights``).
    generator_borrow: tuple[str, str] | tuple[()] = ()
    data: str = "shapes"  # the labelled render set whose factors name the supervised directions
    regressor_channels: int = 32  # of a regressor this recipe trains
    # Shipped models this one's latent space is aligned to (``curvedit.alignment``): each map is trained after the
    # bundle is written, against that model's shipped bundle, and stored in this bundle.
    align_to: tuple[str, ...] = ()
    # Fold the aggregate posterior's per-axis moments into the VAE (``vae.standardize_latents``) before the
    # editors train, so that prior samples are faces, not noise.
    standardize_latents: bool = False

    @property
    def directions(self) -> list[str]:
        if self.regressor is not None:
            return list(factor_names_of(self.data))
        return [f"d{k}" for k in range(self.config.latent_dim)]


_DIGITS_EDITOR_TRAINING = EditorTrainConfig(mode="unsupervised", steps=3000, lr=1e-3, amount_max=3.0,
                                            regulariser_weight=0.1)
BETA = 4.0
BETAVAE_STEPS = 4000
INFOGAN_STEPS = 2000
PIXELCNN_STEPS = 4000
PIXELCNN_ENCODER_STORED_ONCE = ("the frozen conditioning encoder is the shapes-vae's, stored once, in that "
                                "model's weight file; ONNX Runtime encodes through PyTorch")


# The 32×32 VAEs store their six largest weights (the dense layers to and from 2,048 features and four
# convolutions: 99% of the bytes) in half precision: measured on 512 prior samples and 512 held-out renders,
# decoded images move by at most 7.3e-4 (of the [-1, 1] range; 0.2–0.3% of uint8 pixels by one level) and
# encoded latents by at most 2.7e-4, against float32 weights. The weight files shrink from 5.5 to 2.8 MB.
VAE_FLOAT16 = ("body.1.weight", "body.4.weight", "body.6.weight", "encoder.2.weight", "encoder.4.weight",
               "encoder.7.weight")

# The faces: two small 64×64 VAEs (d = 10: eight factors and two more coordinates), each with its own regressor
# and one supervised DeCurvEd editor (8 coupling layers of width 32: the bundle stays near 2 MB); photo → avatar
# is aligned. σ = 0.5 weighs the KL term per pixel about as σ = 0.25–0.3 does at 32×32 (4× the pixels): at σ = 0.2
# the KL term ended at 30–50 nats and most prior samples decoded to noise, so the editors trained on noise.
# The factor-consistency term (``VAETrainConfig.factor_weight``): without it both VAEs lost eye size, eye spacing,
# smile and brow height (R² ≈ 0 on their own reconstructions, at σ = 0.5 and 0.3 alike); at 2,000 steps on the
# avatars, weight 20 kept none of them, 100 some, 300 all four (R² 0.64–0.88 by an independent regressor), and
# 1,000 let the decoder fool the training regressor (its R² 0.95–0.99, an independent one's 0.31–0.79).
FACES_VAE = VAEConfig(latent_dim=10, image_size=64, base_channels=16, hidden=96, top_multiplier=2)
FACES_VAE_STEPS = 6000
FACES_FACTOR_WEIGHT = 300.0
FACES_REGRESSOR_STEPS = 3000


def _faces(style: str, align_to: tuple[str, ...] = ()) -> Recipe:
    name = f"faces-{style}"
    return Recipe(name, "vae", FACES_VAE, VAETrainConfig(data=name, steps=FACES_VAE_STEPS, sigma=0.5,
                                                         factor_weight=FACES_FACTOR_WEIGHT),
                  (EditorStage("decurved", "decurved", DEFAULT_EDITOR_TRAINING, {"hidden": 32, "layers": 8}),),
                  regressor="train", data=name, regressor_channels=10, align_to=align_to, standardize_latents=True)


RECIPES: dict[str, Recipe] = {
    "shapes32": Recipe("shapes32", "dcgan", GeneratorConfig(latent_dim=8), GANTrainConfig(steps=10000),
                       _shapes_editors(), regressor="train"),
    "shapes-vae": Recipe("shapes-vae", "vae", VAEConfig(latent_dim=8),
                         VAETrainConfig(data="shapes", steps=12000, sigma=0.3), _shapes_editors(),
                         regressor="shapes32", generator_float16=VAE_FLOAT16),
    "digits-vae": Recipe(
        "digits-vae", "vae", VAEConfig(latent_dim=8, channels=1),
        VAETrainConfig(data="digits", steps=8000, sigma=0.35),
        (EditorStage("decurved", "decurved", _DIGITS_EDITOR_TRAINING),
         EditorStage("neuralode", "neuralode", _DIGITS_EDITOR_TRAINING)),  # attrdiff needs labels: none here
        regressor=None, generator_float16=VAE_FLOAT16),
    # Training under constraints: the same VAE as shapes-vae with the KL term weighted by β = 4 (Higgins et al.'s
    # value for dSprites-like data), and an InfoGAN whose six codes are meant to become the six factors.
    "shapes-betavae": Recipe("shapes-betavae", "vae", VAEConfig(latent_dim=8),
                             VAETrainConfig(data="shapes", steps=BETAVAE_STEPS, sigma=0.3, beta=BETA,
                                            kl_warmup=1000),
                             _shapes_editors(axes=True), regressor="shapes32", generator_float16=VAE_FLOAT16),
    "shapes-infogan": Recipe("shapes-infogan", "infogan", InfoGANConfig(codes=6, noise=2),
                             InfoGANTrainConfig(steps=INFOGAN_STEPS), _shapes_editors(axes=True),
                             regressor="shapes32"),
    # A conditional PixelCNN (16×16, 64 colours) on h = the shapes-vae encoder's z: DeCurvEd edits h with the
    # shapes-vae's own editors, and the PixelCNN renders them. The frozen encoder is the shapes-vae's, read from
    # that model's weight file (stored once, tests/test_shipped_models.py), and not as a graph.
    "shapes-pixelcnn": Recipe("shapes-pixelcnn", "pixelcnn", PixelCNNConfig(),
                              PixelCNNTrainConfig(steps=PIXELCNN_STEPS, encoder_from="shapes-vae"), (),
                              regressor="shapes32", editors_from="shapes-vae",
                              skip_graphs={"encoder.onnx": PIXELCNN_ENCODER_STORED_ONCE},
                              generator_borrow=("encoder.", "shapes-vae")),
    # Train faces-avatar first: faces-photo's recipe aligns to the shipped faces-avatar.
    "faces-avatar": _faces("avatar"),
    "faces-photo": _faces("photo", align_to=("faces-avatar",)),
}
# How many regressor steps a recipe trains when the caller does not say.
REGRESSOR_STEPS = {"faces-avatar": FACES_REGRESSOR_STEPS, "faces-photo": FACES_REGRESSOR_STEPS}


def _reused_editors(name: str, log) -> tuple[dict, str]:
    """A shipped model's editors as ``write_bundle`` takes them, and its default editor's name."""
    from curvedit.api import load

    bundle = load(name, engine="torch").bundle
    editors = {}
    for editor_name, editor in bundle.editors.items():
        entry = bundle.manifest["editors"][editor_name]
        report = {**entry.get("training", {}), "reused_from": f"{name} {bundle.digest[:12]}"}
        editors[editor_name] = (editor, entry["mode"], report)
    log(f"editors: {sorted(editors)} reused from the shipped {name}")
    return editors, bundle.default_editor


def _regressor(recipe: Recipe, run: Path, steps: int, seed: int, log) -> FactorRegressor | None:
    if recipe.regressor is None:
        return None
    path = run / "regressor.safetensors"
    if not path.is_file():
        if recipe.regressor == "train":
            config = RegressorTrainConfig(steps=steps, seed=seed, data=recipe.data,
                                          channels=recipe.regressor_channels)
            regressor, error = train_regressor(config)
            write_json(path.with_suffix(".json"), {**config.to_dict(), "held_out_mae": error.tolist()})
        else:
            from curvedit.api import load  # the shipped model whose instrument this recipe reuses

            regressor = load(recipe.regressor, engine="torch").bundle.regressor
            log(f"regressor: reused from the shipped {recipe.regressor}")
        save_weights(run, path.name, regressor, weights_meta("regressor", "factor-cnn", regressor.config()))
    regressor = regressor_for(recipe.data, recipe.regressor_channels if recipe.regressor == "train" else 32)
    regressor.load_state_dict(load_file(path))
    return regressor.eval()


def load_run_generator(run_dir: Path) -> GeneratorFamily:
    """The generator a run directory finished (``generator.json`` + ``generator.safetensors``)."""
    spec = json.loads((run_dir / "generator.json").read_text())
    generator = build_generator(spec["family"], spec["config"])
    generator.load_state_dict(load_file(run_dir / "generator.safetensors"))
    return generator.eval()


def train_run_generator(run_dir: Path, family: str, config, train_config, progress: bool = True,
                        regressor: FactorRegressor | None = None):
    """Train (or resume, or reuse a finished) generator of ``family`` in ``run_dir``; ``regressor`` is handed to
    a training config that weighs a factor-consistency term (``factor_weight``, the VAE's)."""
    if (run_dir / "generator.safetensors").is_file() and (run_dir / "generator.json").is_file():
        return load_run_generator(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    uses_regressor = getattr(train_config, "factor_weight", 0) > 0
    generator = GENERATOR_FAMILIES[family].train_recipe(run_dir, config, train_config, progress,
                                                        **({"regressor": regressor} if uses_regressor else {}))
    write_json(run_dir / "generator.json", {"family": family, "config": config.to_dict(),
                                            "train_config": train_config.to_dict()})
    return generator


def run_recipe(name: str, out: Path, run: Path, seed: int = 0, generator_steps: int | None = None,
               editor_steps: int | None = None, regressor_steps: int | None = None,
               export: bool = True, align: bool = True, log=print) -> dict:
    """Run the recipe ``name`` (see ``RECIPES``) in ``run`` and write its bundle to ``out``; returns the
    per-stage seconds ("reused" where an earlier run had finished the stage). ``align=False`` skips the
    alignment stages (which need their target models shipped)."""
    from curvedit.models.fit_editors import make_editor

    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; the shipped models' recipes are {sorted(RECIPES)}")
    recipe = RECIPES[name]
    run.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float | str] = {}
    start = time.time()
    had = (run / "regressor.safetensors").is_file()
    if regressor_steps is None:
        regressor_steps = REGRESSOR_STEPS.get(name, RegressorTrainConfig.steps)
    regressor = _regressor(recipe, run, regressor_steps, seed, log)
    seconds["regressor"] = "none" if regressor is None else "reused" if had else round(time.time() - start)
    train_config = replace(recipe.train_config, seed=seed,
                           **({"steps": generator_steps} if generator_steps is not None else {}))
    start, had = time.time(), (run / "generator" / "generator.safetensors").is_file()
    generator = train_run_generator(run / "generator", recipe.family, recipe.config, train_config,
                                    regressor=regressor)
    seconds["generator"] = "reused" if had else round(time.time() - start)
    moments = None
    if recipe.standardize_latents:  # applied to the run's generator on every run: the stage is deterministic
        from curvedit.models.datasets import make_dataset
        from curvedit.models.vae import standardize_latents

        moments = standardize_latents(generator, make_dataset(recipe.data, seed + 7).next_batch(2048))
        log(f"latents standardised: per-axis std was {[round(v, 2) for v in moments['std']]}")
    editors, default_editor = {}, recipe.editors[0].name if recipe.editors else None
    if recipe.editors_from is not None:
        editors, default_editor = _reused_editors(recipe.editors_from, log)
    for stage in recipe.editors:
        config = replace(stage.train, seed=seed, **({"steps": editor_steps} if editor_steps is not None
                                                    and EDITOR_KINDS[stage.method].needs_training else {}))
        start = time.time()
        editor, report = make_editor(stage.method, generator, recipe.directions, config, regressor=regressor,
                                     options=stage.options, checkpoint=run / f"editor_{stage.name}.pt")
        report["config"] = config.to_dict()
        editors[stage.name] = (editor, config.mode, report)
        seconds[f"editor {stage.name}"] = round(time.time() - start)
        measured = report.get("mean_purity", report.get("reconstructor_accuracy"))
        log(f"{stage.name}: {'purity' if 'mean_purity' in report else 'reconstructor accuracy'} {measured:.3f}")
    training = {"command": f"curvedit train recipe {name}", "seed": seed, "generator": train_config.to_dict(),
                "seconds": seconds, **({"standardized_latents": moments} if moments is not None else {})}
    write_bundle(out, name=name, version=recipe.version, generator=generator, editors=editors,
                 default_editor=default_editor, regressor=regressor, seed=seed, training=training,
                 generator_float16=recipe.generator_float16)
    if recipe.generator_borrow:
        from curvedit.api import resolve_model

        prefix, source = recipe.generator_borrow
        borrow_generator_weights(out, prefix, resolve_model(source), source)
    if recipe.skip_graphs:
        manifest = read_manifest(out)
        write_manifest(out, {**manifest, "onnx_not_shipped": dict(recipe.skip_graphs)})
    if export:
        from curvedit.bundle import load_bundle
        from curvedit.export.graphs import bundle_specs
        from curvedit.export.onnx_export import export_bundle

        specs = bundle_specs(load_bundle(out))
        graphs = [spec.filename for spec in specs if spec.filename not in recipe.skip_graphs]
        results = export_bundle(out, only=graphs)
        log(f"onnx: {sum(r.written for r in results)} of {len(results)} graphs verified and written")
    for target in recipe.align_to if align else ():
        from curvedit.translation import align_bundle

        start = time.time()
        report = align_bundle(out, target, AlignmentTrainConfig(seed=seed))
        seconds[f"alignment {target}"] = round(time.time() - start)
        log(f"alignment → {target}: final loss {report['losses'][-1]:.3f}")
    return seconds
