#!/usr/bin/env bash
# The commands behind the results table in README.md, in order. Each `evmamba train` writes its run folder
# (metrics, plots, checkpoints); each `evmamba evaluate` writes a JSON with `accuracy` and `n_samples` and
# the online curve. Runs are resumable: rerun a train command with `--resume runs/<name>` after an
# interruption. On a GPU machine the same commands use it (bf16, Triton kernels); `torchrun
# --nproc_per_node N -m evmamba train ...` spreads a run over N GPUs.
#
#   bash scripts/train_results.sh            # everything
#   bash scripts/train_results.sh poker_dvs  # one block: synthetic, nmnist_small, poker_dvs, dvsgesture_samples, export
set -euo pipefail
only=${1:-all}
want() { [[ $only == all || $only == "$1" ]]; }
ev() { evmamba evaluate --checkpoint "runs/$1" --json "runs/$1/eval.json" --no-progress; }

if want synthetic; then  # the README's main job: two CPU cores, under five minutes
    evmamba train --out runs/synthetic
    ev synthetic
fi

if want nmnist_small; then  # 1 000 train / 100 test recordings
    evmamba train --config nmnist_small --out runs/nmnist_small
    ev nmnist_small
    evmamba train --config nmnist_small_frames --out runs/nmnist_small_frames
    ev nmnist_small_frames
fi

if want poker_dvs; then  # stratified 5-fold cross-validation over all 131 symbols
    for fold in 0 1 2 3 4; do
        evmamba train --config poker_dvs dataset.fold=$fold --out runs/poker_dvs-fold$fold
        ev poker_dvs-fold$fold
        evmamba train --config poker_dvs_frames dataset.fold=$fold --out runs/poker_dvs_frames-fold$fold
        ev poker_dvs_frames-fold$fold
    done
    python scripts/summarize_folds.py runs/poker_dvs-fold*/eval.json
    python scripts/summarize_folds.py runs/poker_dvs_frames-fold*/eval.json
fi

if want dvsgesture_samples; then  # the ten staged trials: a checkpoint for the streaming loop, not a score
    evmamba train --config dvsgesture_samples --out runs/dvsgesture_samples
    ev dvsgesture_samples
fi

if want export; then  # the small checkpoints committed under checkpoints/ (weights, config, data description)
    mkdir -p checkpoints
    for pair in nmnist_small:nmnist_small poker_dvs-fold0:poker_dvs dvsgesture_samples:dvsgesture; do
        run=${pair%%:*} name=${pair##*:}
        cp "runs/$run/model.pt" "checkpoints/$name.pt"
        cp "runs/$run/config.yaml" "checkpoints/$name.yaml"
    done
    ls -l checkpoints
fi
