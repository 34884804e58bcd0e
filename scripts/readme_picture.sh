#!/usr/bin/env bash
# The picture in README.md: four moments of a staged DVS Gesture trial (4.bs2, "right arm clockwise"), each
# with the committed checkpoint's class probabilities over time beside it, made by `evmamba view`.
# Rerun after retraining checkpoints/dvsgesture.pt; the recordings come from $EVMAMBA_DATA
# (default ../shared/data).
#
#   bash scripts/readme_picture.sh            # writes docs/images/view_dvsgesture.png
set -euo pipefail
cd "$(dirname "$0")/.."
data=${EVMAMBA_DATA:-../shared/data}
out=docs/images/view_dvsgesture.png
python -m evmamba view "$data/dvsgesture_slayer_bs2/4.bs2" --checkpoint checkpoints/dvsgesture.pt \
    --out "$out" --window-ms 20 --tiles 4 --columns 2 --no-progress
size=$(wc -c < "$out")
if (( size >= 300000 )); then
    echo "$out is $size bytes; the README picture must stay under 300 kB" >&2
    exit 1
fi
echo "$out: $size bytes"
