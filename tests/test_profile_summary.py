"""The trace summary the quality run brings home: categories of real kernel names, times per step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from benchmarks import profile_summary, quality_gpu


@pytest.mark.parametrize(
    "name, expected",
    [
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", "conv"),
        ("sm80_xmma_dgrad_implicit_gemm_indexed_f32f32_tf32f32_f32_nhwckrsc_nchw", "conv"),
        ("cudnn::engines_precompiled::nchwToNhwcKernel", "conv"),
        ("convolution.12", "conv"),
        ("cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8", "gemm"),
        ("triton_gemm_dot_3", "gemm"),
        ("loop_add_fusion_3", "fusion"),
        ("input_reduce_fusion_12", "fusion"),
        ("MemcpyD2D", "copy"),
        ("transpose_copy_fusion.1", "copy"),
        ("rng_bit_generator", "other"),
        ("convert_bitcast_fusion.73", "fusion"),  # "convert" is not a convolution
        ("tanh_convert_fusion", "fusion"),
        ("__nv_static_conversion_kernel", "other"),
        ("splitKreduce_kernel", "gemm"),
    ],
)
def test_kernel_names_fall_into_their_categories(name, expected):
    assert profile_summary.category(name) == expected


def test_summary_of_a_cpu_trace_divides_by_the_steps(tmp_path):
    x, w = jnp.ones((2, 96, 96, 32)), jnp.ones((3, 3, 32, 32))
    layout = ("NHWC", "HWIO", "NHWC")  # XLA:CPU's own layout: no transposes around the conv
    f = jax.jit(
        lambda x, w: jnp.tanh(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=layout)).mean()
    )
    f(x, w).block_until_ready()
    jax.profiler.start_trace(str(tmp_path))
    for _ in range(4):
        f(x, w).block_until_ready()
    jax.profiler.stop_trace()
    one = profile_summary.summarize(tmp_path, steps=1)
    four = profile_summary.summarize(tmp_path, steps=4)
    assert one["where"] == "/host:CPU" and one["device_ms_per_step"] > 0
    assert four["device_ms_per_step"] == pytest.approx(one["device_ms_per_step"] / 4, rel=1e-2, abs=2e-3)
    assert four["kernels_per_step"] == pytest.approx(one["kernels_per_step"] / 4)
    # (XLA:CPU's names vary by version, e.g. a conv inside "ynn_fusion"; the names' categories are tested above.)
    times = [k["ms_per_step"] for k in one["top"]]
    assert times == sorted(times, reverse=True) and times[0] > 0
    for cat, c in one["categories"].items():
        named = [k["ms_per_step"] for k in one["top"] if k["category"] == cat]
        assert sum(named) <= c["ms_per_step"] + 1e-3 * len(named)  # each top kernel in its category (rounded)
    assert sum(c["share"] for c in one["categories"].values()) == pytest.approx(1.0, abs=1e-3)


def test_no_trace_is_an_error_and_the_quality_run_records_it(tmp_path):
    with pytest.raises(profile_summary.ProfileError, match="no \\*.xplane.pb"):
        profile_summary.summarize(tmp_path)
    assert "no *.xplane.pb" in quality_gpu._profile_summary(tmp_path)["error"]
    assert profile_summary.main([str(tmp_path)]) == 2


_GPU_TRACE = """
planes {
  name: "/device:GPU:0"
  lines {
    name: "Stream #14(Compute)"
    events { metadata_id: 1 offset_ps: 0 duration_ps: 6000000000 }
    events { metadata_id: 2 offset_ps: 7000000000 duration_ps: 2000000000 }
    events { metadata_id: 1 offset_ps: 9000000000 duration_ps: 6000000000 }
  }
  lines { name: "XLA Ops" events { metadata_id: 3 offset_ps: 0 duration_ps: 15000000000 } }
  event_metadata { key: 1 value { id: 1 name: "sm90_xmma_fprop_implicit_gemm_bf16bf16" } }
  event_metadata { key: 2 value { id: 2 name: "loop_add_fusion" } }
  event_metadata { key: 3 value { id: 3 name: "fusion.3" } }
}
planes { name: "/host:CPU" lines { name: "python" events { metadata_id: 1 duration_ps: 1000 } }
         event_metadata { key: 1 value { id: 1 name: "step" } } }
"""


def test_a_gpu_trace_counts_the_stream_kernels_once(tmp_path):
    from jax.profiler import ProfileData

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "host.xplane.pb").write_bytes(ProfileData.text_proto_to_serialized_xspace(_GPU_TRACE))
    s = profile_summary.summarize(tmp_path, steps=2)
    assert s["where"] == "/device:GPU:0" and s["kernels_per_step"] == 1.5
    assert s["device_ms_per_step"] == 7.0  # (6 + 2 + 6) ms over 2 steps; the "XLA Ops" line is not added again
    assert s["categories"]["conv"] == {"ms_per_step": 6.0, "share": pytest.approx(12 / 14, abs=1e-4)}
    assert s["categories"]["fusion"]["ms_per_step"] == 1.0
    assert s["top"][0] == {
        "name": "sm90_xmma_fprop_implicit_gemm_bf16bf16", "category": "conv", "calls_per_step": 1.0, "ms_per_step": 6.0
    }  # fmt: skip
