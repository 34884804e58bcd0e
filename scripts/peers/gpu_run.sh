#!/usr/bin/env bash
# The whole peer comparison in one call on the GPU machine: build the peers (scripts/peers/build.sh), then
# `evmamba bench kernels --peers --scan-only` and `evmamba bench layer --peers`, each under `timeout` so that
# the whole stays within $PEERS_TOTAL seconds (default 590), and print the tables at the end. causal-conv1d took
# 321-334 s on an H200 machine (16 cores, 2026-12-01), so the build budget defaults to 390 s. lrnnx takes longer
# than what that budget leaves it (7 of its 22 compile steps in 169 s, built alone): for its rows, run
# `bash scripts/peers/build.sh 590` in one call and this script in a second one on the still-warm machine, where
# the packages already built are skipped and lrnnx's build resumes. Or build them beforehand on a machine
# without a GPU (scripts/peers/prebuild.sh, into .devout/peers/prebuilt-site.tar.xz): build.sh unpacks that
# first, and what it holds is not compiled again.
#
#   bash scripts/peers/gpu_run.sh [OUT_DIR]      # from anywhere; OUT_DIR defaults to $OUT, else /tmp/peers-out
#
# Needs .devout/peers/*.tar.gz (scripts/peers/fetch.sh) and evmamba importable (PYTHONPATH). Writes to OUT_DIR:
# peers_build.txt, kernels_peers.{txt,json}, layer_peers.{txt,json}, and with lrnnx built,
# kernels_lrnnx.{txt,json} and layer_lrnnx.{txt,json} (lrnnx in processes of its own, when needed). Each step's
# failure is reported and the next step runs; the benchmarks write their JSON after every case, so a time limit
# keeps what was measured.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
OUTD=${1:-${OUT:-/tmp/peers-out}}
TOTAL=${PEERS_TOTAL:-590}
BUILD_BUDGET=${PEERS_BUILD_BUDGET:-390}
REPS=${PEERS_REPS:-20}
SITE=${PEERS_SITE:-/tmp/peers-site}
export PEERS_SITE=$SITE PYTHONUNBUFFERED=1
mkdir -p "$OUTD"
T0=$(date +%s)
left() { echo $(( TOTAL - ($(date +%s) - T0) )); }
say() { echo "[gpu_run +$(( $(date +%s) - T0 ))s] $*"; }

say "building the peers (budget ${BUILD_BUDGET}s) -> $OUTD/peers_build.txt"
timeout -k 10 $(( BUILD_BUDGET + 40 )) bash scripts/peers/build.sh "$BUILD_BUDGET" > "$OUTD/peers_build.txt" 2>&1
say "build.sh exit $? ($(left)s left)"

# Kernels first (the scan table is the smaller job), leaving the layer at least 100 s.
t=$(( $(left) - 110 )); [ $t -gt 150 ] && t=150
if [ $t -ge 30 ]; then
    say "bench kernels --peers --scan-only (limit ${t}s)"
    timeout -k 5 $t python3 -m evmamba bench kernels --peers "$SITE" --scan-only --reps "$REPS" \
        --json "$OUTD/kernels_peers.json" > "$OUTD/kernels_peers.txt" 2>&1
    say "bench kernels exit $? (124: over its limit; the JSON holds the cases measured)"
else
    say "bench kernels skipped: ${t}s left for it"
fi
# lrnnx's compiled scan has mamba_ssm's module name, and in one process mamba_ssm's calls ran lrnnx's code
# (evmamba/bench/peers.py), so the benchmarks leave lrnnx out beside mamba_ssm ("not timed in this process" in the
# output) and it is timed in processes of its own afterwards: 150 s are kept for that when it is built.
LRNNX_SITE=$SITE/lrnnx-site
if ls "$LRNNX_SITE"/.peers-built-lrnnx-* >/dev/null 2>&1; then RESERVE=150; else RESERVE=0; fi
t=$(( $(left) - 10 - RESERVE ))
if [ $t -ge 30 ]; then
    say "bench layer --peers (limit ${t}s)"
    timeout -k 5 $t python3 -m evmamba bench layer --peers "$SITE" --reps "$REPS" \
        --json "$OUTD/layer_peers.json" > "$OUTD/layer_peers.txt" 2>&1
    say "bench layer exit $? (124: over its limit; the JSON holds the cases measured)"
else
    say "bench layer skipped: ${t}s left for it"
fi
if [ $RESERVE -gt 0 ] && grep -q "not timed in this process" "$OUTD/kernels_peers.txt" "$OUTD/layer_peers.txt" 2>/dev/null; then
    # Without causal_conv1d on the path lrnnx's Mamba runs PyTorch's conv in both modes (its fused path, taken
    # when causal_conv1d imports, calls its own extension with mamba_ssm's argument list and fails in standard mode).
    t=$(( ($(left) - 10) / 2 ))
    say "bench kernels --peers $LRNNX_SITE --scan-only (lrnnx alone; limit ${t}s)"
    timeout -k 5 $t python3 -m evmamba bench kernels --peers "$LRNNX_SITE" --scan-only --reps "$REPS" \
        --json "$OUTD/kernels_lrnnx.json" > "$OUTD/kernels_lrnnx.txt" 2>&1
    say "bench kernels (lrnnx) exit $?"
    t=$(( $(left) - 10 ))
    say "bench layer --peers $LRNNX_SITE --dtypes float32 (lrnnx alone; limit ${t}s)"
    timeout -k 5 $t python3 -m evmamba bench layer --peers "$LRNNX_SITE" --reps "$REPS" --dtypes float32 \
        --json "$OUTD/layer_lrnnx.json" > "$OUTD/layer_lrnnx.txt" 2>&1
    say "bench layer (lrnnx) exit $?"
fi

# What the reply shows (its last 12 000 characters): build summary, then each benchmark's peers and table.
echo; echo "================ build"
grep -E "^\[peers .*(budget|nvcc|torch|ninja|building|compiled|stopped|resuming)|^  (python|torch|triton|setuptools|wheel|packaging|ninja|einops|transformers)|^peer |^    (error|last)>" "$OUTD/peers_build.txt" | cut -c1-300 | tail -n 60
for b in kernels_peers layer_peers kernels_lrnnx layer_lrnnx; do
    f=$OUTD/$b.txt
    [ -f "$f" ] || case $b in *lrnnx) continue ;; esac
    echo; echo "================ bench $b ($f)"
    [ -f "$f" ] || { echo "(not run)"; continue; }
    grep -E "^peers:|^  (mamba_ssm|lrnnx|causal_conv1d|no peer|peers folder|lrnnx's)|needs a CUDA|Error|error|ERROR|DIFFERS" "$f" | grep -v "%|" | cut -c1-300 | head -n 25
    if grep -q -E "^(selective scan, ours vs peers|Mamba layer, ours vs peers)" "$f"; then
        sed -n -E '/^(selective scan, ours vs peers|Mamba layer, ours vs peers)/,$p' "$f" | cut -c1-240
    else
        echo "(no final table: the per-case lines measured so far)"
        grep -E "^  [0-9]+x" "$f" | cut -c1-240 | tail -n 30
    fi
done
say "done"
