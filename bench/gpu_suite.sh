#!/usr/bin/env bash
# The GPU measurements of docs/gpu.md, in parts that each fit one 10-minute command on a lent GPU.
#
#   bash bench/gpu_suite.sh check       DATA OUT   # CUDA correctness (regularizer, CUDA-graph step), preset runs on real MNIST
#   bash bench/gpu_suite.sh speed       DATA OUT   # step timings beside hypnettorch on the same GPU
#   bash bench/gpu_suite.sh throughput  DATA OUT   # Fig. A7 trials per hour with 1, 2, 4, 8 trials per GPU
#
# DATA holds MNIST in torchvision's layout (MNIST/raw/*-ubyte or *.gz); OUT receives JSON and logs.
# Optional: a folder .whl of wheels (hypnettorch for the peer timing) is installed into /tmp/site first,
# and shared/bench/peer_hypnettorch.py is looked for at $PEER_SCRIPT.
set -euo pipefail
part=$1 data=$2 out=$3
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
for f in "$data"/MNIST/raw/*.gz; do [ -e "${f%.gz}" ] || gunzip -k "$f"; done 2>/dev/null || true
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

case $part in
check)
    python3 bench/cuda_check.py --out "$out/cuda_check.json" 2>&1 | tee "$out/cuda_check.log"
    python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/test_gpu.log"
    # The paper's presets on real MNIST, all at once on the one GPU (accuracy, not speed, is the point).
    for run in split_mnist:0 split_mnist:1 split_mnist:2 permuted_mnist:0; do
        python3 - "${run%:*}" "${run#*:}" "$data" >"$out/preset_${run%:*}_${run#*:}.json" <<'EOF' &
import json, sys
from hnet.config import Runtime, preset
from hnet.trainer import train
name, seed, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
r = train(preset(name).replace(seed=seed), runtime=Runtime(data_root=root, device="cuda"))
print(json.dumps({"preset": name, "seed": seed, **{k: r[k] for k in
      ("acc_after_mean", "acc_during_mean", "acc_after", "acc_matrix", "train_seconds", "iters_per_second")}}))
EOF
    done
    wait
    cat "$out"/preset_*.json | python3 -c "import json,sys; [print(r['preset'], r['seed'], round(r['acc_after_mean'], 2), round(r['train_seconds'], 1), 's') for r in map(json.loads, sys.stdin)]"
    ;;
speed)
    peer=()
    if [ -n "${PEER_SCRIPT:-}" ] && python3 -c "import hypnettorch" 2>/dev/null; then
        peer=(--peer-python python3 --peer-script "$PEER_SCRIPT")
    fi
    python3 bench/iteration_speed.py --device cuda --iters "${ITERS:-100}" --warmup 20 "${peer[@]}" 2>&1 \
        | grep -v -e Warning -e _warn_once | tee "$out/iteration_speed.txt"
    ;;
throughput)
    python3 bench/gpu_throughput.py --data-root "$data" --window "${WINDOW:-45}" --step ${STEP:-graph eager} \
        --concurrency ${LEVELS:-1 2 4 8} --out "$out/throughput.json" 2>&1 | tee "$out/throughput.log"
    ;;
*)
    echo "usage: gpu_suite.sh check|speed|throughput DATA OUT" >&2; exit 2 ;;
esac
