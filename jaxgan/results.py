"""The end of a run: translate the test splits, score them, write the results page and its JSON.

``write_results`` is called by ``loop.train_and_evaluate`` after training and by
``results_only`` (``--mode=results``) on a finished run. On the synthetic pair the scores
are L1 errors to the paired ground truth; on real photos FID/KID of both directions,
next to the identity (not translating) and noise-floor (real vs real) baselines.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import os
import pathlib
import platform
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgan import (
    checkpoint,
    config_check,
    conv_forms,
    cpu_memory,
    input_pipeline,
    output_files,
    parallel,
    report,
    train,
)

log = logging.getLogger("jaxgan.loop")  # the runner's log: results lines appear with its other lines
PyTree = Any


class ResultsError(RuntimeError):
    """The results page cannot be written (an unwritable run folder)."""


def to_host(x: jax.Array) -> np.ndarray:
    """A replicated (possibly multi-process) array -> NumPy, from this process's own copy."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def replicated(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """Host data identical on every process -> a replicated global array."""
    return cpu_memory.settle(jax.make_array_from_callback(x.shape, NamedSharding(mesh, P()), lambda idx: x[idx]))


def make_sample_fn(cfg: train.StepConfig) -> Callable:
    gen = cfg.generator

    @functools.partial(jax.jit, compiler_options=conv_forms.xla_compiler_options(backend=jax.default_backend()))
    def sample(params: PyTree, real_a: jax.Array, real_b: jax.Array) -> dict[str, jax.Array]:
        def g(name: str, x: jax.Array) -> jax.Array:
            return gen.apply({"params": params[name]}, x).astype(jnp.float32)

        fake_b = g("g_ab", real_a)
        fake_a = g("g_ba", real_b)
        return {"fake_b": fake_b, "rec_a": g("g_ba", fake_b), "fake_a": fake_a, "rec_b": g("g_ab", fake_a)}

    return sample


def translate_split(
    sample_fn: Callable, params: PyTree, a: np.ndarray, b: np.ndarray, mesh: Mesh, batch: int = 8
) -> dict[str, np.ndarray]:
    """Run the sample function over two test splits in chunks; returns host arrays."""
    n = max(len(a), len(b))
    chunks: dict[str, list[np.ndarray]] = {"fake_b": [], "rec_a": [], "fake_a": [], "rec_b": []}
    for i in range(0, n, batch):
        ca, cb = a[i : i + batch], b[i : i + batch]
        k = batch  # pad both to a full chunk: one compiled shape
        pa = np.concatenate([ca, np.zeros((k - len(ca), *a.shape[1:]), a.dtype)]) if len(ca) else np.zeros_like(a[:k])
        pb = np.concatenate([cb, np.zeros((k - len(cb), *b.shape[1:]), b.dtype)]) if len(cb) else np.zeros_like(b[:k])
        out = sample_fn(params, replicated(pa, mesh), replicated(pb, mesh))
        for key, lim in (("fake_b", len(ca)), ("rec_a", len(ca)), ("fake_a", len(cb)), ("rec_b", len(cb))):
            chunks[key].append(to_host(out[key])[:lim])
    return {k: np.concatenate(v) for k, v in chunks.items()}


def write_results(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    state: train.TrainState,
    mesh: Mesh,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Translate both test splits and write ``workdir/results/index.html``; returns the summary numbers.

    For the synthetic pair the page reports the L1 error to the paired ground
    truth next to the identity (do-nothing) baseline, raw and 4x4-pooled.
    """
    limit = int(config.get("results_max_images", 0) or 0) or None
    test_a = input_pipeline.load_test_split(config, "A", max_images=limit)
    test_b = input_pipeline.load_test_split(config, "B", max_images=limit)
    weights = str(config.get("eval_weights", "ema"))
    params = state.generator_params(weights)
    out = translate_split(make_sample_fn(state.config), params, test_a.images, test_b.images, mesh)
    summary: dict[str, Any] = {}
    if test_a.truth is not None and test_b.truth is not None:
        from jaxgan import synthetic

        for label, src, fake, truth in (("AtoB", test_a.images, out["fake_b"], test_a.truth),
                                        ("BtoA", test_b.images, out["fake_a"], test_b.truth)):  # fmt: skip
            pool = 4 if src.shape[1] % 4 == 0 and src.shape[2] % 4 == 0 else 1
            for k, v in synthetic.translation_error(fake, src, truth, pool=pool).items():
                summary[f"{label}/{k}"] = v
    if jax.process_index() == 0 and config.get("results_fid", True):
        summary.update(_fid_kid(test_a.images, test_b.images, out))
    if jax.process_index() == 0:
        sections = {
            "A → B  (G)": {"names": test_a.names, "input": test_a.images, "translated": out["fake_b"],
                           "reconstructed": out["rec_a"], "truth": test_a.truth},
            "B → A  (F)": {"names": test_b.names, "input": test_b.images, "translated": out["fake_a"],
                           "reconstructed": out["rec_b"], "truth": test_b.truth},
        }  # fmt: skip
        lines = {"dataset": str(config.dataset), "step": str(int(to_host(state.step))),
                 "weights": "EMA" if weights == "ema" and state.ema else "raw"}  # fmt: skip
        lines.update({k: f"{v:.4f}" if isinstance(v, float) else str(v) for k, v in summary.items()})
        index = report.write_results_page(pathlib.Path(workdir) / "results", sections, lines)
        _write_summary_json(pathlib.Path(workdir) / "results" / "summary.json", summary, lines, extra)
        log.info("Results page: %s", index)
    return summary


def _write_summary_json(path: pathlib.Path, summary: dict[str, Any], lines: dict[str, str], extra: dict | None) -> None:
    """The results page's numbers as JSON, with what produced them (machine, versions, date, run facts)."""
    device = jax.devices()[0]
    record = {
        **{k: v for k, v in lines.items() if k in ("dataset", "step", "weights")},
        "results": summary,
        "machine": {"platform": device.platform, "device_kind": device.device_kind, "devices": jax.device_count(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "jax": jax.__version__},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **(extra if extra is not None else _training_facts(path, lines.get("step"))),
    }  # fmt: skip
    path.write_text(json.dumps(record, indent=2, default=str))


def _training_facts(path: pathlib.Path, step: Any) -> dict[str, Any]:
    """What the end of training recorded in ``path`` about the same ``step`` (its time, and the machine as
    ``trained_on``), for a page written again later by the results mode; nothing if it was of another step."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(previous, dict) or previous.get("step") != step:
        return {}
    facts = {k: previous[k] for k in ("train_wall_s", "steps_this_run") if k in previous}
    if facts:
        facts["trained_on"] = previous.get("trained_on", previous.get("machine"))
    return facts


def _fid_kid(test_a: np.ndarray, test_b: np.ndarray, out: dict[str, np.ndarray]) -> dict[str, Any]:
    """FID/KID of G(test A) vs test B and F(test B) vs test A, with the identity and noise-floor baselines.

    Without the FID Inception weights, or with a file that cannot be read as them: one ``fid`` entry that says
    so (with the install command, or the file and its error).
    """
    from jaxgan import evaluate, image_io, inception, inception_weights

    too_few = evaluate.too_few_for_fid(len(test_a), len(test_b))
    if too_few:
        log.warning("FID/KID skipped: %s.", too_few)
        return {"fid": f"unavailable: {too_few}"}
    if not inception_weights.weights_available():
        log.info("FID/KID skipped: no FID Inception weights (%s).", inception_weights.INSTALL_COMMAND)
        return {"fid": f"unavailable: no FID Inception weights ({inception_weights.INSTALL_COMMAND})"}
    try:
        params = inception_weights.load_inception_params()
    except inception_weights.FidWeightsError as e:  # a damaged weights file: the page without FID/KID, and why
        first = str(e).splitlines()[0]
        log.warning("FID/KID skipped: %s", first)
        return {"fid": f"unavailable: {first}"}
    fn = inception.make_feature_fn(params)
    feats = {k: evaluate.inception_features(image_io.to_uint8(v), fn) for k, v in
             (("A", test_a), ("B", test_b), ("fake_b", out["fake_b"]), ("fake_a", out["fake_a"]))}  # fmt: skip

    def metric(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
        return evaluate.distribution_metrics(real, fake, kid_subset_size=min(1000, len(real), len(fake)))

    result: dict[str, Any] = {}
    for label, real, fake, source in (("AtoB", "B", "fake_b", "A"), ("BtoA", "A", "fake_a", "B")):
        m, idt = metric(feats[real], feats[fake]), metric(feats[real], feats[source])
        result.update({f"{label}/fid": m["fid"], f"{label}/kid": m["kid"],
                       f"{label}/fid_identity": idt["fid"], f"{label}/kid_identity": idt["kid"]})  # fmt: skip
    larger = feats["B"] if len(feats["B"]) >= len(feats["A"]) else feats["A"]
    half = len(larger) // 2
    if half >= 2:
        floor = metric(larger[:half], larger[half : 2 * half])
        result.update({"fid_noise_floor": floor["fid"], "kid_noise_floor": floor["kid"]})
    return result


def log_summary(summary: dict[str, Any]) -> None:
    """One console line per direction with whichever results exist (synthetic L1, FID/KID)."""
    for d in ("AtoB", "BtoA"):
        if f"{d}/l1" in summary:
            log.info("%s: L1 to the ground truth %.4f vs identity %.4f (ratio %.3f; 4x4-pooled %.3f); "
                     "inside the shapes %.4f vs %.4f, background %.4f",
                     d, summary[f"{d}/l1"], summary[f"{d}/l1_identity"], summary[f"{d}/ratio"],
                     summary[f"{d}/pooled_ratio"], summary[f"{d}/shapes_l1"], summary[f"{d}/shapes_l1_identity"],
                     summary[f"{d}/background_l1"])  # fmt: skip
        if f"{d}/fid" in summary:
            extra = ""
            if f"{d}/fid_identity" in summary:
                extra = f" (not translating: FID {summary[f'{d}/fid_identity']:.2f}"
                if "fid_noise_floor" in summary:
                    extra += f"; real vs real: {summary['fid_noise_floor']:.2f}"
                extra += ")"
            log.info("%s: FID %.2f, KID %.4f%s", d, summary[f"{d}/fid"], summary[f"{d}/kid"], extra)
    if isinstance(summary.get("fid"), str):
        log.info("FID/KID %s", summary["fid"])


# Fields that describe the machine a command runs on, not the run: never taken from a run's config.json.
MACHINE_FIELDS = ("mesh_shape", "mesh_axes", "partition_rules")


def config_of_run(
    workdir: str | pathlib.Path, config: ml_collections.ConfigDict, keep: Iterable[str] = ()
) -> ml_collections.ConfigDict:
    """The config a run was trained with (``WORKDIR/config.json``), laid over ``config``.

    ``keep``: dotted fields whose value in ``config`` wins (the command line's overrides, e.g.
    ``results_max_images`` or a ``dataset`` that has moved). Fields the saved run lacks (written by an older
    version) keep ``config``'s value; the mesh fields stay ``config``'s (they describe this machine).
    """
    saved = checkpoint.load_config(workdir)
    if saved is None:
        raise checkpoint.CheckpointError(f"No run in {workdir} (no config.json).")
    merged = ml_collections.ConfigDict(config.to_dict())
    keep = set(keep)

    def lay(target: ml_collections.ConfigDict, values: dict, prefix: str) -> None:
        for key, value in values.items():
            path = prefix + key
            if path in keep or path in MACHINE_FIELDS or key not in target:
                continue
            if isinstance(target[key], ml_collections.ConfigDict) and isinstance(value, dict):
                lay(target[key], value, path + ".")
            else:
                target[key] = tuple(value) if isinstance(target[key], tuple) and isinstance(value, list) else value

    lay(merged, saved, "")
    return merged


def results_only(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, float]:
    """Restore the newest checkpoint of ``workdir`` and (re)write its results page."""
    config_check.check(config)
    workdir = pathlib.Path(workdir)
    saved = checkpoint.load_config(workdir)
    if saved is None:
        raise checkpoint.CheckpointError(f"No run in {workdir} (no config.json).")
    checkpoint.check_compatible(saved, config)
    if jax.process_index() == 0:  # before the restore and the translations, not after
        output_files.writable_folder(workdir / "results", ResultsError)
    config = ml_collections.ConfigDict(config.to_dict())
    config.steps_per_epoch = int(saved.get("steps_per_epoch", config.steps_per_epoch))
    mesh = parallel.mesh_from_config(config)
    parallel.connect_collectives(mesh)  # several CPU processes: now, while they are together
    _, _, target = parallel.state_layout(config, mesh)
    # No clean-up of temporary folders: a run may be saving beside this reader.
    ckpt = checkpoint.Checkpointer(workdir, keep=int(config.keep_checkpoints), cleanup=False)
    try:
        state, step = ckpt.restore_latest(target)
    finally:
        ckpt.close()
    if state is None:
        raise checkpoint.CheckpointError(f"No checkpoint in {workdir / 'checkpoints'}.")
    summary = write_results(config, workdir, state, mesh)
    if jax.process_index() == 0:
        log_summary(summary)
    return summary
