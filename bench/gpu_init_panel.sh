#!/usr/bin/env bash
# PermutedMNIST Fig. A7 init panel on a lent GPU: the spec's first WORKERS draws at ITERS it/task,
# 10 % validation, for each init_activation variant at once (one folder of OUT each, named
# e.g. xavier_elu: the device tool returns no file whose path has '=' or ','), GPU use logged.
#   bash bench/gpu_init_panel.sh DATA OUT WORKERS ITERS VARIANT [VARIANT ...]    (VARIANT: init_activation)
set -uo pipefail
data=$1 out=$2 workers=$3 iters=$4
shift 4
pids=()
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$out/gpu_use.csv" &
smi=$!
for variant in "$@"; do
    init=${variant%_*} activation=${variant##*_}
    mkdir -p "$out/$variant"
    bash bench/gpu_study.sh sweeps/configs/fig_a7_permutedmnist.yaml "$data" "$out/$variant" "$workers" 1 \
        --set iters="$iters" --set val_fraction=0.1 --set hnet_init="$init" --set hnet_activation="$activation" \
        > "$out/$variant/stdout.txt" 2>&1 &
    pids+=($!)
done
wait "${pids[@]}"
kill $smi
python3 bench/best_variant.py "$out"
