"""jaxgan.cpu_memory: XLA:CPU's temporaries stay mapped between calls (each case in a fresh process)."""

import json
import os
import pathlib
import platform
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc settings (Linux only)"
)

# A jitted function whose XLA buffer plan has ~256 MB of temporaries; prints, as JSON, whether the
# settings were applied, the dispatch mode, the planned temp size and the minor page faults of 4 calls.
_PROBE = r"""
import json, resource, sys
from jaxgan import cpu_memory
early = sys.argv[1] == "early"
if not early:
    import jax
    jax.devices()  # backends exist before the call
applied = cpu_memory.reuse_step_memory() if sys.argv[1] != "off" else None
import jax, jax.numpy as jnp, numpy as np

@jax.jit
def f(x):
    return sum(jnp.sum(jnp.sin(x * i) * jnp.cos(x * i)) for i in range(1, 5))

x = jnp.ones((2048, 4096))
temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
cpu_memory.release_free_memory()  # the block goes back to the system: the next call maps it again
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
f(x).block_until_ready()
faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
batch = cpu_memory.settle({"A": jax.device_put(np.ones((64, 256, 256, 3), np.float32))})
print(json.dumps({"applied": applied, "active": cpu_memory.active(), "settled": batch["A"].is_ready(),
                  "async": jax.config.values["jax_cpu_enable_async_dispatch"],
                  "temp_pages": temp // 4096, "faults": faults}))
"""


def _probe(mode: str, **env: str) -> dict:
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
    for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES"):
        full_env.pop(k, None)
    proc = subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_temporaries_are_reused_after_the_first_call():
    r = _probe("early")
    assert r["applied"] is True and r["active"] is True and r["async"] is False
    assert r["settled"] is True
    assert r["temp_pages"] > 50_000  # the probe is meaningful: >200 MB of temporaries
    first, *later, after_release = r["faults"]
    assert first > r["temp_pages"] // 2 // 512  # the first call maps its memory (4 KB or 2 MB pages)
    assert max(later) < 0.02 * r["temp_pages"], r
    assert after_release > 0.5 * first, r  # release_free_memory() gave it back


def test_without_it_every_call_maps_its_temporaries_anew():
    # The control that makes the test above mean something: glibc's default maps and unmaps the block per call.
    r = _probe("off")
    assert r["applied"] is None and r["active"] is False and r["async"] is True
    first, *later = r["faults"]
    assert min(later) > 0.5 * first, r  # (the last call follows a release_free_memory() that does nothing)


def test_refuses_once_backends_exist():
    r = _probe("late")
    assert r["applied"] is False and r["active"] is False and r["async"] is True  # dispatch mode untouched


def test_leaves_processes_that_may_use_an_accelerator_alone():
    code = "from jaxgan import cpu_memory; import jax; print(cpu_memory.reuse_step_memory(), "
    code += "jax.config.values['jax_cpu_enable_async_dispatch'])"
    env = {**os.environ, "JAX_PLATFORMS": "cuda"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["False", "True"]
