"""The processes of a multi-process run must agree: one config, one workdir that all of them see, one data set.

None of this is visible to JAX. Peers given different configs either train silently apart (another
learning rate: the "replicated" parameters drift between processes) or abort in a collective with a
message about data sizes; peers whose ``--workdir`` is not one shared folder (node-local disks) fail at
the first checkpoint and then wait for each other for ever; and a process that stops with an error
alone leaves the others waiting in the next collective until JAX's heartbeat aborts them. :func:`check`
(config and workdir, before anything is read), :func:`together` (a start-up step that may fail on one
process) and :func:`check_data` (what each process read) turn each of these into an error on every
process.
"""

from __future__ import annotations

import json
import pathlib
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jaxgan import checkpoint
from jaxgan.data.transforms import OWN_SIZE_MODES
from jaxgan.parallel import ParallelError

T = TypeVar("T")
SEE_WAIT_S = 10.0  # how long a process looks for process 0's marker file (network filesystems lag)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _from_process_0(text: str) -> str:
    """Process 0's ``text``, on every process (the others' ``text`` is ignored)."""
    data = np.frombuffer(text.encode(), np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
    mine = data if jax.process_index() == 0 else np.zeros(size, np.uint8)
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(mine))).decode()


def config_differences(mine: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """``"field: value here, value on process 0"`` for every flattened field where two configs differ."""
    a, b = _flat(mine), _flat(reference)
    return [f"{k}: {a.get(k, '(absent)')!r} here, {b.get(k, '(absent)')!r} on process 0"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]  # fmt: skip


def _differences_from_process_0(mine: dict[str, Any]) -> list[str]:
    """:func:`config_differences` of this process's ``mine`` against process 0's (a collective)."""
    return config_differences(mine, json.loads(_from_process_0(json.dumps(mine, sort_keys=True))))


def _sees(marker: pathlib.Path, token: str) -> bool:
    deadline = time.monotonic() + SEE_WAIT_S
    while True:
        try:
            if marker.read_text() == token:
                return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def _processes_with(count: int) -> list[int]:
    """The indices of the processes whose ``count`` is not 0 (a collective: every process must call it)."""
    counts = np.asarray(multihost_utils.process_allgather(np.asarray(count, np.int32))).reshape(-1)
    return [int(i) for i in np.flatnonzero(counts)]


def check(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    """With several processes: every one has process 0's config and sees files process 0 writes in ``workdir``.

    Call it on every process at the same point, first. Process 0 creates ``workdir``. Raises
    :class:`ParallelError` on every process when any of them disagrees (each names its own difference).
    """
    if jax.process_count() == 1:
        return
    mine = checkpoint.config_to_dict(config)  # JSON types: tuples are lists on every process alike
    differences = _differences_from_process_0(mine)
    token, unwritable = secrets.token_hex(8), None
    if jax.process_index() == 0:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / f".peers-{token}").write_text(token)
        except OSError as e:
            unwritable = e
    # Broadcast after the write: no process looks the marker up before it exists (an NFS client would
    # remember the miss for up to a minute).
    token = _from_process_0(token)
    marker = workdir / f".peers-{token}"
    blind = _processes_with(int(unwritable is None and not _sees(marker, token)))
    other_config = _processes_with(len(differences))
    if jax.process_index() == 0:
        marker.unlink(missing_ok=True)
    problems = []
    if other_config:
        here = f" Here: {'; '.join(differences)}." if differences else ""
        problems.append(f"process(es) {other_config} were started with another config than process 0: start every "
                        f"process with the same --config and --config.FIELD overrides.{here}")  # fmt: skip
    if unwritable is not None:
        problems.append(f"process 0 cannot write in --workdir {workdir}: {unwritable}")
    elif blind:
        problems.append(f"process(es) {blind} do not see the files process 0 writes in --workdir {workdir}: every "
                        "process needs the same shared folder (a network filesystem or a bucket mount, not a "
                        "node-local disk).")  # fmt: skip
    if problems:
        raise ParallelError(" ".join(problems))


def together(step: Callable[[], T]) -> T:
    """``step()`` on every process; when it raises on any of them, every process raises.

    The process that failed raises its own exception; the others a :class:`ParallelError` naming it,
    instead of waiting for it in the next collective.
    """
    if jax.process_count() == 1:
        return step()
    try:
        result, error = step(), None
    except Exception as e:  # noqa: BLE001 - re-raised below, after the peers know
        result, error = None, e
    failed = _processes_with(int(error is not None))
    if error is not None:
        raise error
    if failed:
        raise ParallelError(f"process(es) {failed} stopped with an error during start-up (see their output).")
    return result


DATA_FIELDS = ("steps_per_epoch", "image_shape")  # what resolve_config takes from the data each process read


def check_data(config: ml_collections.ConfigDict) -> None:
    """With several processes: every one read a data set of process 0's size and image shape."""
    if jax.process_count() == 1:
        return
    mine = checkpoint.config_to_dict({k: config.get(k) for k in DATA_FIELDS})
    differences = _differences_from_process_0(mine)
    other_data = _processes_with(len(differences))
    if other_data:  # every process agrees on it: the collective below runs on all or none
        sized = _processes_with(int(bool(differences) and all(d.startswith("image_shape:") for d in differences)))
        own_size = sized == other_data and str(config.get("preprocess", "")) in OWN_SIZE_MODES
        raise ParallelError(data_mismatch(other_data, differences, config.get("preprocess") if own_size else None))


def data_mismatch(processes: list[int], differences: list[str], own_size_mode: str | None) -> str:
    """The message of :func:`check_data` for ``processes`` whose data differ; ``differences`` are this process's.

    ``own_size_mode``: the preprocess when it keeps each image's own size and the processes differ only in that
    size. Each process checked only the images it decoded (its share), so that is a data set of mixed sizes,
    not copies that differ.
    """
    here = f" Here: {'; '.join(differences)}." if differences else ""
    if own_size_mode is not None:
        return (f"process(es) {processes} read images of another size than process 0: preprocess="
                f"{own_size_mode!r} keeps each image's own size, so every image of both domains must have the same "
                "size (each process checks only the share it decodes); resize them, or use "
                f"preprocess='resize_and_crop' or 'scale_width_and_crop'.{here}")  # fmt: skip
    return (f"process(es) {processes} read other data than process 0: every process must read "
            f"the same data set (per-node copies must be identical).{here}")  # fmt: skip
