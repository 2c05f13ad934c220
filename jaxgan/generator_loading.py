"""Where a trained generator comes from: a training run's checkpoints or a generator checkpoint folder.

    generator, params = load_generator("AtoB", workdir="runs/h2z")            # the newest EMA weights
    generator, params = load_generator("AtoB", checkpoint_dir="ckpt/h2z")     # jaxgan.interop / pretrained

A training run (``jaxgan.checkpoint``: ``config.json`` plus ``checkpoints/<step>/``) gives either
generator of any checkpoint, its EMA or raw weights: by default the newest readable checkpoint (an
unreadable newer one is passed over; :func:`load_generator_from_run` returns the step and weights used).
A generator checkpoint (``jaxgan.generator_checkpoint``) holds one or both generators with their
architecture. Every failure is a :class:`GeneratorLoadError` that says what to give instead.
``jaxgan.translate``, ``evaluate``, ``export``, ``run_eval`` and the app load through here.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxgan import checkpoint, failed_reads, models, train
from jaxgan.generator_checkpoint import (  # DIRECTIONS["AtoB"] = "g_ab"
    DEFAULT_MODEL_CONFIG,
    DIRECTIONS,
    load_generator_checkpoint,
    stored_generators,
)

PyTree = Any
WEIGHTS = ("ema", "raw")


class GeneratorLoadError(ValueError):
    """No generator can be loaded as asked: no run or checkpoint there, unknown direction, unreadable files."""


class LoadedGenerator(NamedTuple):
    """A generator ready to apply, what builds it, and where it came from."""

    generator: models.ResnetGenerator
    params: PyTree  # the generator's float32 params
    model_cfg: dict[str, Any]  # the ``model`` fields that build it; missing ones from DEFAULT_MODEL_CONFIG
    source: str  # for messages: "the ema weights of step 400 of runs/h2z" or "the generator checkpoint ckpt/h2z"


def is_training_run(path: str | pathlib.Path) -> bool:
    """Whether ``path`` looks like a training run's folder (``config.json`` and ``checkpoints/``)."""
    path = pathlib.Path(path)
    return (path / "checkpoints").is_dir() and (path / "config.json").is_file()


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise GeneratorLoadError(f"--direction must be one of {sorted(DIRECTIONS)}, got {direction!r}.")


def make_generator(model_cfg: dict) -> models.ResnetGenerator:
    """The generator described by a saved ``config["model"]`` dict."""
    return models.ResnetGenerator(
        ngf=int(model_cfg.get("ngf", 64)),
        n_blocks=int(model_cfg.get("n_blocks", 9)),
        norm_affine=bool(model_cfg.get("norm_affine", False)),
        dtype=train.DTYPES[model_cfg.get("dtype", "float32")],
        conv_impl=str(model_cfg.get("conv_impl", "auto")),
    )


def _restore_generator(path: pathlib.Path, group: str, name: str, shapes: PyTree) -> PyTree:
    """``state[group][name]`` of one checkpoint (``group``: ``params`` or ``ema``), onto this process's first device.

    Explicit shardings: a checkpoint written by N devices (or processes) restores on one.
    """
    checkpoint.check_stored_shapes(path, shapes, at=(group, name))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {group: {name: shapes}}
    restore_args = jax.tree_util.tree_map(lambda _: ocp.ArrayRestoreArgs(sharding=device), target)
    with ocp.PyTreeCheckpointer() as ckptr:
        restored = ckptr.restore(
            path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
        )
    return restored[group][name]


def run_config(workdir: str | pathlib.Path) -> dict[str, Any]:
    """A training run's saved config (``config.json``, with its ``model`` section); ``GeneratorLoadError`` if none."""
    workdir = pathlib.Path(workdir)
    ckpt_dir = workdir / "checkpoints"
    try:
        saved = checkpoint.load_config(workdir)
    except checkpoint.CheckpointError as e:
        raise GeneratorLoadError(str(e)) from e
    if saved is not None and not ckpt_dir.is_dir() and set(saved) == {"model"}:
        raise GeneratorLoadError(f"{workdir} is a generator checkpoint, not a training run: give it as "
                                 f"--checkpoint {workdir}")  # fmt: skip
    if saved is None or not ckpt_dir.is_dir():
        raise GeneratorLoadError(f"No training run in {workdir}: expected {workdir}/config.json and {ckpt_dir}/.")
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise GeneratorLoadError(f"{workdir}/config.json has no model section: it is not a jaxgan run's config.")
    return saved


def load_generator_from_run(
    workdir: str | pathlib.Path, direction: str, step: int | None = None, weights: str = "ema"
) -> tuple[models.ResnetGenerator, PyTree, int, str]:
    """(generator, params, step, weights used) of the newest (or given) checkpoint of a training run.

    ``weights``: ``"ema"`` (the moving average, where the run keeps one; else the raw
    weights, and the fourth value says ``"raw"``) or ``"raw"``.
    """
    return _from_run(workdir, direction, step, weights)[:4]


def _from_run(
    workdir: str | pathlib.Path, direction: str, step: int | None, weights: str
) -> tuple[models.ResnetGenerator, PyTree, int, str, dict[str, Any]]:
    """:func:`load_generator_from_run`'s four values and the run's saved ``model`` config."""
    _check_direction(direction)
    failed_reads.quiet()  # a damaged checkpoint: one line (or the fallback), not TensorStore's echoes
    if weights not in WEIGHTS:
        raise GeneratorLoadError(f"--weights must be one of {', '.join(WEIGHTS)}, got {weights!r}.")
    workdir = pathlib.Path(workdir).absolute()  # Orbax refuses relative paths
    saved = run_config(workdir)
    ckpt_dir = workdir / "checkpoints"
    steps = sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit() and (p / "default").is_dir())
    if step is not None:
        steps = [s for s in steps if s == step]
    if not steps:
        raise GeneratorLoadError(f"No checkpoint{'' if step is None else f' for step {step}'} in {ckpt_dir}.")
    generator = make_generator(saved["model"])
    shapes = jax.eval_shape(lambda: generator.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))["params"])
    name = DIRECTIONS[direction]
    groups = ["ema", "params"] if weights == "ema" and float(saved.get("ema_decay", 0) or 0) > 0 else ["params"]
    errors = []
    for s in reversed(steps):  # the newest readable one
        for group in groups:
            try:
                params = _restore_generator(ckpt_dir / str(s) / "default", group, name, shapes)
                if errors:  # the newest ones could not be read: say so, as training's resume does
                    print("warning: unreadable, skipped:", *errors, sep="\n  ", file=sys.stderr)
                return generator, params, s, "ema" if group == "ema" else "raw", saved["model"]
            except checkpoint.ShapeMismatchError as e:  # config.json and the checkpoints: every step alike
                raise GeneratorLoadError(str(e)) from e
            except Exception as e:  # noqa: BLE001 - fall back to the raw weights, then to an older checkpoint
                errors.append(f"step {s} {group}: {failed_reads.describe(e)}")
    raise GeneratorLoadError(f"No readable checkpoint in {ckpt_dir}:\n  " + "\n  ".join(errors))


def load(
    direction: str, workdir: str | None = None, checkpoint_dir: str | None = None, weights: str = "ema"
) -> LoadedGenerator:
    """The ``direction`` generator of a training run or of a generator checkpoint.

    Exactly one of ``workdir`` (its newest readable checkpoint's ``weights``) and ``checkpoint_dir``.
    """
    _check_direction(direction)
    if bool(workdir) == bool(checkpoint_dir):
        raise GeneratorLoadError("Give exactly one of --workdir (a training run) or --checkpoint (an imported model).")
    if workdir:
        generator, params, step, used, saved_model = _from_run(workdir, direction, None, weights)
        model_cfg = {**DEFAULT_MODEL_CONFIG, **saved_model}
        return LoadedGenerator(generator, params, model_cfg, f"the {used} weights of step {step} of {workdir}")
    path = pathlib.Path(checkpoint_dir)
    if not path.is_dir():
        what = "is a file, not a checkpoint directory" if path.exists() else "does not exist"
        raise GeneratorLoadError(f"Checkpoint directory {path} {what}.")
    if is_training_run(path):
        raise GeneratorLoadError(f"{path} is a training run: give it as --workdir {path} (--checkpoint takes a "
                             "generator written by `python -m jaxgan.interop` or `jaxgan.pretrained`).")  # fmt: skip
    name = DIRECTIONS[direction]
    try:
        params_by_name, model_cfg = load_generator_checkpoint(path, names=(name,))  # that generator alone
        stored = params_by_name or stored_generators(path)
    except Exception as e:  # noqa: BLE001 - turn any reading failure into one clear message
        raise GeneratorLoadError(f"Cannot read a generator checkpoint from {path}: {e}") from e
    if name not in params_by_name:
        have = [d for d, n in DIRECTIONS.items() if n in stored]
        raise GeneratorLoadError(f"{path} holds a generator for {have}, not {direction}.")
    generator = make_generator(model_cfg)
    check_params(generator, params_by_name[name], path)
    return LoadedGenerator(generator, params_by_name[name], model_cfg, f"the generator checkpoint {checkpoint_dir}")


def params_mismatch(generator: models.ResnetGenerator, params: PyTree) -> str | None:
    """How ``params`` are not the weights of ``generator`` (its fields and the first difference), or None.

    Flax applies a generator to weights of another one without a word where they hold more than it uses: weights
    with affine norms under a config.json that says none gave outputs off by 0.8, and fewer residual blocks than
    config.json names ended in a traceback inside Flax.
    """
    want = jax.eval_shape(lambda: generator.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))["params"])
    shapes = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(want)}
    got = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(params)}
    if shapes == got:
        return None
    missing, extra = sorted(set(shapes) - set(got)), sorted(set(got) - set(shapes))
    differ = [k for k in sorted(set(shapes) & set(got)) if shapes[k] != got[k]]
    first = (f"the weights lack {missing[0]}" if missing else f"the weights hold {extra[0]}, which it has not"
             if extra else f"{differ[0]} is {got[differ[0]]} in the weights, {shapes[differ[0]]} in it")  # fmt: skip
    fields = ", ".join(f"{k}={getattr(generator, k)}" for k in ("ngf", "n_blocks", "norm_affine"))
    return f"{fields}; {first}"


def check_params(generator: models.ResnetGenerator, params: PyTree, path: str | pathlib.Path) -> None:
    """``GeneratorLoadError`` unless ``params`` are the weights of ``generator``, built from ``path``'s config.json."""
    mismatch = params_mismatch(generator, params)
    if mismatch:
        raise GeneratorLoadError(f"{path}: its config.json describes another generator than its weights "
                                 f"({mismatch}). Correct config.json's model fields, or write the checkpoint "
                                 "again.")  # fmt: skip


def load_generator(
    direction: str, workdir: str | None = None, checkpoint_dir: str | None = None, weights: str = "ema"
) -> tuple[models.ResnetGenerator, PyTree]:
    """(generator, params) of :func:`load`."""
    loaded = load(direction, workdir, checkpoint_dir, weights)
    return loaded.generator, loaded.params
