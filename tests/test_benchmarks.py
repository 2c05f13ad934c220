"""The benchmark harness's own pieces: interleaved timing with page-fault counts, malloc modes, the torch child."""

import json
import mmap
import sys

import pytest

from benchmarks import common


def test_interleaved_timing_counts_page_faults_per_call():
    def fresh_memory():  # 64 MB of new anonymous pages on every call (4 KB pages: no huge-page advice)
        with mmap.mmap(-1, 64 * 2**20) as m:
            if hasattr(mmap, "MADV_NOHUGEPAGE"):  # machines with THP 'always' would fault once per 2 MB
                m.madvise(mmap.MADV_NOHUGEPAGE)
            m.write(b"\x01" * len(m))

    calls = []
    stats = {}
    times = common.time_interleaved(
        {"alloc": fresh_memory, "noop": lambda: calls.append(1)}, warmup=1, iters=3, kernel_stats=stats
    )
    assert [len(v) for v in times.values()] == [3, 3] and len(calls) == 4  # warm-up included
    assert stats["alloc"]["minor_faults_per_call"] > 10_000  # 16,384 pages of 4 KB touched
    assert stats["noop"]["minor_faults_per_call"] < 100
    assert set(stats["noop"]) == {"minor_faults_per_call", "kernel_s_per_call"}


def test_malloc_mode_reads_the_environment(monkeypatch):
    for mode, env in common.MALLOC_MODES.items():
        for k in {k for e in common.MALLOC_MODES.values() for k in e}:
            monkeypatch.delenv(k, raising=False)
        assert common.malloc_mode() == "default"
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert common.malloc_mode() == mode


def test_torch_replica_in_a_lockstep_child_process(monkeypatch):
    pytest.importorskip("torch")
    from benchmarks import torch_reference

    monkeypatch.setenv("GLIBC_TUNABLES", common.MALLOC_MODES["hugepages"]["GLIBC_TUNABLES"])
    child = torch_reference.SeparateProcessStep(32, 1, "float32", threads=1)
    try:
        child()
        child()
        assert child.proc.poll() is None  # still serving
        if sys.platform.startswith("linux"):
            assert child.peak_rss_mb() > 50
            with open(f"/proc/{child.proc.pid}/environ", "rb") as f:
                assert b"GLIBC_TUNABLES" not in f.read()  # the child runs with the default allocator
    finally:
        child.close()
    assert child.proc.returncode == 0


def test_step_memory_records_what_the_process_runs_under():
    import jax

    jax.devices()  # this pytest process already has its backends: the settings can no longer apply
    assert common.apply_step_memory("reuse") == "default"
    assert common.apply_step_memory("default") == "default"


def test_soak_growth_is_measured_after_warm_up():
    from benchmarks import soak

    rows = [{"step": s, "rss_mib": 500.0 + (300 if s < 200 else 0.01 * s), "fds": 10, "threads": 5} for s in
            range(100, 1100, 100)]  # fmt: skip
    g = soak.growth(rows, warmup=0.2)
    assert g["from_step"] == 200 and g["rss_mib_per_1000_steps"] == pytest.approx(10.0)
    assert g["fds_end"] - g["fds_start"] == 0


def test_peer_faults_tells_our_line_from_a_native_abort():
    from benchmarks import peer_faults

    ours = "step 30\n\nerror: process(es) [1] fell silent for 10 s (frozen, ...); process 0 cannot go on\n"
    assert peer_faults.survivor_report(ours, 1, 10.04, victim=1) == {
        "exit": 1, "seconds": 10.0, "our_line": ours.splitlines()[2], "native": False}  # fmt: skip
    jax_abort = "F1203 client.h:80] Terminating process because the JAX distributed service detected fatal errors\n"
    report = peer_faults.survivor_report(jax_abort + "Fatal Python error: Aborted\n", -6, 13.7, victim=1)
    assert report["our_line"] is None and report["native"] and report["exit"] == -6
    other = peer_faults.survivor_report("error: process(es) [2] ended without a word\n", None, None, victim=1)
    assert other == {"exit": None, "seconds": None, "our_line": None, "native": False}  # names another process


def test_healthy_jobs_counts_each_setting():
    from benchmarks import healthy_jobs

    assert [healthy_jobs.outcome(e) for e in ([0, 0], [1, 1], [0, None], [None, 1])] == ["ok", "failed", "hang", "hang"]
    rows = [{"peer_beats": b, "outcome": o, "seconds": s}
            for b, o, s in ((True, "ok", 40.7), (False, "ok", 38.5), (True, "hang", 300.2), (False, "failed", 52.0),
                            (True, "ok", 58.3))]  # fmt: skip
    assert healthy_jobs.counts(rows) == [
        {"peer_beats": True, "jobs": 3, "ok": 2, "failed": 0, "hang": 1, "seconds": [40.7, 300.2]},
        {"peer_beats": False, "jobs": 2, "ok": 1, "failed": 1, "hang": 0, "seconds": [38.5, 52.0]},
    ]


def test_translate_large_runs_the_cli_tiled_both_ways_and_whole(capsys):
    from benchmarks import translate_large

    translate_large.main(["--sizes", "200x136:both", "--ngf", "4", "--tile", "96", "--norm_stats", "global", "tile"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    runs = [r for r in lines if "ok" in r]
    assert [r["mode"] for r in runs] == ["tiled:global", "tiled:tile", "whole"]
    assert all(r["ok"] and r["output_shape"] == [136, 200, 3] and r["peak_rss_gb"] > 0 for r in runs), runs
    psnr = {r["mode"]: r["vs_whole_psnr_db"] for r in lines if "vs_whole_psnr_db" in r}
    assert set(psnr) == {"tiled:global", "tiled:tile"} and all(v > 10 for v in psnr.values())


def test_export_speed_times_three_runtimes_that_agree(capsys):
    pytest.importorskip("onnxruntime")
    from benchmarks import export_speed

    export_speed.main(["--sizes", "32", "--ngf", "8", "--n_blocks", "1", "--rounds", "2"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [line["runtime"] for line in lines] == ["jaxgan", "stablehlo", "onnxruntime"]
    assert all(line["ms_median"] > 0 and line["max_abs_diff_vs_jaxgan"] <= 1e-4 for line in lines)


def test_half_precision_compares_each_dtype_with_float32(capsys):
    from benchmarks import half_precision

    assert half_precision.main(["--size", "32", "--batch", "1", "--ngf", "4", "--n-blocks", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["dtype"], r["loss_scale"]) for r in rows] == [("bfloat16", 1.0), ("float16", 1.0), ("float16", 1024.0)]
    # 18 parameters once the inert biases are left out; half precision differs from float32, but not wildly
    assert all(r["parameters"] == 18 and 0 < r["median_rel_error"] <= r["max_rel_error"] < 1 for r in rows)
    assert rows[1]["median_rel_error"] < rows[0]["median_rel_error"]  # float16's 10-bit mantissa beats bf16's 7
