r"""Train CycleGAN (paper settings by default) — the command users run.

    python -m experiments.horse2zebra --workdir=runs/h2z
    python -m experiments.horse2zebra --workdir=runs/demo --config=experiments/configs/horse2zebra.py:demo
    python -m experiments.horse2zebra --workdir=runs/h2z --config.batch_size=4 --config.dataset=folder:/data/h2z
    python -m experiments.horse2zebra --workdir=runs/h2z --mode=results   # rewrite the results page (the run's config)

Rerunning the same command resumes from the newest checkpoint in --workdir.
Multi-host: pass --coordinator_address/--num_processes/--process_id, or run
under SLURM / on a TPU pod slice, where JAX finds its peers by itself.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

import ml_collections
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def _exit_on_unknown_field(e: AttributeError | KeyError) -> None:
    """One line (exit 2) for a --config override of a field the config lacks (--config.lrr=1)."""
    inner = e.args[0] if e.args else e
    text = inner.args[0] if isinstance(inner, KeyError) and inner.args else str(inner)
    name, _, hint = str(text).partition("\n")
    print(f"error: no config field {name} for a --config override{f' ({hint})' if hint else ''}", file=sys.stderr)
    sys.exit(2)


try:  # the default config file is loaded (and the overrides applied) here, at import
    _CONFIG = config_flags.DEFINE_config_file(
        "config", "experiments/configs/horse2zebra.py", "Experiment config file (file.py or file.py:variant).",
        lock_config=True,
    )  # fmt: skip
except (AttributeError, KeyError) as error:
    _exit_on_unknown_field(error)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, samples, results. Rerun to resume.")
flags.DEFINE_enum("mode", "train", ["train", "results"], "train (and write results), or only write the results page.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_integer("distributed_timeout", 300,  # parallel.JOIN_TIMEOUT_S (jaxgan is imported after the flags)
                     "Seconds a multi-process run waits for all its processes to join.")  # fmt: skip
flags.DEFINE_integer("peer_timeout", 100,  # parallel.PEER_TIMEOUT_S
                     "Multi-process runs: seconds without JAX's heartbeat from a process (killed, a lost host) "
                     "before every process is ended; the checkpoints stay.")  # fmt: skip
flags.DEFINE_bool("peer_beats", True,
                  "Multi-process runs: beats on jaxgan's liveness link, so that a process silent for half of "
                  "--peer_timeout (frozen, a lost host) ends the job with one line before JAX's heartbeat aborts it "
                  "with a native stack trace; --nopeer_beats leaves it to JAX's heartbeat.")  # fmt: skip
flags.DEFINE_bool(
    "reuse_cpu_memory", True,
    "CPU-only machines: keep each step's temporaries mapped for the next step (jaxgan.cpu_memory); "
    "--noreuse_cpu_memory keeps glibc's and JAX's defaults.",
)  # fmt: skip
flags.mark_flag_as_required("workdir")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing; an override of a field the config lacks, or an error raised by the config file (an
    unknown variant, ``file.py:Tiny``), is one line (exit 2)."""
    try:
        return FLAGS(argv)
    except (AttributeError, KeyError) as e:
        _exit_on_unknown_field(e)
        raise
    except flags.Error as e:
        message = str(e)
        if "Error whilst parsing config file" in message:  # ml_collections puts the file's traceback in it
            flag = message.partition(": Error whilst parsing")[0].removeprefix("flag ")
            print(f"error: {flag}: {[ln.strip() for ln in message.splitlines() if ln.strip()][-1]}", file=sys.stderr)
            sys.exit(2)
        # This error, not a second parse's: parsing again registers each --config.X override twice, and
        # absl would then report "flag 'config.X' is defined twice" instead of what is wrong.
        print(f"error: {message} (--helpshort lists the flags)", file=sys.stderr)
        sys.exit(2)


def _config_or_error() -> tuple[object | None, str | None]:
    """The loaded config, or the reason it could not be loaded (a missing file, an error inside it)."""
    config = _CONFIG.value
    if isinstance(config, ml_collections.ConfigDict):
        return config, None
    try:  # config_flags hands over a placeholder that raises the loading error when touched
        config.to_dict()
    except Exception as e:  # noqa: BLE001 - any failure to load the config file
        return None, f"--config {FLAGS['config'].serialize().split('=', 1)[-1]}: {e}"
    return config, None


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not (FLAGS.workdir or "").strip():
        raise app.UsageError("--workdir is empty: give the run's folder (an unset $WORKDIR, say?)")
    workdir = os.path.expanduser(FLAGS.workdir)  # "--workdir=~/runs/x" reaches us unexpanded
    config, problem = _config_or_error()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from jaxgan import compile_cache, cpu_memory, parallel

    try:
        parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                                        FLAGS.distributed_timeout, FLAGS.peer_timeout)  # fmt: skip
    except parallel.ParallelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if FLAGS.reuse_cpu_memory:  # before any JAX backend exists
        cpu_memory.reuse_step_memory()
    compile_cache.enable()  # a resumed run reads its compiled step from disk

    import jax

    from jaxgan import checkpoint, input_pipeline, loop, peer_failure, preemption, results, run_lock

    # Our own INFO lines from process 0, short; libraries (Orbax, absl) only at WARNING.
    absl_logging.get_absl_handler().setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("jaxgan").setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)
    try:
        # Several processes: one that fails stops the others at once; unless --nopeer_beats, one silent for half of
        # --peer_timeout too (before JAX's heartbeat aborts them all with native stack traces).
        with peer_failure.Watch(silence_s=FLAGS.peer_timeout / 2 if FLAGS.peer_beats else None):
            if FLAGS.mode == "results":  # the run's own config; --config.FIELD overrides still apply
                overrides = config_flags.get_override_values(FLAGS["config"])
                results.results_only(results.config_of_run(workdir, config, overrides), workdir)
            else:
                loop.train_and_evaluate(config, workdir)
    except (
        input_pipeline.DataError,
        checkpoint.CheckpointError,
        parallel.ParallelError,
        loop.TrainingDivergedError,
        loop.ConfigError,
        run_lock.RunLockError,
        results.ResultsError,
        peer_failure.PeerLostError,
    ) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        status = 1
    except BaseException as e:
        if jax.process_count() == 1:
            raise
        if isinstance(e, KeyboardInterrupt):  # outside the training loop, which handles its own Ctrl-C
            print("\nInterrupted (Ctrl-C); the checkpoints written so far are kept.", file=sys.stderr)
            status = preemption.EXIT_STATUS
        else:
            traceback.print_exc()
            status = 1
    else:
        return 0
    if jax.process_count() > 1:  # a return would wait in JAX's shutdown barrier for peers that are gone
        peer_failure.exit_now(status)
    return status


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=_parse_flags)
