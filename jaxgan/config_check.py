"""Every field of an experiment config checked up front: one message that lists all invalid fields.

``check(config)`` runs before any data is read or anything is compiled (``loop.train_and_evaluate``
and the entry point call it), so a typo costs a second, not a traceback from deep inside JAX after
minutes of data loading. Each rule states its field, what it accepts, and what it got.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """Invalid config values; the message lists every one with what it accepts."""


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _int(low: int | None = None) -> Callable[[Any], str | None]:
    def rule(v: Any) -> str | None:
        if not _is_int(v):
            return "an integer"
        return None if low is None or v >= low else f"an integer >= {low}"

    return rule


def _num(
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = True,
    finite: bool = True,
) -> Callable:
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    kind = "a finite number" if finite else "a number"
    span = f"{kind} in {lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"

    def rule(v: Any) -> str | None:
        if not _is_num(v) or v != v:  # NaN fails too
            return span
        if finite and math.isinf(v):  # e.g. lr=inf: diverges only at the first step
            return span
        if low is not None and (v < low or (low_open and v == low)):
            return span
        if high is not None and (v > high or (high_open and v == high)):
            return span
        return None

    return rule


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"one of {', '.join(repr(c) for c in choices)}"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "True or False"


def _conv_impl(v: Any) -> str | None:
    from jaxgan import conv_forms

    try:
        conv_forms.parse_impl(v)
    except ValueError:
        return f"one of {', '.join(conv_forms.IMPLS)}, or 'kind=form,...' (kinds {', '.join(conv_forms.KINDS)})"
    return None


def _dataset(v: Any) -> str | None:
    ok = isinstance(v, str) and (v == "synthetic" or (v.startswith(("folder:", "tfds:")) and len(v.split(":", 1)[1])))
    return None if ok else "'synthetic', 'folder:PATH' or 'tfds:cycle_gan/NAME'"


def parse_profile_steps(spec: str) -> tuple[int, int] | None:
    """``config.profile_steps`` ``"N..M"`` (1-based, inclusive) -> ``(N, M)``; ``""`` -> None."""
    spec = str(spec or "").strip()
    if not spec:
        return None
    first, sep, last = spec.partition("..")
    try:
        n, m = int(first), int(last)
    except ValueError:
        n = m = 0
    if not sep or not 1 <= n <= m:
        raise ConfigError(f"config.profile_steps={spec!r}: use 'N..M' with 1 <= N <= M, e.g. '100..110'.")
    return n, m


def _profile(v: Any) -> str | None:
    try:
        parse_profile_steps(v)
    except ConfigError:
        return "'' or 'N..M' with 1 <= N <= M"
    return None


def _rules() -> dict[str, Callable[[Any], str | None]]:
    from jaxgan import input_pipeline, losses, train

    return {
        "seed": _int(0),
        "model.ngf": _int(1),
        "model.n_blocks": _int(0),
        "model.ndf": _int(1),
        "model.n_layers_d": _int(1),
        "model.norm_affine": _bool,
        "model.dtype": _one_of(*train.DTYPES),
        "model.remat": _bool,
        "model.conv_impl": _conv_impl,
        "gan_mode": _one_of(*losses.GAN_MODES),
        "lambda_cycle": _num(0.0, None),
        "lambda_identity": _num(0.0, None),
        "pool_size": _int(0),
        "freeze_inert_biases": _bool,
        "ema_decay": _num(0.0, 1.0),
        "eval_weights": _one_of("ema", "raw"),
        "lr": _num(0.0, None, low_open=True),
        "beta1": _num(0.0, 1.0),
        "beta2": _num(0.0, 1.0),
        "adam_eps": _num(0.0, None, low_open=True),
        "num_epochs": _int(0),
        "num_epochs_decay": _int(0),
        "num_train_steps": _int(0),
        "dataset": _dataset,
        "batch_size": _int(1),
        "load_size": _int(4),
        "crop_size": _int(4),
        "preprocess": _one_of(*input_pipeline.PREPROCESS_MODES),
        "flip": _bool,
        "synthetic_seed": _int(0),
        "synthetic_num_train": _int(1),
        "synthetic_num_test": _int(1),
        "log_every_steps": _int(1),
        "sample_every_steps": _int(0),
        "num_sample_images": _int(1),
        "checkpoint_every_steps": _int(0),
        "keep_checkpoints": _int(1),
        "results_max_images": _int(0),
        "results_fid": _bool,
        "profile_steps": _profile,
        "stall_timeout_s": _num(0.0, None, finite=False),  # inf: never
    }


def _get(config: Any, dotted: str) -> tuple[bool, Any]:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, (dict, ml_collections.ConfigDict)) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _axis_entry(entry: Any) -> bool:
    """One dimension's entry of a partition rule: None, an axis name, or a tuple of axis names."""
    if entry is None or isinstance(entry, str):
        return True
    return isinstance(entry, (tuple, list)) and all(isinstance(a, str) for a in entry)


def _valid_partition_rules(rules: Any) -> bool:
    """Pairs of (a compilable regex, a sequence of axis names or None)."""
    try:
        for regex, spec in rules:
            re.compile(regex)
            if isinstance(spec, str) or not all(_axis_entry(a) for a in spec):
                return False
    except (TypeError, ValueError, re.error):
        return False
    return True


def problems(config: ml_collections.ConfigDict) -> list[str]:
    """Every invalid field as ``"name=value: must be ..."``; [] when the config is valid. Absent fields are fine."""
    out = []
    for name, rule in _rules().items():
        present, value = _get(config, name)
        if present:
            want = rule(value)
            if want:
                out.append(f"{name}={value!r}: must be {want}")
    # Relations between fields.
    for field, size in (("crop_size", _get(config, "crop_size")),):
        if size[0] and _is_int(size[1]) and size[1] % 4:
            out.append(f"{field}={size[1]!r}: must be a multiple of 4 (the generator halves it twice)")
    crop, layers = _get(config, "crop_size")[1], _get(config, "model.n_layers_d")[1]
    if _is_int(crop) and _is_int(layers) and 0 < layers < 16 and crop < 3 * 2**layers:
        out.append(
            f"crop_size={crop!r}: must be at least {3 * 2**layers} for the PatchGAN's {layers} stride-2 layers "
            f"(model.n_layers_d={layers}: each halves the size, then two 4x4 convolutions need 3 pixels)"
        )
    epochs, decay = _get(config, "num_epochs")[1], _get(config, "num_epochs_decay")[1]
    steps = _get(config, "num_train_steps")[1] or 0
    if _is_int(epochs) and _is_int(decay) and epochs + decay < 1 and not steps:
        out.append("num_epochs + num_epochs_decay must be >= 1 (or set num_train_steps > 0)")
    load, crop, pre = (_get(config, k)[1] for k in ("load_size", "crop_size", "preprocess"))
    if _is_int(load) and _is_int(crop) and pre in ("resize_and_crop", "scale_width_and_crop") and load < crop:
        out.append(f"load_size={load} must be >= crop_size={crop} with preprocess={pre!r} (the crop comes from it)")
    rules = _get(config, "partition_rules")[1]
    if rules is not None and not _valid_partition_rules(rules):
        out.append(
            f"partition_rules={rules!r}: must be pairs (regex on the parameter path, per dimension None, an "
            "axis name or a tuple of them), e.g. ((r'res_\\d+/conv_\\d/kernel', (None, None, None, 'model')),)"
        )
    shape, axes = _get(config, "mesh_shape")[1], _get(config, "mesh_axes")[1]
    if shape is not None and axes is not None and len(tuple(shape)) != len(tuple(axes)):
        out.append(f"mesh_shape={tuple(shape)} and mesh_axes={tuple(axes)} must have the same length")
    return out


def check(config: ml_collections.ConfigDict) -> None:
    """Raise :class:`ConfigError` listing every invalid field (see :func:`problems`)."""
    found = problems(config)
    if found:
        raise ConfigError(
            f"{len(found)} invalid config field{'s' if len(found) > 1 else ''}:\n  "
            + "\n  ".join(found)
            + "\nFix them on the command line (--config.FIELD=VALUE) or in the config file."
        )
