r"""The device suite: one command that checks and measures jaxgan on an accelerator.

Against the official algorithm in PyTorch (``benchmarks/torch_reference.py``) on the
same device. Stages, in order (each recorded as it finishes, so a failure or the
time budget loses only what comes after):

1. ``env``: jax/jaxlib versions, device kind, driver, memory; measured bf16 and float32 matmul rates;
2. ``step``: the train step at 256x256, one case after the other, float32 and bf16: ms, images/s,
   MFU (over the datasheet peak and over the measured matmul rate), planned and peak memory;
3. ``torch``: the PyTorch replica as the official code runs it (eager float32) and in the strongest
   forms (AMP bf16 + channels_last + cudnn.benchmark + fused Adam; and torch.compile), in a child process;
4. ``step_max``: the largest batch that fits, per dtype;
5. ``translate``: generator throughput at 256 and 512, batch 32, bf16;
6. ``correctness``: every conv form against ``native`` (values and gradients); one train step on the
   device against the same step on the host CPU; bf16 against float32 translations (PSNR);
7. ``runner``: ``loop.train_and_evaluate`` on real images, end-to-end images/s against the step alone;
8. ``forms`` (only when asked for): every distinct layer's forward + backward in each conv form: the data
   behind ``conv_forms.AUTO``.

Then the projected time of the paper schedule (200 epochs of horse2zebra, 266,800 image pairs).
The stages live in ``device_checks`` (env, correctness), ``device_step`` (step) and ``device_speed``
(torch, forms, runner, translate); ``device_report`` turns the results into the table.

Usage::

  python -m benchmarks.device_suite --out DIR              # on the device: about 5-6 minutes on one H200
  python -m benchmarks.device_suite --out DIR --dry-run    # every stage at tiny sizes on the CPU (CI)

Writes ``DIR/device_suite.json`` and ``DIR/device_suite.md`` (rewritten after every stage).
``benchmarks/prepare_device.sh`` prepares what travels to the device (wheels, a compact data copy)
and prints the device command.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes of every stage: the device's (paper networks at 256x256) or the CPU dry run's (tiny)."""

    size: int = 256
    nets: tuple[int, int, int] = (64, 9, 64)  # ngf, n_blocks, ndf
    dtypes: tuple[str, ...] = ("bfloat16", "float32")
    batches: tuple[int, ...] = (1, 4, 8, 16)
    max_batch_cap: int = 256  # 0: no largest-batch search
    # "dtype:batch", most needed first (each compiles for about a minute on an H200 without cached autotuning).
    step_cases: tuple[str, ...] = (
        "bfloat16:8", "float32:1", "bfloat16:1", "bfloat16:16", "bfloat16:4", "float32:4", "float32:16", "float32:8",
    )  # fmt: skip
    step_case_min_s: float = 75.0  # a step case starts only with this much of the budget left
    rounds: int = 3
    step_round_s: float = 0.5
    compile_workers: int = 6
    matmul_n: int = 8192
    check_size: int = 64
    check_nets: tuple[int, int, int] = (32, 3, 32)  # the step-vs-CPU check: small nets, the same layer kinds
    form_check_hw: tuple[int, int] = (68, 60)
    form_check_nets: tuple[int, int, int] = (16, 2, 16)  # the conv-form check's networks (ngf, n_blocks, ndf)
    forms_batch: int = 4
    forms_dtypes: tuple[str, ...] = ("bfloat16",)
    forms_round_s: float = 0.15
    torch_device: str = "cuda"
    # (mode, batch) in order of importance, the batches in the step cases' order (a case that the child's time
    # limit cuts off has no row): batch 1 for the official iteration's ratio, then the strong form at each batch
    # the step measures first; torch.compile last, at the batch the quality run uses.
    torch_cases: tuple[str, ...] = (
        "official:1", "strong:1", "strong:8", "official:8", "strong:16", "official:16", "strong:4", "official:4",
        "compiled:8",
    )  # fmt: skip
    torch_iters: int = 10
    torch_threads: int = 0
    runner_batch: int = 8
    runner_dtype: str = "bfloat16"
    runner_seconds: float = 45.0
    runner_log_every: int = 50
    runner_step_guess_s: float = 0.05
    translate_sizes: tuple[int, ...] = (256, 512)
    translate_batch: int = 32
    dry_run: bool = False


DEVICE = Scale()
DRY_RUN = Scale(
    size=32,
    nets=(8, 1, 8),  # one residual block: every layer kind, fewer ops to compile
    batches=(1, 2),
    max_batch_cap=4,
    # bf16 only (the float32 step is the same code; tests/test_train.py runs it): two batches, which its
    # largest-batch search needs. Every step compilation is ~15 s on 2 cores.
    step_cases=("bfloat16:2", "bfloat16:1"),
    step_case_min_s=0.0,
    rounds=1,
    step_round_s=0.05,
    compile_workers=2,
    matmul_n=256,
    check_size=32,
    check_nets=(8, 1, 8),
    form_check_hw=(36, 44),
    form_check_nets=(8, 1, 8),
    forms_batch=1,
    forms_round_s=0.02,
    torch_device="cpu",
    torch_cases=("official:1", "strong:1", "official:2", "strong:2"),
    torch_iters=1,
    torch_threads=1,
    runner_batch=2,
    runner_seconds=2.0,
    runner_log_every=2,
    runner_step_guess_s=0.5,
    translate_sizes=(32,),
    translate_batch=2,
    dry_run=True,
)

# Seconds a stage needs at least on the device; a stage that would start with less left is skipped.
MIN_SECONDS = {
    "env": 5, "step": 75, "torch": 30, "step_max": 75, "correctness": 30, "runner": 60, "translate": 30, "forms": 60,
}  # fmt: skip
# The numbers the device has not given yet first (the correctness stage passed on the H200 on 2026-11-30).
STAGES = ("env", "step", "torch", "step_max", "translate", "correctness", "runner", "forms")
DEFAULT_STAGES = STAGES[:-1]  # the per-layer form table (behind conv_forms.AUTO) only when asked for


def _default_data(dry_run: bool) -> str:
    """The compact copy that prepare_device.sh makes, else the shared mini set, else the synthetic pair."""
    for path in (ROOT / ".devdata" / "horse2zebra", ROOT.parent / "shared" / "datasets" / "horse2zebra-mini"):
        if (path / "trainA").is_dir():
            return f"folder:{path}"
    if dry_run:
        return "synthetic"
    raise SystemExit("No data: run benchmarks/prepare_device.sh first, or pass --data folder:PATH.")


class Suite:
    """Runs the stages in order under a time budget and rewrites the JSON and Markdown after each."""

    def __init__(self, out: pathlib.Path, scale: Scale, budget_s: float, dry_run: bool) -> None:
        self.out, self.scale, self.dry_run = out, scale, dry_run
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.results: dict[str, Any] = {
            "meta": {
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "dry_run": dry_run,
                "scale": dataclasses.asdict(scale),
                "budget_s": budget_s,
                "command": " ".join(sys.argv),
            },
            "stages": {},
        }

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run one stage; record its result (or error, or skip) and its seconds; never raise."""
        need = 0 if self.dry_run else MIN_SECONDS.get(name, 10)
        if self.left() < need:
            self.results["stages"][name] = {"status": "skipped", "why": f"time budget ({self.left():.0f} s left)"}
            self.write()
            return None
        t = time.perf_counter()
        print(f"[device_suite] {name} ... ({self.left():.0f} s left)", flush=True)
        try:
            value = fn()
            status: dict[str, Any] = {"status": "ok"}
            self.results[name] = value
        except Exception as e:  # noqa: BLE001 - a failed stage is recorded and the next one runs
            value = None
            status = {"status": "error", "error": f"{type(e).__name__}: {e}"[:500]}
            status["traceback"] = traceback.format_exc()[-3000:]
            print(status["traceback"], file=sys.stderr, flush=True)
        status["seconds"] = round(time.perf_counter() - t, 1)
        self.results["stages"][name] = status
        print(f"[device_suite] {name}: {status['status']} in {status['seconds']} s", flush=True)
        self.write()
        return value

    def record(self, name: str, value: Any) -> dict[str, Any]:
        """Keep a stage's (partial) result on disk (a killed run keeps what it measured); returns a note."""
        self.results[name] = value
        self.write()
        return {"recorded_in": name}

    def write(self) -> None:
        from benchmarks import device_report

        self.results["meta"]["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        self.results["summary"] = device_report.summarize(self.results)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "device_suite.json").write_text(json.dumps(self.results, indent=1, default=str))
        (self.out / "device_suite.md").write_text(device_report.markdown(self.results))


def _memory_limit_mb(override: float | None) -> float | None:
    if override:
        return override
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats["bytes_limit"] / 2**20 if "bytes_limit" in stats else None


def _is_case(case: str, kinds: tuple[str, ...]) -> bool:
    """``case`` is ``KIND:BATCH`` with KIND in ``kinds`` and a positive whole BATCH."""
    kind, _, batch = case.partition(":")
    return kind in kinds and batch.isdigit() and int(batch) > 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory for device_suite.json and device_suite.md")
    parser.add_argument("--dry-run", action="store_true", help="every stage at tiny sizes on the CPU")
    parser.add_argument("--budget-s", type=float, default=None, help="time budget (default 360 s; dry run: none)")
    parser.add_argument("--data", default=None, help="training data for the runner stage (folder:PATH or synthetic)")
    parser.add_argument(
        "--memory-limit-mb", type=float, default=None,
        help="device memory for the largest-batch search (default: the device's; dry run: 64 MiB)",
    )  # fmt: skip
    parser.add_argument("--stages", nargs="+", default=None, help="run only these stages")
    parser.add_argument("--skip", nargs="+", default=(), help="leave out these stages")
    parser.add_argument(
        "--step-cases",
        nargs="+",
        default=None,
        metavar="DTYPE:BATCH",
        help="the step stage's cases instead of the scale's dtypes x batches, e.g. bfloat16:8",
    )
    parser.add_argument(
        "--torch-cases",
        nargs="+",
        default=None,
        metavar="IMPL:BATCH",
        help="the torch stage's cases instead of the scale's, e.g. official:4 compiled:8",
    )
    parser.add_argument("--no-max-batch", action="store_true", help="no largest-batch search (stage step_max)")
    args = parser.parse_args(argv)
    # One process shares the device with the PyTorch child: no preallocation (JAX grows its pool as it needs).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
    if args.dry_run:
        os.environ["JAX_PLATFORMS"] = "cpu"
    scale = DRY_RUN if args.dry_run else DEVICE
    from benchmarks import torch_reference  # its modes (it imports torch inside its functions only)

    for flag, cases, kinds in (
        ("--step-cases", args.step_cases, ("bfloat16", "float32")),
        ("--torch-cases", args.torch_cases, torch_reference.MODES),
    ):
        bad = [c for c in cases or () if not _is_case(c, kinds)]
        if bad:
            parser.error(f"{flag}: {' '.join(bad)} not of the form KIND:BATCH, KIND one of {', '.join(kinds)}")
    if args.step_cases:
        scale = dataclasses.replace(scale, step_cases=tuple(args.step_cases))
    if args.torch_cases:
        scale = dataclasses.replace(scale, torch_cases=tuple(args.torch_cases))
    if args.no_max_batch:
        scale = dataclasses.replace(scale, max_batch_cap=0)
    budget = args.budget_s if args.budget_s is not None else (1e9 if args.dry_run else 360.0)
    data = args.data or _default_data(args.dry_run)
    suite = Suite(pathlib.Path(args.out), scale, budget, args.dry_run)
    wanted = set(args.stages or DEFAULT_STAGES)
    wanted -= set(args.skip)

    from benchmarks import device_checks, device_speed, device_step

    stages: dict[str, Callable[[], Any]] = {
        "env": lambda: device_checks.stage_env(scale),
        "step": lambda: device_step.stage_step(
            scale,
            # cases only while the later stages keep their time
            lambda: suite.left() - sum(MIN_SECONDS[k] for k in ("torch", "correctness", "translate") if k in wanted),
            lambda partial: suite.record("step", partial)),
        "step_max": lambda: suite.record("step", device_step.stage_step_max(
            scale, suite.results.get("step") or {},
            _memory_limit_mb(args.memory_limit_mb or (64.0 if args.dry_run else None)),
            lambda: suite.left() - sum(MIN_SECONDS[k] for k in ("correctness", "translate") if k in wanted),
            lambda partial: suite.record("step", partial))),
        # The PyTorch child after the step: JAX does not preallocate, so the child has the device's memory.
        "torch": lambda: device_speed.stage_torch(scale, min(120.0, max(30.0, suite.left() * 0.5))),
        "correctness": lambda: device_checks.stage_correctness(scale),
        "runner": lambda: device_speed.stage_runner(scale, data, (suite.results.get("step") or {}).get("rows", [])),
        "translate": lambda: device_speed.stage_translate(scale),
        "forms": lambda: device_speed.stage_forms(scale),
    }  # fmt: skip
    for name in STAGES:
        if name in wanted:
            suite.run(name, stages[name])
    statuses = {k: v["status"] for k, v in suite.results["stages"].items()}
    print(json.dumps({"stages": statuses, "summary": suite.results.get("summary")}, default=str), flush=True)
    print((suite.out / "device_suite.md").read_text(), flush=True)
    return 0 if all(s == "ok" for s in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
