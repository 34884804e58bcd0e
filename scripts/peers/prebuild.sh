#!/usr/bin/env bash
# Build the peers on a machine without a GPU (nvcc and a C++ compiler needed, no GPU) for the GPU machine, and
# pack them, so that the GPU machine's time goes to the benchmarks instead of the compilers.
#
#   PEERS_ONLY="lrnnx" bash scripts/peers/prebuild.sh        # python3 must be the GPU machine's Python + torch
#
# The compiled extensions only load into the torch and the Python they were built against, so run this with a
# `python3` of the GPU machine's Python version whose torch is the GPU machine's release (for the H200 machine
# of docs/benchmarks.md: Python 3.12 and torch 2.11.0+cu130, `pip install torch==2.11.0` in a Python 3.12
# venv; its CUDA libraries are only needed to import torch, not to compile), and nvcc of the same CUDA major
# version (CUDA_HOME). Everything else is build.sh's (PEERS_ONLY, sm_90 only, one line per package at the
# end); MAX_JOBS defaults to this machine's cores.
#
# Output: .devout/peers/prebuilt-site.tar.xz (git-ignored). Carried to the GPU machine with .devout, build.sh
# unpacks it before building; each package in it is imported there first and built again only if that fails.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SRC=${PEERS_DIR:-$ROOT/.devout/peers}
WORK=${PEERS_PREBUILD_WORK:-/tmp/peers-prebuild}
export PEERS_SITE=$WORK/site PEERS_WORK=$WORK/work MAX_JOBS=${MAX_JOBS:-$(nproc)}
python3 -c "import sys, torch; print('prebuild: python', sys.version.split()[0], '| torch', torch.__version__)" || {
    echo "prebuild: python3 cannot import torch: run it in a venv with the GPU machine's torch" >&2; exit 2; }
bash "$ROOT/scripts/peers/build.sh" "${1:-36000}"
status=$?
if [ -z "$(ls -A "$PEERS_SITE" 2>/dev/null)" ]; then
    echo "prebuild: nothing was built into $PEERS_SITE" >&2; exit 1
fi
# Only what the GPU machine imports: the installed packages and the markers that say they were built.
tar -C "$PEERS_SITE" -cJf "$SRC/prebuilt-site.tar.xz" .
echo "prebuild: $(du -h "$SRC/prebuilt-site.tar.xz" | cut -f1) in $SRC/prebuilt-site.tar.xz (build.sh exit $status)"
exit $status
