#!/usr/bin/env bash
# Prepare what travels to the GPU machine, all git-ignored (64 MiB in all, the working tree included):
#   .whl/      Python 3.12 wheels the device image lacks (ml-collections, tensorboardX; pure Python);
#   .devdata/  a compact horse2zebra: training JPEGs re-encoded at quality 80, the test splits unchanged.
# Then prints the device command (also in benchmarks/README.md). Run from anywhere:
#   bash benchmarks/prepare_device.sh [path/to/horse2zebra]
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-../shared/datasets/horse2zebra}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
  ml-collections==1.1.0 tensorboardX==2.6.5
"$PY" -m benchmarks.compact_dataset --src "$SRC" --dst .devdata/horse2zebra --train-quality 80 --max-mib 56
# XLA's per-fusion autotuning results from the last device session (committed when they came back), if any.
mkdir -p .devdata/xla_autotune
for t in benchmarks/device_cache/*.tar; do [ -f "$t" ] && tar -C .devdata/xla_autotune -xf "$t"; done

# Everything that travels: tracked and untracked-not-ignored files, plus the two carried folders.
tree_bytes=$( (git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) || echo 0)
carried=$(du -sb .whl .devdata | awk '{s += $1} END {print s}')
total=$(( tree_bytes + carried ))
echo "travels: $(( total / 1048576 )) MiB (limit 64 MiB)"
[ "$total" -lt $(( 63 * 1048576 )) ] || { echo "error: over the device tool's 64 MiB" >&2; exit 1; }

cat <<'CMD'
device run (carry [".whl", ".devdata"], timeout_s 600):
  OUT=$OUT bash benchmarks/device_run.sh
Bring home what comes back; commit xla_autotune.tar as benchmarks/device_cache/xla_autotune.tar (small) so
the next session's compilations skip XLA's autotuning.
CMD
