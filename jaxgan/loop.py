"""``train_and_evaluate(config, workdir)``: the one place that ties the pieces together.

``results_only`` (rewrite a finished run's results page) lives in ``jaxgan.results``.

config -> input pipeline -> sharded train step -> checkpoints / logs / samples ->
results page. Only this module (and the entry points) print, write files or
talk to TensorBoard, and only process 0 does.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxgan import (
    checkpoint,
    config_check,
    cpu_memory,
    input_pipeline,
    output_files,
    parallel,
    peers,
    report,
    results,
    run_lock,
    stall,
    train,
)
from jaxgan.config_check import ConfigError, parse_profile_steps  # noqa: F401  (part of this module's API)
from jaxgan.preemption import Preemption

log = logging.getLogger(__name__)
PyTree = Any


class TrainingDivergedError(RuntimeError):
    """A loss or gradient norm became NaN or Inf; names the step and the term."""


def resolve_config(
    config: ml_collections.ConfigDict, steps_per_epoch: int, image_shape: tuple[int, int] | None = None
) -> tuple[ml_collections.ConfigDict, int]:
    """A copy of ``config`` with ``steps_per_epoch`` (and the training images' ``image_shape``, (H, W)) from
    the data, and the total step count.

    ``num_train_steps > 0`` sets the run length directly; the learning-rate
    schedule still counts data epochs (it only reaches its decay phase if the
    run is long enough; past its end, with a warning, at learning rate 0). ``image_shape`` sizes the image
    pools: ``crop_size`` square for the cropping transforms, the images' own size for ``preprocess="none"``
    and ``"scale_width"``.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    config.steps_per_epoch = int(steps_per_epoch)
    if image_shape is not None:
        config.image_shape = tuple(int(v) for v in image_shape)
    schedule_steps = (int(config.num_epochs) + int(config.num_epochs_decay)) * config.steps_per_epoch
    total = int(config.get("num_train_steps", 0) or 0)
    if total <= 0:
        total = schedule_steps
    elif total > schedule_steps:
        log.warning(
            "num_train_steps=%d runs past the learning-rate schedule's %d steps (num_epochs + num_epochs_decay): "
            "the steps after it train at learning rate 0.",
            total, schedule_steps,
        )  # fmt: skip
    return config, total


def _start_trace(directory: pathlib.Path) -> bool:
    """Start a ``jax.profiler`` trace into ``directory``; False (with a warning) where the profiler cannot run."""
    try:
        jax.profiler.start_trace(str(directory))
    except Exception as e:  # noqa: BLE001 - a missing profiler library must not stop training
        log.warning("Profiling skipped: jax.profiler could not start (%s: %s)", type(e).__name__, e)
        return False
    return True


def _warn_about_the_schedule(
    saved: dict | None, config: ml_collections.ConfigDict, start: int, total_steps: int
) -> None:
    """Warn where a resumed run's step counter means something else now: a changed batch size changes the
    steps per epoch (so the epoch and learning-rate position jump), and a checkpoint at or past the run's
    end leaves nothing to train."""
    before = (saved or {}).get("steps_per_epoch")
    if before and int(before) != int(config.steps_per_epoch):
        log.warning(
            "The run had %d steps per epoch (batch_size %s), now %d (batch_size %d): step %d was epoch %.1f and "
            "is now epoch %.1f of the schedule's %d, with the learning rate of that epoch.",
            int(before), (saved or {}).get("batch_size"), config.steps_per_epoch, config.batch_size, start,
            start / int(before), start / config.steps_per_epoch, int(config.num_epochs) + int(config.num_epochs_decay),
        )  # fmt: skip
    if start >= total_steps:
        log.warning(
            "The checkpoint is at step %d and this run ends at step %d: nothing to train. Raise "
            "--config.num_epochs/num_epochs_decay (or num_train_steps) to train further.",
            start, total_steps,
        )  # fmt: skip


def _check_finite(step: int, metrics: dict[str, np.ndarray]) -> None:
    bad = sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v)))
    if bad:
        raise TrainingDivergedError(
            f"Training diverged at step {step}: {', '.join(f'{k}={float(metrics[k])}' for k in bad)} "
            "is not finite. No checkpoint was written after the last good one; lower --config.lr, check the data, "
            "or resume from the last checkpoint with another seed."
        )


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
) -> train.TrainState:
    """Train (resuming from ``workdir`` when it holds checkpoints), then write the results page.

    ``on_log(step, metrics)``, if given, receives the mean metrics (and
    ``images_per_s``) of every logging interval on process 0: the steps up to each multiple of
    ``log_every_steps``, the last step and a stop; a checkpoint inside an interval does not split it.

    Returns the final state. Raises :class:`TrainingDivergedError` on NaN/Inf,
    :class:`checkpoint.CheckpointError` for an incompatible run directory, :class:`ConfigError` for
    invalid config values (all of them in one message),
    :class:`input_pipeline.DataError` for bad data, :class:`parallel.ParallelError`
    for a batch that does not fit the devices, :class:`run_lock.RunLockError` when another
    process trains in ``workdir``.

    With several processes, call it as the training command does (``experiments/horse2zebra.py``): inside
    ``with peer_failure.Watch():``, and end a process that raised with ``peer_failure.exit_now(status)``.
    Otherwise a process that fails leaves the others waiting in their next step until JAX's heartbeat or
    shutdown barrier aborts them.
    """
    workdir = output_files.checkpoint_folder(workdir, checkpoint.CheckpointError)  # before any work
    peers.check(config, workdir)  # several processes: one config, one shared workdir
    config_check.check(config)  # every field, before any data is read or anything compiled
    lock = run_lock.RunLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with contextlib.ExitStack() as stack:
        peers.together(lambda: stack.enter_context(lock))  # another run training here stops every process
        return _train_and_evaluate(config, workdir, on_log)


def _train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    on_log: Callable[[int, dict[str, float]], None] | None,
) -> train.TrainState:
    t_start = time.perf_counter()
    main = jax.process_index() == 0
    profile = parse_profile_steps(config.get("profile_steps", ""))
    mesh = parallel.mesh_from_config(config)
    parallel.check_batch_size(int(config.batch_size), mesh)
    parallel.connect_collectives(mesh)  # several CPU processes: now, while they are together
    stream = peers.together(  # a process whose share of the data is unreadable stops all of them
        lambda: input_pipeline.create_train_stream(
            config, process_index=jax.process_index(), process_count=jax.process_count()
        )
    )
    config, total_steps = resolve_config(config, stream.steps_per_epoch, stream.image_shape)
    peers.check_data(config)
    log.info("%s; global batch %d; %d steps/epoch; %d steps in all",
             parallel.describe(mesh), config.batch_size, config.steps_per_epoch, total_steps)  # fmt: skip

    saved = checkpoint.load_config(workdir)
    if saved is not None and checkpoint.has_checkpoints(workdir):  # else a run that never saved: start afresh
        checkpoint.check_compatible(saved, config)

    rng, shardings, target = parallel.state_layout(config, mesh)
    # Synchronous saves where the step reuses its memory (see jaxgan.cpu_memory).
    ckpt = checkpoint.Checkpointer(workdir, keep=int(config.keep_checkpoints), async_save=not cpu_memory.active())
    try:
        state, start = ckpt.restore_latest(target)
    except BaseException:
        ckpt.close()  # its threads, left running, print their own tracebacks at exit
        raise
    if state is None:
        state = train.init_train_state(config, rng, shardings)
        start = 0
        log.info("Starting a new run in %s", workdir)
    else:
        log.info("Resumed from the checkpoint at step %d in %s", start, ckpt.directory)
        _warn_about_the_schedule(saved, config, start, total_steps)
    if profile and not start < profile[0] <= total_steps:
        log.warning("profile_steps=%d..%d lies outside the steps this run trains (%d..%d): no profile is written.",
                    *profile, start + 1, total_steps)  # fmt: skip
    if main:  # only now: a config that does not fit the checkpoints must not replace the one that does
        checkpoint.save_config(workdir, config)

    step_fn = parallel.make_train_step(shardings, mesh)
    sample_fn = results.make_sample_fn(state.config)
    n_samples = int(config.get("num_sample_images", 4))
    samples_a = input_pipeline.load_test_split(config, "A", max_images=n_samples).images
    samples_b = input_pipeline.load_test_split(config, "B", max_images=n_samples).images
    n_samples = min(len(samples_a), len(samples_b))  # one row per pair: a small test split sets the count
    samples_a, samples_b = samples_a[:n_samples], samples_b[:n_samples]

    writer = None
    if main:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(str(workdir / "tensorboard"))
        (workdir / "samples").mkdir(parents=True, exist_ok=True)

    log_every = max(1, int(config.log_every_steps))
    sample_every = int(config.sample_every_steps)
    ckpt_every = int(config.checkpoint_every_steps)
    pending: list[tuple[int, dict[str, jax.Array]]] = []  # on the devices, not yet fetched
    fetched: list[dict[str, float]] = []  # on the host, checked, not yet in a log line
    last_good_step = start

    def fetch(step: int) -> None:
        """Fetch the buffered metrics (one host sync) and check them: before every checkpoint and log line."""
        nonlocal last_good_step
        watchdog.beat("fetching the metrics of step {step} (waiting for the devices to finish it)", step)
        host = [(s, {k: results.to_host(v) for k, v in m.items()}) for s, m in pending]
        pending.clear()
        for s, m in host:
            _check_finite(s, m)
        fetched.extend(m for _, m in host)
        last_good_step = step

    def interval_mean(step: int, elapsed: float, images: int) -> dict[str, float]:
        """The mean metrics of every step since the last log line (a checkpoint between them included)."""
        if not fetched:
            return {}
        mean = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}
        fetched.clear()
        mean["images_per_s"] = images / max(elapsed, 1e-9)
        if writer is not None:
            for k, v in mean.items():
                writer.add_scalar(f"train/{k}" if k != "images_per_s" else "perf/images_per_s", v, step)
            writer.flush()
        return mean

    def save_samples(step: int) -> None:
        watchdog.beat("writing the sample grid of step {step}", step)
        params = state.generator_params(str(config.get("eval_weights", "ema")))
        out = sample_fn(params, results.replicated(samples_a, mesh), results.replicated(samples_b, mesh))
        cols = [samples_a, results.to_host(out["fake_b"]), results.to_host(out["rec_a"]),
                samples_b, results.to_host(out["fake_a"]), results.to_host(out["rec_b"])]  # fmt: skip
        if main:
            grid = report.sample_grid(cols)
            from jaxgan import image_io

            try:
                image_io.save_image(workdir / "samples" / f"step_{step:07d}.png", grid)
                writer.add_image("samples", grid, step, dataformats="HWC")
            except OSError as e:  # e.g. a full disk: a lost sample grid must not stop training
                log.warning("Could not write the sample grid of step %d: %s", step, e)

    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=start, disable=not main, unit="step", dynamic_ncols=True, smoothing=0.1)
    # Host batches come from the input pipeline's thread; their copies to the devices run two steps ahead.
    batches = parallel.prefetch_to_mesh(stream.iterate(start), mesh, depth=2)
    t_last, steps_since = time.perf_counter(), 0
    step, tracing = start, False
    watchdog = stall.Watchdog(float(config.get("stall_timeout_s", 0)), workdir)  # a phase that never ends ends the run
    try:
        with Preemption() as preempt, watchdog:
            while step < total_steps:
                if profile and step + 1 == profile[0]:
                    watchdog.beat("waiting for the devices to finish step {step} before the profiled steps", step)
                    jax.block_until_ready(state)  # the steps queued before the range stay out of the trace
                    tracing = _start_trace(workdir / "profile")
                watchdog.beat("waiting for the input pipeline's batch of step {step}", step + 1)
                batch = next(batches)
                watchdog.beat("dispatching step {step}", step + 1)
                state, metrics = step_fn(state, batch)
                step += 1
                if tracing and step == profile[1]:
                    jax.block_until_ready(state)
                    jax.profiler.stop_trace()
                    tracing = False
                    log.info("Profile of steps %d..%d in %s (TensorBoard: profile tab)", *profile, workdir / "profile")
                steps_since += 1
                pending.append((step, metrics))
                is_last = step == total_steps
                do_ckpt = (ckpt_every > 0 and step % ckpt_every == 0) or is_last
                at_log = step % log_every == 0 or is_last
                watchdog.beat("checking for a stop signal after step {step} (with the other processes)", step)
                stop = preempt.requested(step, sync=at_log or do_ckpt)
                if at_log or do_ckpt or stop:
                    fetch(step)
                    watchdog.arm()  # past the compilations of the first steps (on every process)
                if at_log or stop:
                    now = time.perf_counter()
                    mean = interval_mean(step, now - t_last, steps_since * int(config.batch_size))
                    t_last, steps_since = now, 0
                    if mean and main and on_log is not None:
                        on_log(step, mean)
                    if mean and main:
                        epoch = (step - 1) // config.steps_per_epoch + 1
                        bar.set_postfix(epoch=epoch, img_s=f"{mean['images_per_s']:.1f}",
                                        G=f"{mean['loss_g_total']:.3f}",
                                        D=f"{mean['loss_d_a'] + mean['loss_d_b']:.3f}")  # fmt: skip
                        if step % log_every == 0:
                            log.info("step %d epoch %d lr %.3g | G %.3f (cyc %.3f, idt %.3f) | d_a %.3f d_b %.3f "
                                     "| %.1f img/s", step, epoch, mean["lr"], mean["loss_g_total"],
                                     mean["loss_cycle_a"] + mean["loss_cycle_b"],
                                     mean.get("loss_idt_ab", 0.0) + mean.get("loss_idt_ba", 0.0),
                                     mean["loss_d_a"], mean["loss_d_b"], mean["images_per_s"])  # fmt: skip
                bar.update(1)
                if sample_every > 0 and (step % sample_every == 0 or is_last):
                    save_samples(step)
                    cpu_memory.release_free_memory()
                if do_ckpt or stop:
                    watchdog.beat("saving the checkpoint of step {step}", step)
                    ckpt.save(step, state)
                    cpu_memory.release_free_memory()
                if stop:
                    ckpt.wait()
                    sig = preempt.signal
                    name = signal.Signals(sig).name if sig else "a signal on another process"  # (Ctrl-C there)
                    msg = f"Received {name}: saved the checkpoint at step {step} in {ckpt.directory}; "
                    log.warning(msg + "rerun the same command to resume.")
                    if main:
                        print(msg + "rerun the same command to resume.", flush=True)
                    return state
    finally:
        batches.close()
        if tracing:  # stopped inside the profiled range
            jax.profiler.stop_trace()
        bar.close()
        ckpt.close()
        if writer is not None:
            writer.close()

    extra = {"train_wall_s": round(time.perf_counter() - t_start, 1), "steps_this_run": step - start}
    summary = results.write_results(config, workdir, state, mesh, extra)
    if main:
        results.log_summary(summary)
    return state
