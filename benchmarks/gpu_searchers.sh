#!/usr/bin/env bash
# Every searcher through `hwprune prune --device cuda` on a GPU machine (a short check).
#
# Found by benchmarks/gpu_grid.sh: with --device cuda, global-magnitude traced a dense model the
# run had moved to the GPU with example inputs left on the CPU, and failed. This check runs the
# gpu-marked tests of the searchers, then one dense model trained on the GPU and every searcher
# pruning it side by side (one process per core) to a parameter budget, fine-tuned on the GPU.
# Needs what benchmarks/gpu_check.sh needs (.whl/ with the packages the machine lacks).
# Writes $OUT/searchers.log.
set -u
OUT=${OUT:-/tmp/gpu_searchers_out}
mkdir -p "$OUT"
. benchmarks/_device_env.sh  # wheels from .whl/, PYTHONPATH, taskset
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
DEVICE=${DEVICE:-cuda}
SEARCHERS=${SEARCHERS:-ppo-lagrangian qlp amc uniform global-magnitude random}
CORES=${CORES:-$(nproc)}
{
    date -u
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    echo "== gpu tests of the searchers and spaces"
    timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider -rs \
        tests/hwprune/test_baselines.py tests/oracles/test_torch_latency.py 2>&1 | tail -6
    echo "== dense model on the GPU"
    timeout 60 python3 -m hwprune train --model vgg11_cifar --width 0.25 --data digits \
        --input-size 32 --epochs 5 --device "$DEVICE" --out /tmp/dense.pt --overwrite --quiet
    echo "train exit $?"
    i=1
    for s in $SEARCHERS; do
        taskset -c $((i % CORES)) timeout 240 python3 -m hwprune prune --model vgg11_cifar \
            --weights /tmp/dense.pt --data digits --budget 'params<=50%' --device "$DEVICE" \
            --agent "$s" --evaluations 12 --finetune-epochs 1 --out "/tmp/run-$s" --overwrite \
            --quiet --json > "/tmp/$s.json" 2> "/tmp/$s.err" &
        i=$((i + 1))
    done
    wait
    for s in $SEARCHERS; do
        python3 - "$s" <<'PY'
import json, sys
name = sys.argv[1]
try:
    r = json.load(open(f"/tmp/{name}.json"))
    print(f"{name}: all_met {r.get('all_met')}, accuracy {r.get('accuracy')}")
except Exception as exc:  # show why it failed
    err = open(f"/tmp/{name}.err").read().strip().splitlines()
    print(f"{name}: FAILED ({type(exc).__name__}):", *err[-15:], sep="\n    ")
PY
    done
} 2>&1 | tee "$OUT/searchers.log"
