#!/usr/bin/env bash
# Run a sweep spec's trials on a lent GPU (no Ray, Optuna or MLflow there; the project on the path,
# not installed): `hnet sweep run --backend pool` as `python3 -m sweeps`. N processes share the GPU
# through CUDA MPS when it starts (kernels of different processes then run concurrently), else by time-slicing.
#   bash bench/gpu_study.sh SPEC DATA OUT [WORKERS] [TIME_LIMIT_S] [--set key=value ...]
set -uo pipefail
spec=$1 data=$2 out=$3 workers=${4:-8} limit=${5:-0}
shift $(( $# < 5 ? $# : 5 ))
export PYTHONUNBUFFERED=1 PYTHONPATH=.
for f in "$data"/MNIST/raw/*.gz; do [ -e "${f%.gz}" ] || gunzip -k "$f"; done 2>/dev/null
mps=off
# pgrep -x sees the process name cut to 15 characters (nvidia-cuda-mps-control: nvidia-cuda-mps)
if pgrep -x nvidia-cuda-mps >/dev/null; then mps="on (daemon already running)"
elif nvidia-cuda-mps-control -d 2>/dev/null; then
    if python3 -c "import torch; torch.ones(1, device='cuda').sum().item()" 2>/dev/null; then mps=on
    else echo quit | nvidia-cuda-mps-control; fi
fi
echo "CUDA MPS: $mps" | tee "$out/mps.txt"
name=$(basename "$spec" .yaml)
python3 -m sweeps run "$spec" --backend pool --data-root "$data" --set device=cuda --workers "$workers" \
    --time-limit "$limit" --results "$out/$name.jsonl" "$@" 2>&1 \
    | grep --line-buffered -v -i -e warn -e run_backward -e ": task [0-9]*/[0-9]* done" | tee "$out/$name.log"
