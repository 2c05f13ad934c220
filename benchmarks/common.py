"""Shared pieces of the benchmark scripts: timing, memory, FLOP counts, device peaks.

Everything here is plain Python/NumPy; JAX and torch are imported by the scripts.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# Dense peak FLOP/s per chip by device kind and compute dtype (vendor datasheets, no sparsity).
# float32 on NVIDIA is the non-tensor-core FP32 rate; tfloat32 the TF32 tensor-core rate, which XLA
# uses for float32 convolutions and matmuls at JAX's default precision.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "NVIDIA H100 80GB HBM3": {"bfloat16": 989.4e12, "tfloat32": 494.7e12, "float32": 66.9e12},  # SXM
    "NVIDIA H100 PCIe": {"bfloat16": 756.5e12, "tfloat32": 378e12, "float32": 51.2e12},
    "NVIDIA H100 NVL": {"bfloat16": 835.5e12, "tfloat32": 417.5e12, "float32": 60.0e12},
    "NVIDIA H200": {"bfloat16": 989.4e12, "tfloat32": 494.7e12, "float32": 66.9e12},
    "NVIDIA A100-SXM4-80GB": {"bfloat16": 312e12, "tfloat32": 156e12, "float32": 19.5e12},
    "NVIDIA A100-SXM4-40GB": {"bfloat16": 312e12, "tfloat32": 156e12, "float32": 19.5e12},
    "NVIDIA A100-PCIE-40GB": {"bfloat16": 312e12, "tfloat32": 156e12, "float32": 19.5e12},
    "NVIDIA A100 80GB PCIe": {"bfloat16": 312e12, "tfloat32": 156e12, "float32": 19.5e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12 / 2},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12 / 2},
    "TPU v5e": {"bfloat16": 197e12, "float32": 197e12 / 2},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12 / 2},
    "TPU v6 lite": {"bfloat16": 918e12, "float32": 918e12 / 2},
    "TPU v6e": {"bfloat16": 918e12, "float32": 918e12 / 2},
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a child's server or coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_devices_env(devices: int = 1) -> dict[str, str]:
    """This process's environment for a subprocess on ``devices`` CPU devices, with this process's ``XLA_FLAGS``."""
    flags = os.environ.get("XLA_FLAGS", "")
    if devices > 1:
        flags = f"{flags} --xla_force_host_platform_device_count={devices}"
    return {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"}


def local_job(workdirs: Sequence[str | os.PathLike], *flags: str, per_process: Sequence[Sequence[str]] | None = None,
              env: Sequence[dict[str, str]] | None = None, launch: Sequence[str] = ("-m", "experiments.horse2zebra"),
              stdout: Any = subprocess.PIPE) -> list[subprocess.Popen]:  # fmt: skip
    """The training command with the tiny config (global batch 2 per process) as processes 0 .. n-1 of one job on
    this machine, one per ``workdirs[i]``, each on 2 CPU devices, with a fresh coordinator port.

    ``flags`` go to every process, ``per_process[i]`` and ``env[i]`` to process i alone; ``launch`` replaces
    ``-m experiments.horse2zebra`` (e.g. ``-c CODE`` that patches something, then runs it). The processes inherit
    this one's environment and ``XLA_FLAGS``. Returns their ``Popen``s, stdout and stderr merged into one text pipe
    each, or into ``stdout`` (a file) for all. (The multi-process tests, ``peer_faults`` and ``healthy_jobs``.)
    """
    n = len(workdirs)
    per_process, env = per_process or [()] * n, env or [{}] * n
    base_env = cpu_devices_env(2)
    cmd = [sys.executable, *launch, "--config=experiments/configs/horse2zebra.py:tiny", f"--config.batch_size={2 * n}",
           "--config.results_max_images=2", f"--coordinator_address=127.0.0.1:{free_port()}", f"--num_processes={n}",
           *flags]  # fmt: skip
    return [subprocess.Popen([*cmd, f"--workdir={workdirs[i]}", f"--process_id={i}", *per_process[i]], cwd=ROOT,
                             env={**base_env, **env[i]}, stdout=stdout, stderr=subprocess.STDOUT, text=True)
            for i in range(n)]  # fmt: skip


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """Datasheet peak FLOP/s for ``device_kind`` (``jax.Device.device_kind``), or None if unknown.

    Matches exactly, then by prefix (``"NVIDIA H200 NVL"`` -> ``"NVIDIA H200"``).
    """
    table = PEAK_FLOPS.get(device_kind)
    if table is None:
        for kind, t in PEAK_FLOPS.items():
            if device_kind.startswith(kind) or kind.startswith(device_kind):
                table = t
                break
    return None if table is None else table.get(dtype)


def measured_cpu_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """An empirical CPU peak: best float32 FLOP/s of an ``n x n`` NumPy matmul (BLAS, all cores).

    CPUs have no useful datasheet peak for this purpose (turbo, AVX-512 clocks,
    shared cores); the BLAS GEMM rate is what a convolution could reach at best.
    """
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


# ---------------------------------------------------------------------------------------------
# Memory.


def reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark (Linux ``clear_refs`` 5); False if unsupported."""
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb(pid: int | None = None) -> float:
    """Peak resident set size in MiB since start or the last :func:`reset_peak_rss` (``VmHWM``).

    ``pid``: another process (Linux /proc only; NaN where it cannot be read); default this one.
    """
    try:
        with open(f"/proc/{pid or os.getpid()}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    if pid is not None:
        return float("nan")
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if platform.system() != "Darwin" else kb / 2**20


# XLA:CPU allocates a train step's temporaries (671 MB at 128x128) as one block per execution. glibc
# serves blocks above 32 MB with a fresh mmap() and unmaps them on free, so every step touches new
# pages: about 172,000 minor page faults and 0.3 s of kernel time per step at 128x128 on the 2-core
# machine, where the PyTorch replica (which reuses its memory) has none. Two glibc settings change
# that (glibc reads them at process start, hence the re-exec):
MALLOC_MODES: dict[str, dict[str, str]] = {
    # One arena, no mmap, no trimming: the memory is reused and the faults disappear, but with all
    # threads on one arena the step measured no faster.
    "retain": {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**46)},
    # Transparent huge pages for malloc's memory (glibc >= 2.35, THP mode 'madvise' or 'always'):
    # 2 MB pages, so ~700 faults instead of 172,000 and fewer TLB misses.
    "hugepages": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
}


def add_step_memory_argument(parser: argparse.ArgumentParser) -> None:
    """``--step-memory reuse|default``: whether the process runs as the training and translation entry points do."""
    parser.add_argument(
        "--step-memory",
        choices=["reuse", "default"],
        default="reuse",
        help="'reuse' (as `python -m experiments.horse2zebra` and `jaxgan-translate` run): "
        "jaxgan.cpu_memory.reuse_step_memory() before JAX starts (CPU only: glibc keeps freed memory, synchronous "
        "dispatch; applies to every implementation in the process); 'default': glibc's and JAX's defaults",
    )


def apply_step_memory(choice: str) -> str:
    """Apply ``--step-memory``; returns what the process really runs under ('default' where it did not apply)."""
    if choice != "reuse":
        return "default"
    from jaxgan import cpu_memory

    return "reuse" if cpu_memory.reuse_step_memory() else "default"


def reexec_with_malloc(mode: str, module: str, argv: list[str]) -> None:
    """Re-run ``python -m module argv`` under ``MALLOC_MODES[mode]`` unless this process already runs so."""
    env = MALLOC_MODES[mode]
    if all(os.environ.get(k) == v for k, v in env.items()):
        return
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], {**os.environ, **env})


def malloc_mode() -> str:
    """The :data:`MALLOC_MODES` entry this process runs under, else 'default'."""
    for mode, env in MALLOC_MODES.items():
        if all(os.environ.get(k) == v for k, v in env.items()):
            return mode
    return "default"


# ---------------------------------------------------------------------------------------------
# Timing.


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    warmup: int,
    iters: int,
    kernel_stats: dict[str, dict[str, float]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each zero-argument ``fn``, interleaved round by round.

    Every function is warmed up ``warmup`` times; then each round calls every
    function once, alternating the order between rounds, so that load from
    other processes on a shared machine hits all implementations alike. Each
    ``fn`` must block until its work is done.

    If ``kernel_stats`` is a dict, it receives per name the median over calls of
    the process's minor page faults (``minor_faults_per_call``) and kernel CPU
    seconds (``kernel_s_per_call``) during the call: memory that an
    implementation maps afresh on every call shows up there.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    faults: dict[str, list[float]] = {k: [] for k in names}
    kernel: dict[str, list[float]] = {k: [] for k in names}
    for r in range(iters):
        for name in names if r % 2 == 0 else reversed(names):
            before = resource.getrusage(resource.RUSAGE_SELF)
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_SELF)
            faults[name].append(after.ru_minflt - before.ru_minflt)
            kernel[name].append(after.ru_stime - before.ru_stime)
    if kernel_stats is not None:
        for name in names:
            kernel_stats[name] = {
                "minor_faults_per_call": statistics.median(faults[name]),
                "kernel_s_per_call": round(statistics.median(kernel[name]), 3),
            }
    return times


def summarize(times: list[float]) -> dict[str, float]:
    """Median and min in ms."""
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times)}


def case_record(
    impl: str,
    size: int,
    batch: int,
    dtype: str,
    times: list[float],
    flops_xla: float | None,
    flops_analytic: float,
    **extra: Any,
) -> dict[str, Any]:
    """One JSON-able result line: timing summary plus throughput."""
    s = summarize(times)
    rec: dict[str, Any] = {"impl": impl, "size": size, "batch": batch, "dtype": dtype}
    rec.update({k: round(v, 2) for k, v in s.items()})
    rec["iters"] = len(times)
    rec["images_per_s"] = round(batch / (s["median_ms"] / 1e3), 3)
    rec["flops_xla"] = flops_xla
    rec["flops_analytic"] = flops_analytic
    rec.update(extra)
    return rec


# ---------------------------------------------------------------------------------------------
# Analytic FLOPs: multiply-adds of the convolutions (2 FLOPs each); elementwise work not counted.


def generator_layer_macs(size: int, ngf: int = 64, n_blocks: int = 9) -> list[int]:
    """Forward MACs per conv layer of the ResNet generator on one ``size x size`` image, in order.

    Transposed convs count their 9 real taps per input pixel.
    """
    s, s2, s4 = size, size // 2, size // 4
    macs = [s * s * 49 * 3 * ngf, s2 * s2 * 9 * ngf * 2 * ngf, s4 * s4 * 9 * 2 * ngf * 4 * ngf]
    macs += [s4 * s4 * 9 * (4 * ngf) ** 2] * (2 * n_blocks)
    macs += [s4 * s4 * 9 * 4 * ngf * 2 * ngf, s2 * s2 * 9 * 2 * ngf * ngf, s * s * 49 * ngf * 3]
    return macs


def discriminator_layer_macs(size: int, ndf: int = 64, n_layers: int = 3) -> list[int]:
    """Forward MACs per conv layer of the PatchGAN (4x4 kernels, padding 1) on one image."""
    macs, s, c_in = [], size, 3
    chans = [ndf] + [ndf * min(2**n, 8) for n in range(1, n_layers + 1)] + [1]
    for i, c_out in enumerate(chans):
        stride = 2 if i < n_layers else 1
        s = (s + 2 - 4) // stride + 1
        macs.append(s * s * 16 * c_in * c_out)
        c_in = c_out
    return macs


def step_conv_flops(size: int, batch: int, ngf: int = 64, ndf: int = 64, n_blocks: int = 9) -> int:
    """Convolution FLOPs of one CycleGAN iteration with identity loss, as the official code computes it.

    Generators: 6 forwards per image (G(A), G(B) identity, F(G(A)), F(B), F(A)
    identity, G(F(B))); backward = weight gradients of every layer plus input
    gradients of every layer except the first where the input is a real image
    (4 of the 6). Discriminators in the generator loss: 2 forwards + input
    gradients, no weight gradients. Discriminator update: 4 forwards + weight
    gradients + input gradients of all but the first layer.
    """
    g, d = generator_layer_macs(size, ngf, n_blocks), discriminator_layer_macs(size, ndf)
    gf, df = sum(g), sum(d)
    g_macs = 6 * gf + 6 * gf + (6 * gf - 4 * g[0])
    d_macs = 2 * (df + df) + 4 * (df + df + df - d[0])
    return 2 * batch * (g_macs + d_macs)


# ---------------------------------------------------------------------------------------------
# The device suite's timing.


def throughput(call: Callable[[], Any], block: Callable[[Any], None], target_s: float, rounds: int) -> dict:
    """ms per call of ``call`` dispatched back to back; ``block(result)`` waits for the last one of a round.

    Two warm-up calls; then ``iters`` (so that a round lasts about ``target_s``, 2..50)
    calls per round, ``rounds`` rounds; the median round's mean.
    """
    for _ in range(2):
        block(call())
    t = time.perf_counter()
    block(call())
    one = time.perf_counter() - t
    iters = max(2, min(50, round(target_s / max(one, 1e-6))))
    means = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(iters):
            out = call()
        block(out)
        means.append((time.perf_counter() - t) / iters)
    return {"ms": round(1e3 * statistics.median(means), 3), "iters": iters, "rounds": rounds}


def compile_all(lowered: dict[Any, Any], workers: int = 4) -> dict[Any, Any]:
    """``{key: compiled or Exception}``: XLA compilations in parallel threads (they release the GIL)."""

    def one(item: tuple[Any, Any]) -> tuple[Any, Any]:
        key, low = item
        try:
            return key, low.compile()
        except Exception as e:  # noqa: BLE001 - recorded per case
            return key, e

    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        return dict(pool.map(one, lowered.items()))


def error_text(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters), for a report's error field."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"
