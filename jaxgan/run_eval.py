"""Evaluate a training run: both directions, with the baselines that say what the numbers mean.

For one checkpoint (the newest, or ``step``) or every kept checkpoint of a run:

* FID/KID of G(testA) against testB and of F(testB) against testA, at the test transform
  (``load_test_split``: bicubic resize to ``crop_size``; outputs quantised to uint8 as
  ``jaxgan.translate`` saves them, rounded), with the EMA or the raw generator weights;
* **identity**: testA against testB (and back), the score of not translating at all;
* **noise floor**: real against real, the two halves of the larger test split; no
  translation can be told from real images better than this with so few images;
* on data with paired ground truth (the synthetic pair): L1 to the truth as well.

Real-image features are computed once per run. Results go to ``WORKDIR/eval/``: a JSON per
weights and step (``eval_ema_step400.json``: evaluating another step keeps it), and with several
checkpoints the curve as JSON, as TensorBoard scalars (``eval/*`` in ``WORKDIR/tensorboard``) and
as a PNG plot.

Command line: ``python -m jaxgan.evaluate --workdir RUN [--weights ema|raw] [--all_checkpoints]``.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxgan import evaluate, image_io, inception, inception_weights, input_pipeline, translate
from jaxgan.generator_loading import load_generator_from_run, run_config

DIRECTIONS = {"AtoB": ("A", "B"), "BtoA": ("B", "A")}  # direction -> (source domain, target domain)


class RunEvaluator:
    """Translates a run's test splits and scores them; holds the real images' features between checkpoints."""

    def __init__(
        self,
        workdir: str | pathlib.Path,
        inception_params: Any | None = None,
        batch_size: int = 20,
        dataset: str | None = None,
    ):
        """``dataset``: the run's data set in another place (``folder:PATH``, as in the config), if it moved."""
        self.workdir = pathlib.Path(workdir).absolute()
        saved = run_config(self.workdir)  # GeneratorLoadError where there is no run
        import ml_collections

        self.config = ml_collections.ConfigDict(saved)
        if dataset:
            self.config.dataset = dataset
        self.test = {d: input_pipeline.load_test_split(self.config, d) for d in ("A", "B")}
        for d, split in self.test.items():
            if not len(split.images):
                raise evaluate.EvaluationError(f"The run's data set has no readable test{d} images.")
        self.batch_size = batch_size
        self.feature_fn: Callable | None = None
        self.fid_unavailable = evaluate.too_few_for_fid(*(len(s.images) for s in self.test.values()))
        if self.fid_unavailable is None and (inception_params is not None or inception_weights.weights_available()):
            params = inception_params if inception_params is not None else inception_weights.load_inception_params()
            self.feature_fn = inception.make_feature_fn(params)
        elif self.fid_unavailable is None:
            self.fid_unavailable = f"no FID Inception weights ({inception_weights.INSTALL_COMMAND})"
        self._real = {d: image_io.to_uint8(s.images) for d, s in self.test.items()}
        self._features: dict[str, np.ndarray] = {}

    def steps(self) -> list[int]:
        """The run's checkpoint steps, oldest first."""
        folder = self.workdir / "checkpoints"
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []

    def _feats(self, key: str, images: Sequence[np.ndarray]) -> np.ndarray:
        if key not in self._features:
            self._features[key] = evaluate.inception_features(images, self.feature_fn)
        return self._features[key]

    def baselines(self) -> dict[str, float]:
        """Identity (not translating) both ways, and the noise floor of real-vs-real halves of the larger split."""
        out: dict[str, float] = {}
        if self.feature_fn is None:
            return out
        fa, fb = self._feats("A", self._real["A"]), self._feats("B", self._real["B"])
        for label, real, fake in (("AtoB", fb, fa), ("BtoA", fa, fb)):
            m = evaluate.distribution_metrics(real, fake, kid_subset_size=min(1000, len(real), len(fake)))
            out.update({f"identity/{label}/fid": m["fid"], f"identity/{label}/kid": m["kid"]})
        larger = fb if len(fb) >= len(fa) else fa
        half = len(larger) // 2
        if half >= 2:  # two halves of 2 images at least (a test split of 3 has no noise floor)
            m = evaluate.distribution_metrics(larger[:half], larger[half : 2 * half], kid_subset_size=half)
            out.update({"noise_floor/fid": m["fid"], "noise_floor/kid": m["kid"], "noise_floor/n": half})
        return out

    def translations(self, step: int | None, weights: str) -> tuple[dict[str, np.ndarray], int, str]:
        """``{"AtoB": uint8[N, H, W, 3], "BtoA": ...}`` of one checkpoint, its step and the weights really used."""
        out, used, at = {}, weights, -1
        for direction, (src, _) in DIRECTIONS.items():
            gen, params, at, used = load_generator_from_run(self.workdir, direction, step, weights)
            fake = translate.generate(gen, params, self.test[src].images, self.batch_size)
            out[direction] = image_io.to_uint8(fake)
        return out, at, used

    def score(self, fakes: dict[str, np.ndarray]) -> dict[str, float]:
        """FID/KID of each direction against its target domain (and L1 to paired truth where there is one)."""
        out: dict[str, float] = {}
        for direction, (src, dst) in DIRECTIONS.items():
            truth = self.test[src].truth
            if truth is not None:
                l1 = evaluate.paired_l1(list(fakes[direction]), list(image_io.to_uint8(truth)))
                out[f"{direction}/l1"] = l1["l1"]
            if self.feature_fn is not None:
                real = self._feats(dst, self._real[dst])
                fake = evaluate.inception_features(fakes[direction], self.feature_fn)
                m = evaluate.distribution_metrics(real, fake, kid_subset_size=min(1000, len(real), len(fake)))
                out.update({f"{direction}/fid": m["fid"], f"{direction}/kid": m["kid"]})
        return out


def evaluate_run(
    workdir: str | pathlib.Path,
    weights: str = "ema",
    all_checkpoints: bool = False,
    step: int | None = None,
    inception_params: Any | None = None,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Evaluate the newest checkpoint (or ``step``, or all kept ones); writes ``WORKDIR/eval/`` and returns it all.

    ``dataset`` replaces the run's saved one (a data set that has moved).
    """
    ev = RunEvaluator(workdir, inception_params, dataset=dataset)
    steps = ev.steps() if all_checkpoints else [step]
    if not ev.steps():
        raise evaluate.EvaluationError(f"No checkpoint in {ev.workdir / 'checkpoints'}.")
    rows = []
    for s in steps:
        fakes, at, used = ev.translations(s, weights)
        rows.append({"step": at, "weights": used, **ev.score(fakes)})
    result = {
        "workdir": str(ev.workdir),
        "dataset": ev.config.get("dataset"),
        "crop_size": ev.config.get("crop_size"),
        "n_test": {d: len(s.images) for d, s in ev.test.items()},
        "fid_available": ev.feature_fn is not None,
        "fid_unavailable": ev.fid_unavailable,  # why not, or None
        "baselines": ev.baselines(),
        "checkpoints": rows,
    }
    out = ev.workdir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    name = f"eval_{weights}_curve" if all_checkpoints else eval_file_name(weights, rows[0]["step"])
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    if all_checkpoints:
        _write_curve(ev.workdir, out / f"{name}.png", rows, result["baselines"], weights)
    return result


def eval_file_name(weights: str, step: int) -> str:
    """The name (without ``.json``) of one checkpoint's evaluation in ``WORKDIR/eval/``, e.g. ``eval_ema_step400``."""
    return f"eval_{weights}_step{step}"


def _write_curve(workdir: pathlib.Path, png: pathlib.Path, rows: list[dict], baselines: dict, weights: str) -> None:
    """TensorBoard scalars ``eval/<weights>/<metric>`` per step, and a PNG plot of FID against the step."""
    from tensorboardX import SummaryWriter

    with SummaryWriter(str(workdir / "tensorboard")) as writer:
        for row in rows:
            for key, value in row.items():
                if isinstance(value, float):
                    writer.add_scalar(f"eval/{weights}/{key}", value, row["step"])
    series = {d: [(r["step"], r[f"{d}/fid"]) for r in rows if f"{d}/fid" in r] for d in DIRECTIONS}
    if any(series.values()):
        lines = {f"{d} FID": pts for d, pts in series.items()}
        flat = {f"identity {d}": baselines[f"identity/{d}/fid"] for d in DIRECTIONS if f"identity/{d}/fid" in baselines}
        if "noise_floor/fid" in baselines:
            flat["noise floor"] = baselines["noise_floor/fid"]
        image_io.save_image(png, line_plot(lines, flat, title=f"FID by checkpoint ({weights} weights)"))


_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (127, 127, 127)]


def line_plot(
    lines: dict[str, list[tuple[float, float]]], flat: dict[str, float], title: str, size: tuple[int, int] = (640, 400)
) -> np.ndarray:
    """A small line chart as ``uint8[H, W, 3]``: one polyline per entry of ``lines``, dashed levels for ``flat``.

    Axes span every point and level; the legend names each colour; the y range is printed at the axis.
    """
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 60, 170, 30, 40
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    xs = [x for pts in lines.values() for x, _ in pts] or [0.0, 1.0]
    ys = [y for pts in lines.values() for _, y in pts] + list(flat.values()) or [0.0, 1.0]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    y0, y1 = y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0)

    def px(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x0) / (x1 - x0) * (w - left - right),
            h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom),
        )

    draw.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    draw.text((left, 8), title, fill=(0, 0, 0))
    draw.text((4, top), f"{y1:.0f}", fill=(0, 0, 0))
    draw.text((4, h - bottom - 12), f"{y0:.0f}", fill=(0, 0, 0))
    draw.text((left, h - bottom + 6), f"step {x0:.0f}", fill=(0, 0, 0))
    draw.text((w - right - 70, h - bottom + 6), f"step {x1:.0f}", fill=(0, 0, 0))
    entries = [(name, pts, False) for name, pts in lines.items()] + [(n, v, True) for n, v in flat.items()]
    for i, (name, data, dashed) in enumerate(entries):
        colour = _COLOURS[i % len(_COLOURS)]
        if dashed:
            y = px(x0, data)[1]
            for xa in range(left, w - right, 12):
                draw.line([(xa, y), (min(xa + 6, w - right), y)], fill=colour, width=2)
        elif len(data) > 1:
            draw.line([px(x, y) for x, y in data], fill=colour, width=2)
        for x, y in [] if dashed else data:
            cx, cy = px(x, y)
            draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
        ly = top + 16 * i
        draw.line([(w - right + 10, ly + 6), (w - right + 30, ly + 6)], fill=colour, width=3)
        draw.text((w - right + 36, ly), name, fill=(0, 0, 0))
    return np.asarray(image)
