#!/usr/bin/env bash
# Nearest-neighbour baselines (`evmamba baseline`) of every config that runs on the staged data, as JSON
# under runs/baselines/. About three minutes on two busy CPU cores, most of it simulating the synthetic set.
#
#   bash scripts/baselines.sh            # everything
#   bash scripts/baselines.sh poker_dvs  # one block: synthetic, nmnist_small, poker_dvs, standins, dvsgesture_samples
#
# Each config is run twice: as it is (the same split as the model: nmnist_small and poker_dvs hold out 10 % of
# the train split for validation, on which the baseline chooses its cell size, time bins, square roots and k;
# synthetic holds out nothing, so the baseline takes its fixed defaults) and with train.val_fraction=0.2 (a
# held-out fifth chooses). The test split is never used to choose.
# POKER-DVS runs its five folds; scripts/summarize_folds.py pools them (every recording is in one test fold).
set -euo pipefail
only=${1:-all}
want() { [[ $only == all || $only == "$1" ]]; }
out=runs/baselines
mkdir -p "$out"
bl() { local name=$1; shift; python -m evmamba baseline "$@" --json "$out/$name.json" --no-progress; }

for config in synthetic nmnist_small; do
    if want $config; then
        bl $config --config $config
        bl $config-val --config $config train.val_fraction=0.2
    fi
done

if want poker_dvs; then
    for fold in 0 1 2 3 4; do
        bl poker_dvs-fold$fold --config poker_dvs dataset.fold=$fold
        bl poker_dvs-val-fold$fold --config poker_dvs dataset.fold=$fold train.val_fraction=0.2
    done
    python scripts/summarize_folds.py "$out"/poker_dvs-fold?.json
    python scripts/summarize_folds.py "$out"/poker_dvs-val-fold?.json
fi

if want standins && [[ -f runs/proxies/atis.yaml ]]; then  # built by scripts/train_results.sh
    bl atis --config runs/proxies/atis.yaml
    bl spikes --config runs/proxies/spikes.yaml
fi

if want dvsgesture_samples; then  # train and test are the same ten trials: this measures nothing
    bl dvsgesture_samples --config dvsgesture_samples
fi
