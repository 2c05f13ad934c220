"""Orbax checkpoints of the whole ``TrainState``: save, restore-latest with fallback, config check.

Layout of a run directory::

    WORKDIR/config.json        the full experiment config (written once, checked on restore)
    WORKDIR/checkpoints/<step>/ Orbax checkpoints (params, four Adam states, pools, RNG, step)

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a crash (even ``kill -9``) mid-save leaves no half-written
checkpoint under a step name; if the newest one is unreadable anyway (e.g. a
damaged disk), :meth:`Checkpointer.restore_latest` warns and falls back to the
previous one. The data position needs no saving: the input stream is a pure
function of the step.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import pathlib
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxgan import failed_reads

PyTree = Any
log = logging.getLogger(__name__)

# Fields that fix the shapes of what a checkpoint holds; any difference makes it unrestorable.
SHAPE_FIELDS = (
    "model.ngf",
    "model.n_blocks",
    "model.ndf",
    "model.n_layers_d",
    "model.norm_affine",
    "pool_size",
    "crop_size",
    "image_shape",
)
_FIELD_NOTES = {"image_shape": " (the training images' size, which sizes the image pools: crop_size when cropping, "
                               "the images' own size with preprocess none or scale_width)"}  # fmt: skip


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with the reason and what to do."""


class ShapeMismatchError(CheckpointError):
    """A checkpoint whose arrays have other shapes than the config asks for: another model, not a damaged file."""


def _get(config: dict, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def config_to_dict(config: ml_collections.ConfigDict | dict) -> dict:
    """A JSON-safe plain dict of a config."""
    if isinstance(config, ml_collections.ConfigDict):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, default=str))


def save_config(workdir: str | pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Write ``WORKDIR/config.json`` (atomically: write then rename)."""
    path = pathlib.Path(workdir) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config_to_dict(config), indent=2, sort_keys=True))
    tmp.replace(path)


def load_config(workdir: str | pathlib.Path) -> dict | None:
    """The saved config of a run as a dict, or None when there is none.

    :class:`CheckpointError` when ``config.json`` cannot be read or is not a JSON object (a hand edit gone
    wrong, a copy cut short).
    """
    path = pathlib.Path(workdir) / "config.json"
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} cannot be read ({type(e).__name__}: {e}); it records the run's "
                              "config: fix it, or restore it from a copy.") from e  # fmt: skip
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} holds a JSON {type(saved).__name__}, not the run's config (an object); "
                              "fix it, or restore it from a copy.")  # fmt: skip
    return saved


def check_stored_shapes(path: str | pathlib.Path, target: PyTree, at: tuple[str, ...] = ()) -> None:
    """:class:`ShapeMismatchError` naming the first array whose shape in the checkpoint at ``path`` differs
    from ``target``'s (``at``: the keys of ``target`` within the checkpoint's tree).

    Read from the checkpoint's metadata before any array: a restore that fails on shapes leaves Orbax's
    asynchronous readers to print pages of tracebacks. Where the metadata cannot be read, or a leaf has no
    counterpart, the restore itself decides.
    """
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)  # Orbax warns about the step-level metadata file it does not need here
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            tree = getattr(ckptr.metadata(pathlib.Path(path).absolute()), "item_metadata", None)
        for key in at:
            tree = tree[key]
        stored = {jax.tree_util.keystr(k): tuple(m.shape) for k, m in jax.tree_util.tree_leaves_with_path(
            tree, is_leaf=lambda m: hasattr(m, "shape"))}  # fmt: skip
    except Exception:  # noqa: BLE001 - no readable metadata: the restore reports what is wrong
        return
    finally:
        absl_log.setLevel(level)
    for key, want in jax.tree_util.tree_leaves_with_path(target):
        have = stored.get(jax.tree_util.keystr(key))
        if have is not None and have != tuple(want.shape):
            raise ShapeMismatchError(
                f"{''.join(f'[{k!r}]' for k in at)}{jax.tree_util.keystr(key)} is {have} in the checkpoint at "
                f"{path} but {tuple(want.shape)} for the config: the two do not belong together (another model "
                "or image size; train with the run's settings, or in a new --workdir)"
            )


def has_checkpoints(workdir: str | pathlib.Path) -> bool:
    """Whether ``WORKDIR/checkpoints`` holds a step folder (a run's ``config.json`` alone binds nothing)."""
    folder = pathlib.Path(workdir) / "checkpoints"
    return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def _known(value: Any) -> bool:
    """Absent (a run of an older version) or empty (``image_shape`` before the data set it) is not compared."""
    return value is not None and value != [] and value != ()


def check_compatible(saved: dict, config: ml_collections.ConfigDict | dict) -> None:
    """Raise :class:`CheckpointError` naming every shape-relevant field that differs."""
    current = config_to_dict(config)
    diffs = [
        f"{f}: checkpoint has {_get(saved, f)!r}, config has {_get(current, f)!r}{_FIELD_NOTES.get(f, '')}"
        for f in SHAPE_FIELDS
        if _known(_get(saved, f)) and _known(_get(current, f)) and _get(saved, f) != _get(current, f)
    ]
    if diffs:
        raise CheckpointError(
            "The run directory holds checkpoints of an incompatible model:\n  "
            + "\n  ".join(diffs)
            + "\nUse the same values (drop the overrides), or a new --workdir to start a fresh run."
        )


class Checkpointer:
    """Orbax ``CheckpointManager`` over ``WORKDIR/checkpoints`` keeping the last ``keep``.

    Saves are asynchronous (the step loop goes on while the files are written)
    unless ``async_save=False``; all processes must call :meth:`save` and :meth:`restore_latest` together.
    """

    def __init__(self, workdir: str | pathlib.Path, keep: int = 3, async_save: bool = True, cleanup: bool = True):
        """``cleanup``: remove what a killed save left behind (a reader beside a live run must not)."""
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            cleanup_tmp_directories=cleanup,
            enable_async_checkpointing=async_save,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: PyTree, force: bool = False) -> bool:
        """Start saving ``state`` as ``step``; returns whether a save started.

        Raises :class:`CheckpointError` (saying how much space a checkpoint needs) when the disk
        lacks the room or fills up while writing; the checkpoints already there stay intact (Orbax
        writes to a temporary folder and deletes old checkpoints only after a new one is complete).
        """
        if step in self.manager.all_steps():
            return False
        leaves = _without_empty(_leaves_only(state))
        need = _state_bytes(leaves)
        free = shutil.disk_usage(self.directory).free
        if free < need * _SPACE_MARGIN:
            raise CheckpointError(self._space_message(step, need, free))
        try:
            return bool(self.manager.save(step, args=ocp.args.StandardSave(leaves), force=force))
        except Exception as e:
            if _is_disk_full(e):
                raise CheckpointError(self._space_message(step, need, shutil.disk_usage(self.directory).free)) from e
            raise

    def wait(self) -> None:
        """Block until pending saves are on disk (a full disk: :class:`CheckpointError`, as :meth:`save`)."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            if _is_disk_full(e):
                free = shutil.disk_usage(self.directory).free
                raise CheckpointError(self._space_message(None, None, free)) from e
            raise

    def _space_message(self, step: int | None, need: int | None, free: int) -> str:
        kept = self.all_steps()
        what = f"the checkpoint at step {step}" if step is not None else "a checkpoint"
        size = f" needs about {need / 2**20:,.0f} MiB" if need else ""
        return (
            f"Not enough disk space to save {what} in {self.directory}:{size}, {free / 2**20:,.0f} MiB are free. "
            f"The checkpoints already there are intact ({', '.join(map(str, kept)) or 'none yet'}); free some space "
            "(or lower --config.keep_checkpoints) and rerun the same command to resume from the newest."
        )

    def restore(self, step: int, target: PyTree) -> PyTree:
        """Restore ``step`` into the structure, shapes, dtypes and shardings of ``target``.

        ``target`` may be a concrete state or a tree of ``jax.ShapeDtypeStruct``
        with ``sharding`` set, which is what makes a checkpoint written on N
        devices restore on M devices.
        """
        whole = jax.tree_util.tree_map(_abstract_leaf, _leaves_only(target))
        abstract = _without_empty(whole)
        failed_reads.quiet()  # a damaged checkpoint: its warning, not TensorStore's echoes
        check_stored_shapes(self.directory / str(step) / "default", abstract)
        try:
            restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except ValueError as e:  # a structure mismatch: perhaps only the EMA group differs
            if not (isinstance(abstract, dict) and "ema" in abstract):
                raise
            try:
                restored = self._restore_across_ema(step, abstract)
            except Exception:  # noqa: BLE001 - not an EMA difference: report the original mismatch
                raise e from None
        restored = _with_empty(whole, restored)
        return target.replace(**restored) if dataclasses.is_dataclass(target) else restored

    def _restore_across_ema(self, step: int, abstract: dict) -> dict:
        """Restore a checkpoint whose EMA group differs from the run's (``TrainState.ema``).

        A checkpoint from before EMA (or from a run with ``ema_decay=0``) into a run that keeps one: the EMA
        starts from the restored generator weights. A checkpoint with an EMA into a run without: it is dropped.
        """
        if abstract["ema"]:
            rest = {k: v for k, v in abstract.items() if k != "ema"}
            try:  # written before EMA existed: no group at all
                restored = self.manager.restore(step, args=ocp.args.StandardRestore(rest))
            except ValueError:  # written with ema_decay=0: an empty group
                restored = self.manager.restore(step, args=ocp.args.StandardRestore({**rest, "ema": {}}))
            restored["ema"] = {k: jax.tree_util.tree_map(jnp.copy, restored["params"][k]) for k in abstract["ema"]}
            log.info("The checkpoint at step %d keeps no EMA of the generators: it starts from their weights.", step)
            return restored
        generators = {k: v for k, v in abstract["params"].items() if k.startswith("g_")}
        restored = self.manager.restore(step, args=ocp.args.StandardRestore({**abstract, "ema": generators}))
        restored["ema"] = {}
        return restored

    def restore_latest(self, target: PyTree) -> tuple[PyTree | None, int | None]:
        """Restore the newest readable checkpoint; (None, None) when there is none.

        An unreadable checkpoint is skipped with a warning and the next older one
        is tried; if none can be read, :class:`CheckpointError` is raised.
        """
        steps = self.all_steps()
        incomplete = [s for s in steps if not (self.directory / str(s) / "default").is_dir()]
        if incomplete:  # an empty or half-copied step folder: nothing to read, and it confuses Orbax's layout
            log.warning("Checkpoint folder(s) %s in %s hold no checkpoint.", incomplete, self.directory)
            self._set_aside(incomplete)
            steps = self.all_steps()
        failures, unreadable = [], []
        for step in reversed(steps):
            try:
                restored = self.restore(step, target)
            except ShapeMismatchError:
                raise  # another model, not a damaged file: the older checkpoints are the same model
            except Exception as e:  # noqa: BLE001 - any failure to read means: try the previous one
                failures.append(f"step {step}: {failed_reads.describe(e)}")
                unreadable.append(step)
                log.warning("Checkpoint at step %d in %s is unreadable (%s); trying the previous one.",
                            step, self.directory, failures[-1])  # fmt: skip
                continue
            if unreadable:
                self._set_aside(unreadable)
            return restored, step
        if failures:
            raise CheckpointError(
                f"No readable checkpoint in {self.directory}:\n  " + "\n  ".join(failures)
                + "\nMove the directory away to start afresh."
            )  # fmt: skip
        return None, None

    def _set_aside(self, steps: list[int]) -> None:
        """Move unreadable checkpoints newer than the one restored to ``WORKDIR/checkpoints_unreadable/``.

        Left in place, they would block the new saves of the same steps and count against
        ``keep`` as the newest, so that Orbax would delete the good checkpoints written after the resume.
        """
        aside = self.directory.parent / "checkpoints_unreadable"
        if jax.process_index() == 0:
            aside.mkdir(exist_ok=True)
            for step in steps:
                dest = aside / f"{step}.{int(time.time())}"
                (self.directory / str(step)).rename(dest)
                log.warning("Moved the unreadable checkpoint of step %d to %s; training repeats its steps.", step, dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jaxgan_checkpoints_set_aside")
        self.manager.reload()

    def close(self) -> None:
        """Finish pending saves and release the manager (a save that failed was reported by :meth:`wait`)."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - already raised to the caller by save() or wait()
            log.warning("A pending checkpoint save failed: %s", e)
        self.manager.close()


_SPACE_MARGIN = 1.1  # free space asked for beyond the state's own bytes (Orbax metadata, filesystem blocks)


def _state_bytes(tree: PyTree) -> int:
    """Bytes of every array leaf: what a checkpoint of ``tree`` takes on disk, give or take metadata."""
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree)))


def _is_disk_full(error: BaseException) -> bool:
    """ENOSPC anywhere in the exception's chain (Orbax wraps the writers' errors)."""
    seen: BaseException | None = error
    while seen is not None:
        if getattr(seen, "errno", None) == errno.ENOSPC or "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _leaves_only(state: PyTree) -> PyTree:
    """A dataclass state (``TrainState``) as a dict of its array fields.

    Its static fields (hyperparameters such as the learning rate) are not saved,
    so changing them between runs does not make a checkpoint unreadable.
    """
    if not dataclasses.is_dataclass(state):
        return state
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if f.metadata.get("pytree_node", True)}


def _is_empty(x: Any) -> bool:
    return hasattr(x, "shape") and 0 in tuple(x.shape)


def _without_empty(tree: PyTree) -> PyTree:
    """``tree`` with its zero-size arrays (the image pools of ``pool_size=0``) as None: they hold nothing, and
    Orbax refuses to save them."""
    return jax.tree_util.tree_map(lambda x: None if _is_empty(x) else x, tree)


def _with_empty(whole: PyTree, restored: PyTree) -> PyTree:
    """``restored`` (a tree saved through :func:`_without_empty`) with the zero-size arrays of ``whole`` (a
    tree of ``jax.ShapeDtypeStruct``) back in their places, on their shardings."""

    def fill(want: Any, got: Any) -> Any:
        if not _is_empty(want):
            return got
        sharding = getattr(want, "sharding", None)
        if sharding is None:
            return jnp.zeros(want.shape, want.dtype)
        return jax.make_array_from_callback(want.shape, sharding, lambda index: np.zeros(want.shape, want.dtype)[index])

    return jax.tree_util.tree_map(fill, whole, restored)


def _abstract_leaf(x: Any) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
