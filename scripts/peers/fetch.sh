#!/usr/bin/env bash
# Download the source distributions of the peers that `evmamba bench kernels --peers` and `evmamba bench layer`
# compare against: mamba-ssm, causal-conv1d (its CUDA conv) and lrnnx. Run on a machine that reaches the package
# index; the files land in .devout/peers/ (git-ignored: nothing of theirs enters the repository). The GPU
# machine has no network: scripts/peers/build.sh builds these files there.
#
#   bash scripts/peers/fetch.sh            # pinned versions below
#   PEERS_DIR=/elsewhere bash scripts/peers/fetch.sh
set -u
cd "$(dirname "$0")/../.."
DEST=${PEERS_DIR:-.devout/peers}
# Pinned: the newest versions on the index when this script was written (build.sh reads whatever is in DEST).
PINS=("causal-conv1d==1.7.0" "mamba-ssm==2.3.2.post1" "lrnnx==1.0.0.post1")
mkdir -p "$DEST"
status=0
for pin in "${PINS[@]}"; do
    echo "fetch: $pin -> $DEST"
    if python3 -m pip download --no-deps --no-binary :all: --no-build-isolation -d "$DEST" "$pin" >"$DEST/fetch-${pin%%=*}.log" 2>&1; then
        echo "fetch: $pin ok"
    else
        echo "fetch: $pin FAILED (see $DEST/fetch-${pin%%=*}.log):"; tail -n 5 "$DEST/fetch-${pin%%=*}.log"; status=1
    fi
done
# Build helpers, used by build.sh only for what the GPU machine lacks (it has no network to fetch them; a
# missing `wheel` is served by setuptools, see setup_runner.py):
# setuptools, packaging (pure Python) and ninja (a Linux x86-64 binary wheel for any Python 3).
HELPERS=("setuptools==84.2.1" "packaging==26.4" "ninja==1.13.2")
mkdir -p "$DEST/helpers"
for pin in "${HELPERS[@]}"; do
    if python3 -m pip download --no-deps --only-binary :all: --platform manylinux_2_17_x86_64 --platform any \
            --python-version 3.12 -d "$DEST/helpers" "$pin" >"$DEST/helpers/fetch-${pin%%=*}.log" 2>&1; then
        echo "fetch: helper $pin ok"
    else
        echo "fetch: helper $pin FAILED (optional; see $DEST/helpers/fetch-${pin%%=*}.log)"
    fi
done
ls -l "$DEST"/*.tar.gz "$DEST"/helpers/*.whl 2>/dev/null
exit $status
