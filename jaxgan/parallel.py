"""SPMD data parallelism: the device mesh, shardings, multi-host start-up, the sharded step.

One code path for every scale: a ``Mesh`` over all devices of all processes
with a ``data`` axis (1 CPU is a mesh of one). The global batch is sharded
along ``data``; the ``TrainState`` is replicated, except where
``config.partition_rules`` (regex on the parameter path -> PartitionSpec over
mesh axes) shards a tensor — the hook for a later model-parallel axis, e.g.
``mesh_shape=(-1, 2), mesh_axes=("data", "model")`` with
``partition_rules=((r"res_\\d+/conv_\\d/kernel", (None, None, None, "model")),)``.
The jitted step gets explicit in/out shardings, so XLA inserts the gradient
all-reduce; instance norm is per sample and needs no cross-device statistics.
The image pools are replicated: one global pool visited in global-batch order,
so training is the same on any device count (see ``jaxgan.pool``).
"""

from __future__ import annotations

import collections
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgan import conv_forms, cpu_memory, train

PyTree = Any
DATA_AXIS = "data"
log = logging.getLogger(__name__)


class ParallelError(ValueError):
    """A configuration that cannot run on the devices present (clear, actionable message)."""


JOIN_TIMEOUT_S = 300  # how long a process waits for all of its peers to join (JAX's own default)
PEER_TIMEOUT_S = 100  # JAX's heartbeat: a process silent this long is taken as dead, and the job ends (JAX's default)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = JOIN_TIMEOUT_S,
    peer_timeout_s: int = PEER_TIMEOUT_S,
) -> bool:
    """Join a multi-process JAX job when asked to; returns True when distributed.

    Explicit arguments win. Without them, ``jax.distributed.initialize()`` is
    called when the environment describes a cluster that JAX detects on its own
    (SLURM with more than one task, Cloud TPU pod slices, Kubernetes/JAX
    environment variables); a single plain process is left alone. Must run
    before any other JAX call that touches devices. A process whose peers have
    not all joined within ``timeout_s`` seconds exits with status 2 and one
    error line (see :func:`_join`). A process that stops sending JAX's heartbeats for ``peer_timeout_s``
    seconds (killed, a lost host) is taken as dead and JAX ends every process; the training command's
    ``peer_failure.Watch`` ends them earlier, with one line (a lost host: unless ``--nopeer_beats``; see
    ``jaxgan.liveness``).
    """
    if timeout_s < 1:
        raise ParallelError(f"--distributed_timeout must be at least 1 second, got {timeout_s}.")
    if peer_timeout_s < 10:  # shorter: a loaded host misses heartbeats, and it would cut peer_failure's wait short
        raise ParallelError(f"--peer_timeout must be at least 10 seconds, got {peer_timeout_s}.")
    if process_id and not (coordinator_address or (num_processes and num_processes > 1)):
        raise ParallelError(f"--process_id={process_id} needs --coordinator_address and --num_processes; alone it "
                            "would train as a single process.")  # fmt: skip
    if coordinator_address or (num_processes and num_processes > 1):
        if not (coordinator_address and num_processes and process_id is not None):
            raise ParallelError(
                "Multi-process start needs all of --coordinator_address, --num_processes and --process_id "
                f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r})."
            )
        if not 0 <= process_id < num_processes:
            raise ParallelError(f"--process_id must be in 0..{num_processes - 1} for --num_processes={num_processes}, "
                                f"got {process_id}.")  # fmt: skip
        who = f"process {process_id} of {num_processes} (coordinator {coordinator_address})"
        hint = ("Start all of them with the same --coordinator_address and --num_processes and a distinct "
                "--process_id each, check that the coordinator's host:port is reachable from every host")  # fmt: skip
        _join(who, hint, timeout_s, peer_timeout_s, coordinator_address=coordinator_address,
              num_processes=num_processes, process_id=process_id)  # fmt: skip
        return True
    env = os.environ
    slurm = int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env
    tpu_pod = bool(env.get("TPU_WORKER_HOSTNAMES", "").count(",")) or bool(env.get("MEGASCALE_COORDINATOR_ADDRESS"))
    explicit_env = "JAX_COORDINATOR_ADDRESS" in env
    if slurm or tpu_pod or explicit_env:
        where = "SLURM" if slurm else "the TPU pod slice" if tpu_pod else "JAX_COORDINATOR_ADDRESS"
        hint = f"Check that every process of the job started (their list comes from {where})"
        _join(f"this process (peers from {where})", hint, timeout_s, peer_timeout_s)
        return True
    return False


def _join(who: str, hint: str, timeout_s: int, peer_timeout_s: int, **kwargs: Any) -> None:
    """``jax.distributed.initialize(**kwargs)``, bounded by a watchdog.

    When peers do not join, JAX aborts the process after its ``initialization_timeout`` with a C++
    check failure and a native stack trace. The watchdog fires first (JAX is given a minute more):
    it prints ``hint`` (what to check) on stderr and ends the process with status 2. Nothing has been
    computed or written yet at this point, so nothing is lost.
    """
    print(f"jaxgan: {who}: joining; waits up to {timeout_s} s for every process", file=sys.stderr, flush=True)

    def give_up() -> None:
        print(f"error: {who}: not every process joined within {timeout_s} s. {hint}, or wait longer "
              "with --distributed_timeout.", file=sys.stderr, flush=True)  # fmt: skip
        os._exit(2)  # JAX's connect holds the main thread; an exception could not reach it

    watchdog = threading.Timer(timeout_s, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=timeout_s + 60,
                                   heartbeat_timeout_seconds=peer_timeout_s)  # fmt: skip
    finally:
        watchdog.cancel()


def make_mesh(
    mesh_shape: Sequence[int] = (-1,), mesh_axes: Sequence[str] = (DATA_AXIS,), devices: Sequence[Any] | None = None
) -> Mesh:
    """A mesh over ``devices`` (default ``jax.devices()``: every process); one ``-1`` entry takes the rest."""
    devices = list(jax.devices() if devices is None else devices)
    shape = list(mesh_shape)
    if len(shape) != len(mesh_axes):
        raise ParallelError(f"mesh_shape {tuple(mesh_shape)} and mesh_axes {tuple(mesh_axes)} differ in length.")
    if shape.count(-1) > 1:
        raise ParallelError(f"mesh_shape {tuple(mesh_shape)} may hold at most one -1.")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        shape[shape.index(-1)] = len(devices) // max(known, 1)
    if int(np.prod(shape)) != len(devices):
        raise ParallelError(f"mesh_shape {tuple(mesh_shape)} does not cover the {len(devices)} devices present.")
    if DATA_AXIS not in mesh_axes:
        raise ParallelError(f"mesh_axes must contain {DATA_AXIS!r}, got {tuple(mesh_axes)}.")
    if len(set(mesh_axes)) != len(mesh_axes):
        raise ParallelError(f"mesh_axes must be distinct names, got {tuple(mesh_axes)}.")
    # Auto axes: shardings are given at the jit boundary and XLA propagates them inside
    # (jax >= 0.9 makes Explicit axes the default of make_mesh).
    auto = (jax.sharding.AxisType.Auto,) * len(shape)
    return jax.make_mesh(tuple(shape), tuple(mesh_axes), axis_types=auto, devices=devices)


GLOO_CONNECT_S = 30  # XLA:CPU's Gloo: how long a device group's first collective waits for every process (fixed)


def connect_collectives(mesh: Mesh) -> None:
    """Connect the CPU collectives of ``mesh``'s device groups now, while every process is here.

    On CPU, XLA's Gloo collectives connect a group of devices at the group's first collective, and that
    connection waits at most :data:`GLOO_CONNECT_S` for the other processes (fixed inside XLA). The train
    step's first collective comes after its compilation, which can end minutes apart on a loaded or slower
    host: with process 1 of 2 reaching its first step 35 s late, both failed there with "Gloo context
    initialization failed" (DEADLINE_EXCEEDED, or Connect timeout) and a traceback (jax 0.10.2 and 0.11.2).
    Once connected, a group's collectives wait for a late process as long as it takes (100 s measured).

    So every process calls this right after a point where all of them are together (``peers.check``): one
    all-reduce over every device and one over each axis of a mesh of several, the groups that the step's
    gradient and metric reductions use. Its result is checked. Does nothing with one process, or off CPU (NCCL
    and TPU collectives are not Gloo). Raises :class:`ParallelError` when the processes cannot connect.
    """
    if jax.process_count() == 1 or mesh.devices.flat[0].platform != "cpu":
        return
    names = tuple(mesh.axis_names)
    groups = [names, *((a,) for a in names)] if len(names) > 1 else [names]
    spec = P(names)  # one element per device
    sums = jax.jit(jax.shard_map(lambda x: tuple(jax.lax.psum(x, g) for g in groups), mesh=mesh, in_specs=spec,
                                 out_specs=(spec,) * len(groups)))  # fmt: skip
    ones = jax.make_array_from_callback((mesh.devices.size,), NamedSharding(mesh, spec),
                                        lambda index: np.ones(mesh.devices.size, np.float32)[index])  # fmt: skip
    try:
        got = [float(np.asarray(out.addressable_data(0))[0]) for out in sums(ones)]
    except jax.errors.JaxRuntimeError as e:
        raise ParallelError(
            f"process {jax.process_index()}: the processes could not connect their CPU collectives (Gloo) within "
            f"{GLOO_CONNECT_S} s ({str(e).splitlines()[0][:300]}). Gloo connects the hosts directly, on ports of "
            "its own: check that they can reach each other on any TCP port (no firewall between them)."
        ) from None
    want = [float(np.prod([mesh.shape[a] for a in g])) for g in groups]
    if got != want:
        raise ParallelError(f"the CPU collectives' first sums over the mesh's devices gave {got}, not {want}.")


def mesh_from_config(config: Any) -> Mesh:
    return make_mesh(tuple(config.get("mesh_shape", (-1,))), tuple(config.get("mesh_axes", (DATA_AXIS,))))


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the ``data`` axis."""
    n = mesh.shape[DATA_AXIS]
    if global_batch % n:
        raise ParallelError(
            f"config.batch_size={global_batch} is the global batch and must be divisible by the {n} devices "
            f"of the mesh's data axis; use e.g. --config.batch_size={n * max(1, round(global_batch / n))}, "
            "or make fewer devices visible (e.g. CUDA_VISIBLE_DEVICES=0 for one GPU)."
        )


def _path_str(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def partition_specs(
    state: PyTree, mesh_shape: dict[str, int], partition_rules: Sequence[tuple[str, Sequence[str | None]]] = ()
) -> PyTree:
    """A ``PartitionSpec`` per leaf of ``state``: ``P()`` (replicated) unless a rule matches its path.

    Rules are ``(regex, spec)``; the first regex that ``re.search``-es the leaf's
    path (e.g. ``params/g_ab/res_3/conv_0/kernel``, also the matching Adam
    moments ``opt_state/g_ab/0/mu/res_3/conv_0/kernel``) and whose spec has the leaf's rank gives its
    spec. ``mesh_shape``: axis name -> size. A rule naming an axis the mesh lacks, or splitting a dimension
    its axes do not divide, is a :class:`ParallelError`; a rule that shards nothing is logged as a warning.
    """

    def axes(entry: str | Sequence[str] | None) -> tuple[str, ...]:
        return (entry,) if isinstance(entry, str) else tuple(entry or ())

    compiled = []
    for rx, spec in partition_rules:
        named = [a for entry in spec for a in axes(entry)]
        unknown = [a for a in named if a not in mesh_shape]
        if unknown:
            raise ParallelError(f"partition rule {rx!r}: axis {unknown[0]!r} is not in the mesh {dict(mesh_shape)} "
                                "(config.mesh_axes names the axes).")  # fmt: skip
        twice = sorted({a for a in named if named.count(a) > 1})
        if twice:
            raise ParallelError(f"partition rule {rx!r} names the mesh axis {twice[0]!r} more than once; an axis "
                                "can split one dimension only.")  # fmt: skip
        compiled.append((rx, re.compile(rx), P(*spec)))
    used: collections.Counter = collections.Counter()

    def leaf_spec(path: tuple, leaf: Any) -> P:
        name = _path_str(path)
        for rx, pattern, spec in compiled:
            if pattern.search(name) and len(spec) == np.ndim(leaf):
                for dim, entry in zip(np.shape(leaf), spec, strict=True):
                    ways = int(np.prod([mesh_shape[a] for a in axes(entry)]))
                    if dim % ways:
                        raise ParallelError(f"partition rule {rx!r} splits {name} {tuple(np.shape(leaf))} as {spec}: "
                                            f"its dimension of {dim} does not divide into {ways}.")  # fmt: skip
                used[rx] += 1
                return spec
        return P()

    specs = jax.tree_util.tree_map_with_path(leaf_spec, state)
    for rx, _, spec in compiled:
        if not used[rx]:
            log.warning("partition rule %r shards nothing: no parameter path matches it with rank %d", rx, len(spec))
    return specs


def state_sharding(
    state: PyTree, mesh: Mesh, partition_rules: Sequence[tuple[str, Sequence[str | None]]] = ()
) -> PyTree:
    """A ``NamedSharding`` per leaf of ``state``, as :func:`partition_specs` lays it out on ``mesh``."""
    specs = partition_specs(state, dict(mesh.shape), partition_rules)
    return jax.tree_util.tree_map(lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Images ``[B, H, W, C]`` split along B over the ``data`` axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def shard_state(state: PyTree, shardings: PyTree) -> PyTree:
    """Place a (host or single-device) state onto the mesh."""
    return jax.device_put(state, shardings)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's part of the batch -> a global array sharded along ``data``."""
    sharding = batch_sharding(mesh)
    return cpu_memory.settle({k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()})


def prefetch_to_mesh(
    batches: Iterator[dict[str, np.ndarray]], mesh: Mesh, depth: int = 2
) -> Iterator[dict[str, jax.Array]]:
    """:func:`global_batch` of each host batch, started ``depth`` batches ahead of the one yielded.

    When step ``i`` is dispatched, the copies of batches ``i + 1 .. i + depth``
    are already under way, so the device never waits for the host's transfer
    (the copies are asynchronous on accelerators; on CPU see ``cpu_memory.settle``).
    """
    ahead: collections.deque[dict[str, jax.Array]] = collections.deque()
    try:
        for batch in batches:
            ahead.append(global_batch(batch, mesh))
            if len(ahead) > depth:
                yield ahead.popleft()
        while ahead:
            yield ahead.popleft()
    finally:  # closing this iterator closes the host one (and stops its thread)
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def make_train_step(
    state_shardings: PyTree, mesh: Mesh
) -> Callable[[train.TrainState, dict[str, jax.Array]], tuple[train.TrainState, dict[str, jax.Array]]]:
    """``train_step_fn`` compiled for the mesh: state in/out with ``state_shardings``, batch on ``data``."""
    replicated = NamedSharding(mesh, P())
    platform = mesh.devices.flat[0].platform
    return jax.jit(
        train.train_step_fn,
        in_shardings=(state_shardings, batch_sharding(mesh)),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
        compiler_options=conv_forms.xla_compiler_options(state_shardings.config.remat, platform),
    )


def state_layout(config: Any, mesh: Mesh) -> tuple[jax.Array, PyTree, PyTree]:
    """(initial rng, per-leaf shardings, abstract sharded target for restoring) of a run's ``TrainState``."""
    rng = jax.random.PRNGKey(int(config.seed))
    abstract = jax.eval_shape(lambda: train.create_train_state(config, rng))
    shardings = state_sharding(abstract, mesh, tuple(config.get("partition_rules", ())))
    target = jax.tree_util.tree_map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract, shardings
    )
    return rng, shardings, target


def describe(mesh: Mesh) -> str:
    """One line for the log: processes, devices, mesh shape."""
    kinds = sorted({d.device_kind for d in mesh.devices.flat})
    return (
        f"{jax.process_count()} process(es), {mesh.devices.size} device(s) [{', '.join(kinds)}], "
        f"mesh {dict(mesh.shape)}"
    )
