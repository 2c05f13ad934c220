"""jaxgan.config_check: every invalid field reported at once, before anything is read or compiled."""

import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from experiments.configs import horse2zebra
from jaxgan import config_check


@pytest.mark.parametrize("variant", ["", "demo", "cpu", "tiny"])
def test_shipped_configs_are_valid(variant):
    assert config_check.problems(horse2zebra.get_config(variant)) == []


@pytest.mark.parametrize(
    "field, value, says",
    [
        ("gan_mode", "wgan", "one of 'lsgan', 'vanilla', 'hinge'"),
        ("model.dtype", "float64", "one of 'float32', 'bfloat16', 'float16'"),
        ("lr", -1.0, "a finite number in (0.0, inf)"),
        ("num_epochs", -3, "an integer >= 0"),
        ("batch_size", 0, "an integer >= 1"),
        ("batch_size", 2.5, "an integer"),
        ("beta1", 1.0, "a finite number in [0.0, 1.0)"),
        ("ema_decay", 1.5, "a finite number in [0.0, 1.0)"),
        ("lr", float("nan"), "a finite number in (0.0, inf)"),
        ("lr", float("inf"), "a finite number in (0.0, inf)"),  # not only at the first step
        ("lambda_cycle", float("inf"), "a finite number in [0.0, inf)"),
        ("model.conv_impl", "fast", "one of auto, native, cpu"),
        ("flip", "yes", "True or False"),
        ("dataset", "folder:", "'synthetic', 'folder:PATH'"),
        ("profile_steps", "9..3", "'N..M'"),
        ("stall_timeout_s", -1.0, "a number in [0.0, inf)"),
        ("crop_size", 30, "a multiple of 4"),
        ("crop_size", 20, "at least 24 for the PatchGAN's 3 stride-2 layers"),
        ("load_size", 100, "must be >= crop_size=256"),
    ],
)
def test_each_rule_names_the_field_and_what_it_accepts(field, value, says):
    config = horse2zebra.get_config()
    node = config
    *path, leaf = field.split(".")
    for p in path:
        node = node[p]
    with node.ignore_type():
        node[leaf] = value
    found = config_check.problems(config)
    assert len(found) == 1 and found[0].startswith(field.split(".")[-1] if field == "load_size" else field), found
    assert says in found[0]


@pytest.mark.parametrize("rules", [((1, 2),), (("res_(", (None,)),), (("conv", "model"),), "conv"])
def test_malformed_partition_rules_are_a_config_error(rules):
    config = horse2zebra.get_config()
    with config.ignore_type():
        config.partition_rules = rules
    found = config_check.problems(config)
    assert len(found) == 1 and found[0].startswith("partition_rules=") and "pairs (regex" in found[0], found


def test_a_rule_may_split_one_dimension_over_several_axes():
    config = horse2zebra.get_config()
    config.partition_rules = ((r"res_\d+/conv_\d/kernel", (None, None, None, ("data", "model"))),)
    assert config_check.problems(config) == []


def test_all_problems_in_one_message():
    config = horse2zebra.get_config()
    config.lr, config.num_epochs, config.gan_mode = -1.0, -3, "wgan"
    with pytest.raises(config_check.ConfigError) as info:
        config_check.check(config)
    message = str(info.value)
    assert message.startswith("3 invalid config fields") and all(
        f in message for f in ("lr=", "num_epochs=", "gan_mode=")
    )


def test_the_command_reports_them_before_reading_data(tmp_path):
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.horse2zebra", f"--workdir={tmp_path}",
         "--config.dataset=folder:/no/such/folder", "--config.gan_mode=wgan", "--config.model.dtype=float64",
         "--config.lr=-1", "--config.num_epochs=-3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "4 invalid config fields" in proc.stderr and "Traceback" not in proc.stderr
    assert "/no/such/folder" not in proc.stderr  # the data were not looked at
    assert not (tmp_path / "config.json").exists() and time.perf_counter() - t < 120


def test_the_command_refuses_a_missing_config_file_a_misspelled_field_or_variant_and_an_empty_workdir(tmp_path):
    def run(*args, cwd=ROOT):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.run([sys.executable, "-m", "experiments.horse2zebra", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    missing = run(f"--workdir={tmp_path / 'a'}", "--config=experiments/configs/nope.py")
    assert missing.returncode == 2 and "nope.py" in missing.stderr and "No such file" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "a").exists()  # nothing created
    typo = run(f"--workdir={tmp_path / 'b'}", "--config.lrr=1")
    assert typo.returncode == 2 and typo.stderr.strip() == (
        'error: no config field \'lrr\' for a --config override (Did you mean "lr" instead of "lrr"?)'
    )
    variant = run(f"--workdir={tmp_path / 'c'}", "--config=experiments/configs/horse2zebra.py:Tiny")
    assert variant.returncode == 2 and variant.stderr.strip() == (  # was ml_collections' traceback of the file
        "error: --config=experiments/configs/horse2zebra.py:Tiny: ValueError: Unknown config variant 'Tiny'; "
        "known: 'demo', 'cpu', 'tiny'."
    )
    assert not (tmp_path / "c").exists()
    (tmp_path / "cwd").mkdir()
    empty = run("--workdir=", cwd=tmp_path / "cwd")  # an unset $WORKDIR in a script
    assert empty.returncode != 0 and "--workdir is empty" in empty.stderr
    assert not list((tmp_path / "cwd").iterdir())  # no run written into the current folder


def test_an_infinite_stall_timeout_means_never():
    config = horse2zebra.get_config()
    config.stall_timeout_s = float("inf")
    assert config_check.problems(config) == []
