"""The generator checkpoint: one or both CycleGAN generators, with their architecture, in one folder.

What ``python -m jaxgan.interop`` (official ``.pth`` weights) and ``jaxgan.pretrained`` (the released models)
write, and what ``jaxgan.translate --checkpoint``, ``jaxgan.export``, ``jaxgan.evaluate`` and the app read:
an Orbax ``StandardCheckpointer`` checkpoint of ``{"params": {"g_ab" and/or "g_ba": params}}`` plus
``config.json`` = ``{"model": {...}}``, the ``model`` fields of a training config that build the generator.
A training run's folder is another format (``jaxgan.checkpoint``); translate reads both.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Collection, Mapping
from typing import Any

import jax
import numpy as np

from jaxgan import failed_reads, output_files

PyTree = Any

DIRECTIONS = {"AtoB": "g_ab", "BtoA": "g_ba"}

DEFAULT_MODEL_CONFIG = {
    "ngf": 64,
    "n_blocks": 9,
    "ndf": 64,
    "n_layers_d": 3,
    "norm_affine": False,
    "dtype": "float32",
    "remat": False,
}

CONFIG_FILE = "config.json"


class GeneratorCheckpointError(ValueError):
    """A generator checkpoint that cannot be written or read as asked (a direction, a non-empty folder)."""


def save_generator_checkpoint(
    params: PyTree, direction: str, model_cfg: Mapping[str, Any], output_dir: str | os.PathLike
) -> str:
    """Write one generator as an Orbax checkpoint that ``jaxgan.translate`` restores.

    Layout: ``output_dir/`` is an Orbax (``StandardCheckpointer``) checkpoint of
    ``{"params": {"g_ab" | "g_ba": params}}`` plus ``output_dir/config.json`` =
    ``{"model": model_cfg}`` (missing fields filled from :data:`DEFAULT_MODEL_CONFIG`).

    Args:
      params: ``ResnetGenerator`` params.
      direction: ``"AtoB"`` (stored as ``g_ab``) or ``"BtoA"`` (``g_ba``).
      model_cfg: at least ``ngf`` and ``n_blocks``.
      output_dir: must not exist yet, or be an empty directory.

    Returns:
      The absolute path written.
    """
    return save_generators_checkpoint({direction: params}, model_cfg, output_dir)


def save_generators_checkpoint(
    generators: Mapping[str, PyTree], model_cfg: Mapping[str, Any], output_dir: str | os.PathLike
) -> str:
    """Write one or both generators of a CycleGAN (same ``model_cfg``) as one checkpoint.

    As :func:`save_generator_checkpoint`, with ``generators`` = ``{"AtoB": params, "BtoA": params}``
    (either or both): ``jaxgan.translate`` then reads either direction from ``output_dir``.
    """
    import orbax.checkpoint as ocp

    unknown = sorted(set(generators) - set(DIRECTIONS))
    if unknown or not generators:
        got = unknown or "no generator"
        raise GeneratorCheckpointError(f"direction must be one of {sorted(DIRECTIONS)}, got {got}")
    path = os.fspath(output_files.checkpoint_folder(output_dir, GeneratorCheckpointError))
    cfg = {**DEFAULT_MODEL_CONFIG, **dict(model_cfg)}
    from jaxgan import generator_loading  # here: it builds on this module

    generator = generator_loading.make_generator(cfg)
    for direction, params in generators.items():
        mismatch = generator_loading.params_mismatch(generator, params)
        if mismatch:
            raise GeneratorCheckpointError(f"model_cfg describes another generator than the {direction} weights "
                                           f"({mismatch}): give the fields they were built with")  # fmt: skip
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise GeneratorCheckpointError(f"output {path} already exists and is not an empty directory")
    # Orbax writes PATH.orbax-checkpoint-tmp beside it: an unwritable place fails here, not in its threads.
    output_files.writable_folder(os.path.dirname(path), GeneratorCheckpointError)
    tree = {"params": {DIRECTIONS[d]: _to_numpy_tree(p) for d, p in generators.items()}}
    # Written whole beside ``path``, then renamed into place: an interrupted write (Ctrl-C, a full disk) leaves
    # no folder that looks like a checkpoint and blocks the rerun.
    scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path))
    try:
        whole = os.path.join(scratch, "checkpoint")
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(whole, tree)
            ckptr.wait_until_finished()
        with open(os.path.join(whole, CONFIG_FILE), "w") as f:
            json.dump({"model": cfg}, f, indent=2)
        os.replace(whole, path)  # onto an empty folder too
    except OSError as e:
        raise GeneratorCheckpointError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


def load_generator_checkpoint(
    output_dir: str | os.PathLike, names: Collection[str] | None = None
) -> tuple[dict[str, PyTree], dict[str, Any]]:
    """Read what :func:`save_generator_checkpoint` wrote: every generator, or only those of ``names``.

    Args:
      output_dir: the checkpoint folder.
      names: ``"g_ab"`` and/or ``"g_ba"``; ``None`` for all. Only these are read from disk (one direction
        of a two-generator checkpoint: half the bytes); a name the checkpoint lacks is left out of the result.

    Returns:
      ``(params_by_name, model_cfg)``: ``{name: params}`` (NumPy float32 leaves) and the ``"model"``
      section of ``config.json``.
    """
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(output_dir))
    model_cfg = load_model_config(path)
    failed_reads.quiet()
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            stored = _stored(ckptr, path)
            wanted = {n: tree for n, tree in stored.items() if names is None or n in names}
            if not wanted:
                return {}, model_cfg
            target = {"params": wanted}
            as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
            tree = ckptr.restore(
                path, args=ocp.args.PyTreeRestore(item=target, restore_args=as_numpy, partial_restore=True)
            )
        params = {k: _to_numpy_tree(v) for k, v in tree["params"].items()}
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint: one line, not TensorStore's spec
        raise GeneratorCheckpointError(f"its weights are unreadable ({failed_reads.describe(e)})") from e
    return params, model_cfg


def stored_generators(output_dir: str | os.PathLike) -> list[str]:
    """The names (``"g_ab"``, ``"g_ba"``) of the generators a checkpoint holds, from its metadata alone."""
    import orbax.checkpoint as ocp

    failed_reads.quiet()
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            return sorted(_stored(ckptr, os.path.abspath(os.fspath(output_dir))))
    except Exception as e:  # noqa: BLE001 - as load_generator_checkpoint
        raise GeneratorCheckpointError(f"its weights are unreadable ({failed_reads.describe(e)})") from e


def _stored(ckptr: Any, path: str) -> dict[str, PyTree]:
    """``{name: metadata tree}`` of the generators stored at ``path`` (shapes and dtypes, no values)."""
    meta = ckptr.metadata(path)
    tree = getattr(meta, "item_metadata", meta)  # a StepMetadata in orbax 0.12, the tree itself before
    return dict(tree["params"])


def load_model_config(output_dir: str | os.PathLike) -> dict[str, Any]:
    """The generator's ``model`` fields from ``config.json``, missing ones from :data:`DEFAULT_MODEL_CONFIG`."""
    path = os.path.abspath(os.fspath(output_dir))
    cfg_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise GeneratorCheckpointError(f"{path} is not a jaxgan generator checkpoint: {CONFIG_FILE} is missing")
    with open(cfg_path) as f:
        return {**DEFAULT_MODEL_CONFIG, **json.load(f).get("model", {})}


def _to_numpy_tree(tree: PyTree) -> PyTree:
    if isinstance(tree, Mapping):
        return {k: _to_numpy_tree(v) for k, v in tree.items()}
    return np.asarray(tree, dtype=np.float32)
