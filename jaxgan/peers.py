"""The processes of a multi-process run must agree: one config, one workdir that all of them see.

Neither is visible to JAX. Peers given different configs either train silently apart (another learning
rate: the "replicated" parameters drift between processes) or abort in a collective with a message about
data sizes; peers whose ``--workdir`` is not one shared folder (node-local disks) fail at the first
checkpoint and then wait for each other for ever. :func:`check` finds both at start-up, once each process
has read its share of the data and before anything is compiled or saved, and stops every process with a
:class:`parallel.ParallelError`.
"""

from __future__ import annotations

import json
import pathlib
import secrets
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jaxgan import checkpoint
from jaxgan.parallel import ParallelError

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


def check(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    """With several processes: every one has process 0's config and sees files process 0 writes in ``workdir``.

    Call it on every process at the same point. Process 0 must have created ``workdir``. Raises
    :class:`ParallelError` on every process when any of them disagrees (each names its own difference).
    """
    if jax.process_count() == 1:
        return
    mine = checkpoint.config_to_dict(config)  # JSON types: tuples are lists on every process alike
    differences = config_differences(mine, json.loads(_from_process_0(json.dumps(mine, sort_keys=True))))
    token = _from_process_0(secrets.token_hex(8) if jax.process_index() == 0 else "")
    marker = workdir / f".peers-{token}"
    if jax.process_index() == 0:
        marker.write_text(token)
    sees = _sees(marker, token)  # retried: process 0 writes it only after the broadcast
    found = multihost_utils.process_allgather(np.asarray([len(differences), int(sees)], np.int32))
    if jax.process_index() == 0:
        marker.unlink(missing_ok=True)
    found = np.asarray(found).reshape(jax.process_count(), 2)
    other_config = [i for i in range(len(found)) if found[i, 0]]
    blind = [i for i in range(len(found)) if not found[i, 1]]
    problems = []
    if other_config:
        here = f" Here: {'; '.join(differences)}." if differences else ""
        problems.append(f"process(es) {other_config} were started with another config than process 0: start every "
                        f"process with the same --config and --config.FIELD overrides.{here}")  # fmt: skip
    if blind:
        problems.append(f"process(es) {blind} do not see the files process 0 writes in --workdir {workdir}: every "
                        "process needs the same shared folder (a network filesystem or a bucket mount, not a "
                        "node-local disk).")  # fmt: skip
    if problems:
        raise ParallelError(" ".join(problems))
