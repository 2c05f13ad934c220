r"""Horse -> zebra on real photos on a CPU: jaxgan (raw and EMA weights) beside the official algorithm, one table.

    python -m benchmarks.quality_cpu --out runs/quality_cpu                  # the documented run (hours on 2 cores)
    python -m benchmarks.quality_cpu --out /tmp/q --steps 20 --seeds 0 --torch-seeds 0 --config-variant tiny

For each seed, ``experiments/configs/horse2zebra.py:cpu`` (the demo's networks at 64x64 on the
full horse2zebra, batch 1, 3 + 3 epochs) trains with ``loop.train_and_evaluate``; both its raw
and its EMA weights are evaluated. For each torch seed, our PyTorch replica of the official
iteration (``benchmarks/torch_reference.CycleGANIteration``: the official two Adams, the
official 50-image pool) trains the same networks on the same batches (jaxgan's input stream
with the same seed, so the same data order and crops) with the same schedule (the official
linear policy, stepped per epoch). Everything is scored by one protocol
(``jaxgan.run_eval``: the test transform at 64x64, FID/KID against the other domain's test
split), next to the identity baseline and the noise floor. Writes ``OUT/quality_cpu.json``,
``OUT/quality_cpu.md`` and ``OUT/grid.png`` (test horses -> zebras -> horses and zebras ->
horses -> zebras of the first jaxgan seed, EMA). Finished runs and their evaluations are not
redone (delete their folder to redo one); an interrupted jaxgan run resumes, an interrupted
PyTorch run starts again.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from typing import Any

import numpy as np

from benchmarks import torch_reference


def make_config(variant: str, data: str | None, seed: int, steps: int | None) -> Any:
    from experiments.configs import horse2zebra

    config = horse2zebra.get_config(variant)
    if data:
        config.dataset = data
    config.seed = seed
    if steps:
        config.num_train_steps = steps
    return config


def run_jaxgan(config: Any, workdir: pathlib.Path) -> dict[str, Any]:
    """Train (or resume, or find finished) one jaxgan run; returns its wall time and step count."""
    from jaxgan import checkpoint, loop

    done = workdir / "results" / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    t = time.perf_counter()
    loop.train_and_evaluate(config, workdir)
    record = json.loads(done.read_text()) if done.is_file() else {}
    record["wall_s_this_process"] = round(time.perf_counter() - t, 1)
    record["steps"] = (checkpoint.load_config(workdir) or {}).get("num_train_steps")
    return record


def _evaluated(workdir: pathlib.Path, weights: str) -> dict[str, Any] | None:
    """A finished run's earlier evaluation of its final step (``WORKDIR/eval/eval_WEIGHTS_stepN.json``)."""
    from jaxgan import run_eval

    done = workdir / "results" / "summary.json"
    if not done.is_file():
        return None
    final = int(json.loads(done.read_text())["step"])
    path = workdir / "eval" / f"{run_eval.eval_file_name(weights, final)}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run_torch(config: Any, seed: int, out: pathlib.Path, threads: int) -> dict[str, Any]:
    """The official iteration on jaxgan's batches; writes ``out/fakes.npz`` (uint8 translations of both splits)."""
    import torch

    from jaxgan import image_io, input_pipeline, loop, optim

    result_path = out / "torch_run.json"
    if result_path.is_file() and (out / "fakes.npz").is_file():
        return json.loads(result_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    stream = input_pipeline.create_train_stream(config)
    config, total = loop.resolve_config(config, stream.steps_per_epoch)
    nets = (config.model.ngf, config.model.n_blocks, config.model.ndf)
    it = torch_reference.CycleGANIteration("float32", seed, config.pool_size, "cpu", "official", nets)
    schedule = optim.linear_decay_schedule(
        config.lr, config.num_epochs, config.num_epochs_decay, stream.steps_per_epoch
    )
    t = time.perf_counter()
    for step, batch in zip(range(total), stream.iterate(0), strict=False):
        if step % stream.steps_per_epoch == 0:  # the official scheduler steps once per epoch
            for opt in (it.opt_g, it.opt_d):
                for group in opt.param_groups:
                    group["lr"] = float(schedule(step))
        a, b = (torch.from_numpy(np.ascontiguousarray(batch[k].transpose(0, 3, 1, 2))) for k in ("A", "B"))
        it.step(a, b, sync=False)
    wall = time.perf_counter() - t
    fakes = {}
    with torch.no_grad():
        for direction, domain, net in (("AtoB", "A", it.g_a), ("BtoA", "B", it.g_b)):
            images = input_pipeline.load_test_split(config, domain).images
            x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
            y = torch.cat([net(x[i : i + 16]) for i in range(0, len(x), 16)]).numpy().transpose(0, 2, 3, 1)
            fakes[direction] = image_io.to_uint8(y)
    np.savez_compressed(out / "fakes.npz", **fakes)
    record = {"steps": total, "wall_s": round(wall, 1), "seed": seed, "threads": threads, "torch": torch.__version__}
    result_path.write_text(json.dumps(record, indent=1))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--data", default=None, help="override the config's data set (folder:PATH)")
    parser.add_argument("--config-variant", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1], help="jaxgan seeds")
    parser.add_argument("--torch-seeds", type=int, nargs="*", default=[0], help="PyTorch replica seeds")
    parser.add_argument("--steps", type=int, default=None, help="override the run length (tests)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    args = parser.parse_args(argv)
    if not torch_reference.available() and args.torch_seeds:
        print("torch is not installed: the PyTorch replica runs are skipped (pip install -e '.[bench]')")
        args.torch_seeds = []
    from jaxgan import cpu_memory

    cpu_memory.reuse_step_memory()  # as the training entry point runs on CPU-only machines
    from jaxgan import generator_loading, image_io, inception_weights, report, run_eval, translate

    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    first = None
    for seed in args.seeds:
        workdir = args.out / f"jaxgan_seed{seed}"
        facts = run_jaxgan(make_config(args.config_variant, args.data, seed, args.steps), workdir)
        first = first or workdir
        for weights in ("raw", "ema"):
            ev = _evaluated(workdir, weights) or run_eval.evaluate_run(workdir, weights)
            row = {"impl": f"jaxgan {weights}", "seed": seed, **ev["checkpoints"][0], "baselines": ev["baselines"]}
            rows.append({**row, "train_wall_s": facts.get("train_wall_s")})
    for seed in args.torch_seeds:
        config = make_config(args.config_variant, args.data, seed, args.steps)
        folder = args.out / f"torch_seed{seed}"
        facts = run_torch(config, seed, folder, args.threads)
        if first is None:
            raise SystemExit("the PyTorch rows are scored against a jaxgan run's test splits: give --seeds too")
        ev = run_eval.RunEvaluator(first)
        fakes = dict(np.load(folder / "fakes.npz"))
        rows.append({"impl": "PyTorch replica", "seed": seed, "step": facts["steps"], "weights": "raw",
                     **ev.score(fakes), "train_wall_s": facts["wall_s"]})  # fmt: skip
    baselines = rows[0]["baselines"] if rows else {}
    table = {"rows": rows, "baselines": baselines, "fid": inception_weights.weights_available()}
    (args.out / "quality_cpu.json").write_text(json.dumps(table, indent=1, default=str))
    (args.out / "quality_cpu.md").write_text(markdown(table))
    print(markdown(table))
    if first is not None:  # the grid, EMA weights of the first jaxgan seed
        ev = run_eval.RunEvaluator(first)
        _, params_ab, _, _ = generator_loading.load_generator_from_run(first, "AtoB", None, "ema")
        gen, params_ba, _, _ = generator_loading.load_generator_from_run(first, "BtoA", None, "ema")
        a, b = ev.test["A"].images[:6], ev.test["B"].images[:6]
        fb, fa = translate.generate(gen, params_ab, a), translate.generate(gen, params_ba, b)
        rec_a, rec_b = translate.generate(gen, params_ba, fb), translate.generate(gen, params_ab, fa)
        image_io.save_image(args.out / "grid.png", report.sample_grid([a, fb, rec_a, b, fa, rec_b]))
    return 0


def markdown(table: dict[str, Any]) -> str:
    """The table: FID/KID per implementation and seed, then the baselines."""
    lines = [
        "| run | seed | steps | G(A) vs B FID | KID | F(B) vs A FID | KID | train min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table["rows"]:
        cells = [r["impl"], r["seed"], r.get("step")]
        for d in ("AtoB", "BtoA"):
            cells += [
                f"{r[f'{d}/fid']:.1f}" if f"{d}/fid" in r else "–",
                f"{r[f'{d}/kid']:.3f}" if f"{d}/kid" in r else "–",
            ]
        cells.append(f"{r['train_wall_s'] / 60:.1f}" if r.get("train_wall_s") else "–")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    b = table["baselines"]
    if b:
        lines += ["", f"Not translating: FID {b['identity/AtoB/fid']:.1f} (A vs B), KID {b['identity/AtoB/kid']:.3f}; "
                  f"noise floor (two halves of a test split, {b['noise_floor/n']} images each): FID "
                  f"{b['noise_floor/fid']:.1f}, KID {b['noise_floor/kid']:.4f}."]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
