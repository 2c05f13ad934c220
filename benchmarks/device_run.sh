#!/usr/bin/env bash
# The whole device session's command: the device suite, then the GPU quality run, in one `run` of at most 600 s.
# Prepare first, here: bash benchmarks/prepare_device.sh (wheels and data into .whl/ and .devdata/).
# On the device (see benchmarks/README.md):  bash benchmarks/device_run.sh
# Files back in $OUT (at most 8): device_suite.json/.md, quality.json, quality_grid.png, xla_autotune.tar,
# quality_translations.tar.part0..2.
# DRY=1 runs the same script on this machine's CPU at the dry-run sizes (PY: the Python to use).
set -u
cd "$(dirname "$0")/.."
T0=$(date +%s)
OUT=${OUT:-/tmp/device_out}
PY=${PY:-python3}
DRY_FLAG=""
[ "${DRY:-0}" = 1 ] && DRY_FLAG="--dry-run"
mkdir -p "$OUT"
if [ -z "$DRY_FLAG" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=/tmp/jaxcache

# XLA's autotuning results per fusion, shared by the two processes and carried between sessions
# (.devdata/xla_autotune, filled from the last session's xla_autotune.tar by prepare_device.sh). With the
# persistent compilation cache on, JAX points XLA's autotuning cache at this folder of it for every compile
# (jax_persistent_cache_enable_xla_caches; it overrides an --xla_gpu_per_fusion_autotune_cache_dir in
# XLA_FLAGS), so the carried results are put there.
CACHE=$JAX_COMPILATION_CACHE_DIR/xla_gpu_per_fusion_autotune_cache_dir
mkdir -p "$CACHE" .devdata/xla_autotune
cp -r .devdata/xla_autotune/. "$CACHE"/
echo "autotune cache: $(find "$CACHE" -type f | wc -l) entries at start"

# The cases the 2026-12-04 session left unmeasured (benchmarks/results/2026-12-04-h200), after bfloat16:8, whose
# rate plans the quality run; merge the two sessions' files with benchmarks.device_merge, the newer first (its
# bfloat16:8 row is the one its quality run's end-to-end factor was measured against). SUITE_ARGS="" runs the
# suite's full default cases instead. (Not in a dry run: its tiny scale has other cases.)
DEFAULT_GAPS="--step-cases bfloat16:8 float32:4 float32:16 --torch-cases official:4 strong:4 compiled:8"
[ -n "$DRY_FLAG" ] && DEFAULT_GAPS=""
# shellcheck disable=SC2086  # word splitting of the argument lists is wanted
timeout 400 "$PY" -m benchmarks.device_suite --out "$OUT" --budget-s 360 --data folder:.devdata/horse2zebra \
  --skip runner ${SUITE_ARGS-$DEFAULT_GAPS} $DRY_FLAG
"$PY" -m benchmarks.quality_gpu --out "$OUT" --data folder:.devdata/horse2zebra --deadline $((T0 + 570)) \
  --suite-json "$OUT/device_suite.json" $DRY_FLAG > /tmp/quality.log 2>&1
rc=$?
echo "quality run exit $rc; its last lines:"
# (Its log stays on the device, and $OUT holds 8 files at most: a failure shows its traceback here.)
tail -c 6000 /tmp/quality.log | tr '\r' '\n' | tail -n "$([ "$rc" = 0 ] && echo 5 || echo 40)"

echo "autotune cache: $(find "$CACHE" -type f | wc -l) entries at the end"
# (At most 12 MB: with the translations' 45 MiB and the rest, what comes back stays under the tool's 64 MiB.)
tar -C "$CACHE" -cf "$OUT/xla_autotune.tar" . && [ "$(stat -c %s "$OUT/xla_autotune.tar")" -lt 12000000 ] \
  || rm -f "$OUT/xla_autotune.tar"
cat "$OUT/device_suite.md" 2>/dev/null | head -80
