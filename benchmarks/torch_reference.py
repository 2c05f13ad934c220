"""A PyTorch replica of the official CycleGAN training iteration, timed like the JAX step.

The networks are ``benchmarks.torch_replica`` (ResNet-9 generator, 70x70 PatchGAN,
non-affine instance norm, reflection padding), the same modules that
tests/test_interop.py checks against ``jaxgan.models``; the iteration is the one of
``models/cycle_gan_model.py``: G forward (fake, reconstruction, identity), one
backward of the summed generator loss, one Adam step over both generators; then
the discriminators on real images and pooled fakes (50-image history pool), one
backward, one Adam step over both discriminators. Eager PyTorch, NCHW, as the
official code runs.

torch is an optional dependency (``pip install -e ".[bench]"``); this module
imports it lazily and :func:`available` says whether it is there.

Usage (alone; ``benchmarks.train_step --compare-torch`` runs it interleaved with JAX)::

  python -m benchmarks.torch_reference --sizes 128 --batch 1
  python -m benchmarks.torch_reference --device cuda --modes official strong compiled --sizes 256 --batch 1 4 16
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from benchmarks import common


def available() -> bool:
    """True when torch can be imported."""
    return importlib.util.find_spec("torch") is not None


class ImagePool:
    """The official ``util/image_pool.py`` (Python ``random``): 50 past fakes, each query swaps with p = 0.5."""

    def __init__(self, size: int) -> None:
        self.size, self.images = size, []

    def query(self, images: Any) -> Any:
        import torch

        if self.size == 0:
            return images
        out = []
        for image in images:
            image = image.data.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif random.uniform(0, 1) > 0.5:
                idx = random.randint(0, self.size - 1)
                out.append(self.images[idx].clone())
                self.images[idx] = image
            else:
                out.append(image)
        return torch.cat(out, 0)


# How a PyTorch user runs the iteration on a GPU:
#   official: as the official code (eager, float32 with PyTorch's default TF32 convolutions, NCHW,
#             cudnn.benchmark on, as its BaseModel sets it for every preprocess but scale_width, the
#             default Adam);
#   strong:   AMP bfloat16 autocast, channels_last, cudnn.benchmark, fused Adam;
#   compiled: strong, and each network through torch.compile.
MODES = ("official", "strong", "compiled")


class CycleGANIteration:
    """Holds G_A, G_B, D_A, D_B, their two Adams and pools; ``step(real_a, real_b)`` runs one iteration.

    Images: ``float[B, 3, H, W]`` in [-1, 1] (torch tensors on ``device``). ``dtype`` is
    ``"float32"`` or ``"bfloat16"`` (autocast for the bf16 case). ``mode`` is one
    of :data:`MODES` (``strong`` and ``compiled`` imply bfloat16 autocast on CUDA).
    ``nets``: (ngf, n_blocks, ndf), the paper's by default.
    """

    def __init__(
        self,
        dtype: str = "float32",
        seed: int = 0,
        pool_size: int = 50,
        device: str = "cpu",
        mode: str = "official",
        nets: tuple[int, int, int] = (64, 9, 64),
    ) -> None:
        import torch
        from torch import nn

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        torch.manual_seed(seed)
        random.seed(seed)
        from benchmarks import torch_replica

        self.torch, self.device, self.mode = torch, torch.device(device), mode
        cuda = self.device.type == "cuda"
        strong = mode != "official"
        if cuda:  # (the official BaseModel turns cuDNN's autotuning on for fixed-size crops)
            torch.backends.cudnn.benchmark = True
        self.memory_format = torch.channels_last if strong else torch.contiguous_format
        ngf, n_blocks, ndf = nets
        self.g_a, self.g_b = (torch_replica.ResnetGenerator(ngf, n_blocks) for _ in range(2))
        self.d_a, self.d_b = (torch_replica.NLayerDiscriminator(ndf) for _ in range(2))
        for net in (self.g_a, self.g_b, self.d_a, self.d_b):
            for m in net.modules():
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    nn.init.normal_(m.weight, 0.0, 0.02)
                    nn.init.zeros_(m.bias)
            net.to(self.device, memory_format=self.memory_format)
        g_params = list(self.g_a.parameters()) + list(self.g_b.parameters())
        d_params = list(self.d_a.parameters()) + list(self.d_b.parameters())
        fused = {"fused": True} if cuda and strong else {}
        self.opt_g = torch.optim.Adam(g_params, lr=2e-4, betas=(0.5, 0.999), **fused)
        self.opt_d = torch.optim.Adam(d_params, lr=2e-4, betas=(0.5, 0.999), **fused)
        if mode == "compiled":
            self.g_a, self.g_b = torch.compile(self.g_a), torch.compile(self.g_b)
            self.d_a, self.d_b = torch.compile(self.d_a), torch.compile(self.d_b)
        self.pool_a, self.pool_b = ImagePool(pool_size), ImagePool(pool_size)
        self.l1, self.mse = nn.L1Loss(), nn.MSELoss()
        self.dtype = "bfloat16" if strong and cuda else dtype

    def _set_requires_grad(self, nets: list, flag: bool) -> None:
        for net in nets:
            for p in net.parameters():
                p.requires_grad = flag

    def _autocast(self) -> Any:
        torch = self.torch
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bfloat16")

    def _gan(self, pred: Any, real: bool) -> Any:
        return self.mse(pred.float(), self.torch.full_like(pred.float(), 1.0 if real else 0.0))

    def images(self, batch: int, size: int, seed: int = 0) -> tuple[Any, Any]:
        """Two random batches ``float[batch, 3, size, size]`` in [-1, 1] on the device, in the mode's layout."""
        torch = self.torch
        gen = torch.Generator().manual_seed(seed)
        a, b = (torch.rand(batch, 3, size, size, generator=gen) * 2 - 1 for _ in range(2))
        return tuple(x.to(self.device).contiguous(memory_format=self.memory_format) for x in (a, b))

    def step(self, real_a: Any, real_b: Any, sync: bool = True) -> Any:
        """One official ``optimize_parameters()``; returns the generator loss.

        ``sync``: as a float (waits for the device); else as a device tensor (no host sync).
        """
        with self._autocast():
            fake_b = self.g_a(real_a)
            rec_a = self.g_b(fake_b)
            fake_a = self.g_b(real_b)
            rec_b = self.g_a(fake_a)
        # Generators.
        self._set_requires_grad([self.d_a, self.d_b], False)
        self.opt_g.zero_grad()
        with self._autocast():
            idt_a = self.g_a(real_b)
            idt_b = self.g_b(real_a)
            loss_idt = 5.0 * (self.l1(idt_a.float(), real_b) + self.l1(idt_b.float(), real_a))
            loss_gan = self._gan(self.d_a(fake_b), True) + self._gan(self.d_b(fake_a), True)
            loss_cycle = 10.0 * (self.l1(rec_a.float(), real_a) + self.l1(rec_b.float(), real_b))
            loss_g = loss_gan + loss_cycle + loss_idt
        loss_g.backward()
        self.opt_g.step()
        # Discriminators (fakes from before the G step, through the pools).
        self._set_requires_grad([self.d_a, self.d_b], True)
        self.opt_d.zero_grad()
        with self._autocast():
            fake_b_q = self.pool_b.query(fake_b)
            loss_d_a = 0.5 * (self._gan(self.d_a(real_b), True) + self._gan(self.d_a(fake_b_q.detach()), False))
        loss_d_a.backward()
        with self._autocast():
            fake_a_q = self.pool_a.query(fake_a)
            loss_d_b = 0.5 * (self._gan(self.d_b(real_a), True) + self._gan(self.d_b(fake_a_q.detach()), False))
        loss_d_b.backward()
        self.opt_d.step()
        return float(loss_g.detach()) if sync else loss_g.detach()


def make_step(size: int, batch: int, dtype: str = "float32", threads: int | None = None, seed: int = 0) -> Any:
    """A zero-argument callable running one full iteration on fixed random images (for interleaved timing)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    it = CycleGANIteration(dtype, seed)
    gen = torch.Generator().manual_seed(seed)
    real_a = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    real_b = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    return lambda: it.step(real_a, real_b)


class SeparateProcessStep:
    """:func:`make_step` in a child process, driven in lockstep: calling the object runs one iteration there.

    For comparisons in which each implementation runs under its own process-wide
    settings (e.g. JAX with ``--malloc hugepages``, PyTorch with the defaults):
    the child gets ``env`` (default: this process's environment without the
    :data:`benchmarks.common.MALLOC_MODES` variables). Calls still interleave with
    the parent's own work, so machine load hits both alike.
    """

    def __init__(self, size: int, batch: int, dtype: str, threads: int, env: dict[str, str] | None = None) -> None:
        if env is None:
            drop = {k for mode in common.MALLOC_MODES.values() for k in mode}
            env = {k: v for k, v in os.environ.items() if k not in drop}
        argv = [sys.executable, "-m", "benchmarks.torch_reference", "--serve", str(size), str(batch), dtype]
        argv += ["--threads", str(threads)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        if self._read() != "ready":
            raise RuntimeError("the PyTorch child process did not start")

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the PyTorch child process exited (code {self.proc.poll()})")
        return line.strip()

    def __call__(self) -> None:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        self._read()

    def peak_rss_mb(self) -> float:
        """The child's peak RSS (MiB), from /proc (Linux), or NaN."""
        return common.peak_rss_mb(self.proc.pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def _serve(size: int, batch: int, dtype: str, threads: int | None) -> None:
    """The child side of :class:`SeparateProcessStep`: one iteration per 'step' line on stdin."""
    step = make_step(size, batch, dtype, threads)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "step":
            step()
            print("done", flush=True)


def time_device_cases(
    size: int,
    cases: list[tuple[str, int]],
    device: str,
    iters: int = 10,
    warmup: int = 3,
    rounds: int = 3,
    deadline: float | None = None,
    nets: tuple[int, int, int] = (64, 9, 64),
) -> Iterator[dict[str, Any]]:
    """Throughput of the iteration for each ``(mode, batch)`` of ``cases`` on ``device``: one JSON-able record each.

    Steps run back to back without host syncs (as training runs), ``rounds`` times
    ``iters``, each round closed by a device synchronisation; ms per step is the
    median round's mean. ``warmup_s`` includes cuDNN autotuning and, in mode
    ``compiled``, torch.compile. Cases that would start after ``deadline`` (a
    ``time.time()`` value) are reported as skipped.
    """
    import time

    import torch

    cuda = torch.device(device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for mode, batch in cases:
        rec: dict[str, Any] = {"impl": f"torch-{mode}", "size": size, "batch": batch, "device": device}
        if deadline is not None and time.time() > deadline:
            yield {**rec, "skipped": "time budget"}
            continue
        it = None
        try:
            it = CycleGANIteration("float32", 0, device=device, mode=mode, nets=nets)
            real_a, real_b = it.images(batch, size)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            for _ in range(warmup):
                it.step(real_a, real_b, sync=False)
            sync()
            rec["warmup_s"] = round(time.perf_counter() - t, 2)
            means = []
            for _ in range(rounds):
                t = time.perf_counter()
                for _ in range(iters):
                    loss = it.step(real_a, real_b, sync=False)
                sync()
                means.append((time.perf_counter() - t) / iters)
            ms = 1e3 * statistics.median(means)
            rec.update({"dtype": it.dtype, "ms": round(ms, 3), "images_per_s": round(batch / ms * 1e3, 2)})
            rec["flops_analytic"] = common.step_conv_flops(size, batch, nets[0], nets[2], nets[1])
            rec["loss_finite"] = bool(torch.isfinite(loss).item())
            if cuda:
                rec["peak_device_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        except Exception as e:  # noqa: BLE001 - one failed case (e.g. out of memory) must not end the others
            rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        finally:
            del it
            if cuda:
                torch.cuda.empty_cache()
        yield rec


def analytic_flops(size: int, batch: int) -> int:
    """The same analytic conv count as the JAX benchmark (one iteration, multiply-add = 2 FLOPs)."""
    return common.step_conv_flops(size, batch)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all cores)")
    parser.add_argument("--device", default=None, help="e.g. cuda: time the --modes there (throughput, no host sync)")
    parser.add_argument("--modes", nargs="+", default=["official"], choices=MODES, help="with --device")
    parser.add_argument(
        "--cases", nargs="+", default=None, metavar="MODE:BATCH",
        help="with --device: these (mode, batch) cases in this order, instead of --modes x --batch",
    )  # fmt: skip
    parser.add_argument("--deadline", type=float, default=None, help="with --device: time.time() after which to skip")
    parser.add_argument("--rounds", type=int, default=3, help="with --device: timed rounds of --iters steps")
    parser.add_argument("--nets", type=int, nargs=3, default=[64, 9, 64], metavar=("NGF", "N_BLOCKS", "NDF"))
    parser.add_argument("--serve", nargs=3, metavar=("SIZE", "BATCH", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(int(args.serve[0]), int(args.serve[1]), args.serve[2], args.threads)
        return
    if not available():
        print(json.dumps({"impl": "torch", "skipped": "torch is not installed (pip install -e '.[bench]')"}))
        return
    if args.device:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        if args.cases:
            cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases]
        else:
            cases = [(m, b) for m in args.modes for b in args.batch]
        for size in args.sizes:
            records = time_device_cases(size, cases, args.device, args.iters, args.warmup, args.rounds,
                                        args.deadline, tuple(args.nets))  # fmt: skip
            for rec in records:
                print(json.dumps(rec), flush=True)
        return
    for dtype in args.dtype:
        for size in args.sizes:
            for batch in args.batch:
                step = make_step(size, batch, dtype, args.threads)
                common.reset_peak_rss()
                times = common.time_interleaved({"torch": step}, args.warmup, args.iters)["torch"]
                flops = common.step_conv_flops(size, batch)
                rss = round(common.peak_rss_mb(), 1)
                rec = common.case_record("torch", size, batch, dtype, times, None, flops, peak_rss_mb=rss)
                print(json.dumps(rec))


if __name__ == "__main__":
    main()
