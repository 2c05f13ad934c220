"""Subprocess worker for the multi-device tests (run with fake CPU devices; not collected by pytest).

    python tests/parallel_worker.py MODE OUT [ARGS...]

Modes (each writes ``OUT`` as .npz or .json):
  equivalence OUT            1 step on all devices vs 1 step on the first device only, same global batch
                             (parameters in OUT.npz, OUT.one.npz, and OUT.other_batch.npz for another batch)
  multiprocess OUT PORT N I  process I of N joined on 127.0.0.1:PORT: 1 step, process 0 saves the parameters
  save OUT CKPT STEPS        train STEPS steps on all devices, save an Orbax checkpoint in CKPT
  resume OUT CKPT            restore CKPT onto all devices, train one more step
"""

from __future__ import annotations

import json
import sys

import jax

MODE = sys.argv[1]
if MODE == "multiprocess":
    port, nproc, pid = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid)

import pathlib  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments.configs import horse2zebra  # noqa: E402
from jaxgan import checkpoint, input_pipeline, parallel, train  # noqa: E402

GLOBAL_BATCH = 4


def config():
    c = horse2zebra.get_config("tiny")
    c.batch_size = GLOBAL_BATCH
    c.pool_size = 2  # smaller than the 4 fakes of one step: the pool fills, then swaps
    # The forms that auto picks on GPUs for 3 of the 4 conv kinds, and the quicker compile on CPU (about half
    # the time: tests/conftest.py). The default (CPU) forms run across processes in the experiment command's
    # test; tests/test_conv_forms.py checks every form against native.
    c.model.conv_impl = "native"
    return c


def flat(tree) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(p): np.asarray(x.addressable_data(0)) for p, x in leaves}


def first_moments(state) -> dict[str, np.ndarray]:
    """Adam's first moment of every parameter: after one step it is exactly 0.5 * the step's gradient."""
    return flat({k: opt[0].mu for k, opt in state.opt_state.items()})


def setup(mesh):
    """(config with steps_per_epoch from the data, stream, abstract state, state shardings)."""
    c = config()
    stream = input_pipeline.create_train_stream(c, process_index=jax.process_index(), process_count=jax.process_count())
    c.steps_per_epoch = stream.steps_per_epoch
    abstract = jax.eval_shape(lambda: train.create_train_state(c, jax.random.PRNGKey(0)))
    return c, stream, abstract, parallel.state_sharding(abstract, mesh)


def run(mesh, steps=1, state=None, start=0):
    c, stream, _, shardings = setup(mesh)
    if state is None:
        state = train.init_train_state(c, jax.random.PRNGKey(0), shardings)
    step_fn = parallel.make_train_step(shardings, mesh)
    losses = []
    for s in range(start, start + steps):
        state, m = step_fn(state, parallel.global_batch(stream.batch(s), mesh))
        losses.append(float(np.asarray(m["loss_g_total"].addressable_data(0))))
    return state, losses, shardings, stream


def main() -> None:
    out = sys.argv[2]
    if MODE == "equivalence":
        s4, l4, _, _ = run(parallel.make_mesh())
        np.savez(out + ".npz", **flat(s4.params))
        np.savez(out + ".mu.npz", **first_moments(s4))
        s1, l1, _, _ = run(parallel.make_mesh(devices=jax.devices()[:1]))
        np.savez(out + ".one.npz", **flat(s1.params))
        np.savez(out + ".one.mu.npz", **first_moments(s1))
        # Negative control: one device on another global batch, as a wrong split or a missing sum would be.
        other, _, _, _ = run(parallel.make_mesh(devices=jax.devices()[:1]), start=1)
        np.savez(out + ".other_batch.npz", **flat(other.params))
        np.savez(out + ".other_batch.mu.npz", **first_moments(other))
        a = flat({"pool_a": s4.pool_a, "pool_b": s4.pool_b})
        b = flat({"pool_a": s1.pool_a, "pool_b": s1.pool_b})
        result = {
            "devices": jax.device_count(),
            "losses4": l4,
            "losses1": l1,
            "pool_counts_equal": all(np.array_equal(a[k], b[k]) for k in a if "count" in k),
            "pool_max_abs_diff": max(float(np.max(np.abs(a[k] - b[k]))) for k in a),
        }
        pathlib.Path(out).write_text(json.dumps(result))
    elif MODE == "multiprocess":
        mesh = parallel.make_mesh()
        state, losses, _, stream = run(mesh)
        rows = {k: v.tolist() for k, v in stream.image_indices(0).items()}
        if jax.process_index() == 0:
            np.savez(out, **flat(state.params))
            np.savez(out + ".mu.npz", **first_moments(state))
        pathlib.Path(f"{out}.{jax.process_index()}.json").write_text(
            json.dumps(
                {
                    "losses": losses,
                    "rows_step0": rows,
                    "local_devices": jax.local_device_count(),
                    "devices": jax.device_count(),
                }
            )  # fmt: skip
        )
    elif MODE == "save":
        ckpt_dir, steps = sys.argv[3], int(sys.argv[4])
        state, _, _, _ = run(parallel.make_mesh(), steps=steps)
        ck = checkpoint.Checkpointer(ckpt_dir)
        ck.save(steps, state)
        ck.close()
        np.savez(out, **flat(state.params))
    elif MODE == "resume":
        ckpt_dir = sys.argv[3]
        mesh = parallel.make_mesh()
        _, _, abstract, shardings = setup(mesh)
        target = jax.tree_util.tree_map(
            lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), abstract, shardings
        )
        ck = checkpoint.Checkpointer(ckpt_dir)
        state, step = ck.restore_latest(target)
        ck.close()
        restored = flat(state.params)
        devices_of_a_leaf = len(state.params["g_ab"]["conv_in"]["kernel"].sharding.device_set)
        state, _, _, _ = run(mesh, steps=1, state=state, start=step)
        np.savez(out, **{f"restored{k}": v for k, v in restored.items()}, **flat(state.params))
        final_step = int(np.asarray(state.step.addressable_data(0)))
        meta = {"step": int(step), "devices": devices_of_a_leaf, "final_step": final_step}
        pathlib.Path(out + ".json").write_text(json.dumps(meta))
    else:
        raise SystemExit(f"unknown mode {MODE}")


if __name__ == "__main__":
    main()
