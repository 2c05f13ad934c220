"""jaxgan's commands keep JAX's persistent compilation cache: the second process reads what the first compiled."""

import os
import subprocess
import sys

from conftest import ROOT, cpu_devices_env

# What a command does first (compile_cache.enable), then one compilation; prints the folder and the cache hits.
_PROGRAM = """
import jax, jax.numpy as jnp
from jax import monitoring
hits = []
monitoring.register_event_listener(lambda name, **kw: hits.append(name) if name.endswith("/cache_hits") else None)
from jaxgan import compile_cache
print(compile_cache.enable())
jax.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((32, 32))).block_until_ready()
print(len(hits), jax.config.jax_compilation_cache_max_size)
"""


def _run(env_changes: dict[str, str | None]) -> tuple[str, int, int]:
    """The program in a process without the test session's cache settings, with ``env_changes`` (None: unset)."""
    env = {**cpu_devices_env(1), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # cache even a quick compile
    for key in ("JAX_COMPILATION_CACHE_DIR", "JAX_COMPILATION_CACHE_MAX_SIZE", "JAXGAN_COMPILATION_CACHE"):
        env.pop(key, None)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    proc = subprocess.run([sys.executable, "-c", _PROGRAM], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    folder, counts = proc.stdout.strip().splitlines()[-2:]
    hits, max_size = (int(v) for v in counts.split())
    return folder, hits, max_size


def test_a_second_process_reads_the_first_ones_compilation(tmp_path):
    home = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    first = _run(home)
    assert first == (str(tmp_path / "xdg" / "jaxgan" / "xla"), 0, 4 << 30)  # bounded: JAX evicts past 4 GiB
    assert any((tmp_path / "xdg" / "jaxgan" / "xla").iterdir())
    assert _run(home)[1] >= 1  # read back, not compiled again


def test_the_users_choice_wins(tmp_path):
    off = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "JAXGAN_COMPILATION_CACHE": "off"}
    assert _run(off)[:2] == ("None", 0) and not (tmp_path / "xdg").exists()
    elsewhere = {**off, "JAXGAN_COMPILATION_CACHE": str(tmp_path / "mine")}
    assert _run(elsewhere)[0] == str(tmp_path / "mine") and any((tmp_path / "mine").iterdir())
    # JAX's own variable: used as it is, with the user's size limit (here: none).
    own = {**off, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax"), "JAX_COMPILATION_CACHE_MAX_SIZE": "-1"}
    assert _run(own)[0] == str(tmp_path / "jax")
    hits, max_size = _run(own)[1:]
    assert hits >= 1 and max_size == -1
    blocked = tmp_path / "file"
    blocked.write_text("")
    folder, hits, _ = _run({**off, "JAXGAN_COMPILATION_CACHE": str(blocked / "cache")})  # cannot be created
    assert folder == "None" and hits == 0 and os.path.isfile(blocked)


def test_every_command_turns_it_on(tmp_path):
    # Each command, stopped by a bad argument right after it starts (nothing compiled): the folder exists.
    missing = str(tmp_path / "missing")
    commands = {
        "train": ["-m", "experiments.horse2zebra", f"--workdir={tmp_path / 'run'}",
                  "--config=experiments/configs/horse2zebra.py:tiny", "--config.lr=-1"],
        "translate": ["-m", "jaxgan.translate", "--workdir", missing, "--input", missing, "--output", missing],
        "evaluate": ["-m", "jaxgan.evaluate", "--workdir", missing],
        "export": ["-m", "jaxgan.export", "--workdir", missing, "--format", "onnx", "--output", f"{missing}.onnx"],
    }  # fmt: skip
    for name, args in commands.items():
        xdg = tmp_path / f"xdg-{name}"
        env = {k: v for k, v in cpu_devices_env(1).items() if not k.startswith("JAX_COMPILATION_CACHE")}
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, env={**env, "XDG_CACHE_HOME": str(xdg)},
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, (name, proc.stderr)
        assert (xdg / "jaxgan" / "xla").is_dir(), name
