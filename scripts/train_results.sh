#!/usr/bin/env bash
# The runs behind the results table in README.md: every model trained with three seeds (POKER-DVS: each of
# the five folds with each seed), then mean ± std over the seeds, and the nearest-neighbour baselines.
# Each run is `evmamba train --config CONFIG train.seed=S ...` into runs/results/<name> (scripts/plans/results.json
# lists them); scripts/sweep.py runs JOBS of them side by side and writes runs/results/summary.json with the
# validation accuracy and the test accuracy of each run's selected model (model.pt: best validation epoch).
# On a GPU machine the same commands use it (bf16, Triton kernels).
#
#   bash scripts/train_results.sh [JOBS]     # default 2 (the two CPU cores); 16 on a 16-core GPU machine
#   bash scripts/train_results.sh 2 export   # then copy the checkpoints under checkpoints/
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${1:-2}
out=runs/results
python scripts/sweep.py scripts/plans/results.json --out "$out" --jobs "$jobs"
python scripts/summarize_seeds.py "$out/summary.json" --json "$out/groups.json"
# The seventh round's stand-ins (README's 304x240 and 1-D rows): built from the N-MNIST subset, each trained by a
# dataset-only config (everything chosen from the data).
python scripts/proxy_datasets.py --out runs/proxies
for s in atis spikes; do echo "dataset: {name: folder, root: runs/proxies/$s}" > runs/proxies/$s.yaml; done
python scripts/sweep.py scripts/plans/standins.json --out runs/standins --jobs "$jobs"
python scripts/summarize_seeds.py runs/standins/summary.json --json runs/standins/groups.json
bash scripts/baselines.sh
for run in synthetic-s0 nmnist_small-s0 nmnist_small_frames-s0; do   # per-class accuracy and the online curve
    evmamba evaluate --checkpoint "$out/$run" --json "$out/$run/eval.json" --no-progress
done

if [[ ${2:-} == export ]]; then  # the committed checkpoints: the seed chosen on validation (see docs/training.md)
    cp "$out/nmnist_small-s2/model.pt" checkpoints/nmnist_small.pt
    cp "$out/poker_dvs-f0-s1/model.pt" checkpoints/poker_dvs.pt
    cp "$out/dvsgesture_samples/model.pt" checkpoints/dvsgesture.pt
    ls -l checkpoints
fi
