#!/usr/bin/env bash
# The device check for a GPU machine without network access (one short script, time-boxed).
#
# Needs: a CUDA GPU with PyTorch; the packages it lacks as wheels in .whl/ (on the H200 of
# benchmarks/results/gpu_check/env.log: onnxslim, stable-baselines3, gymnasium, farama-notifications and torch-pruning, fetched here with
# `pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64
# -d .whl NAME==VERSION`); OUT, a folder for what comes back. Three parts, one after the
# other so that no two time the GPU at once:
#   1. the gpu/tensorrt-marked tests;
#   2. the latency staircase of a width-0.5 VGG-11 (32x32 inputs) on torch:cuda with CUDA
#      graphs at batch 256 and at batch 1 (python -m benchmarks.staircase --probe-only);
#   3. a real `hwprune prune` on the GPU: a dense model trained on digits with --device cuda,
#      then latency<=50% on torch:cuda with --round-to auto (the default).
set -u
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
. benchmarks/_device_env.sh  # wheels from .whl/, PYTHONPATH, taskset
export PYTHONUNBUFFERED=1 HWPRUNE_CACHE=/tmp/hwprune-gpu-check.sqlite
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
    python3 -c "import torch, onnxruntime, sys; print(sys.version.split()[0], 'torch',
torch.__version__, torch.cuda.is_available(), 'onnxruntime', onnxruntime.__version__,
onnxruntime.get_available_providers())"
} 2>&1 | tee "$OUT/env.log"

echo "== 1. gpu/tensorrt tests"
timeout 120 python3 -m pytest -m "gpu or tensorrt" -q -p no:cacheprovider -rs \
    tests/oracles/test_torch_latency.py tests/oracles/test_ort.py tests/oracles/test_trt.py \
    tests/hwprune/test_compare.py 2>&1 | tee "$OUT/pytest.log" | tail -15

echo "== 2. staircase probe on torch:cuda"
timeout 120 python3 -m benchmarks.staircase --probe-only --model vgg11_cifar --width 0.5 \
    --input-shape 3 32 32 --oracle 'torch:cuda?graph=1&batch=256' \
    --probe-oracles 'torch:cuda?graph=1' --probe-seconds 25 2>&1 \
    | grep -v "did not reach" | tee "$OUT/probe.log" | tail -30
cp benchmarks/results/staircase/probe-vgg11_cifar-w0.5-torch_cuda*.json "$OUT/" 2>/dev/null

echo "== 3. hwprune train + prune on the GPU"
{
    timeout 60 python3 -m hwprune train --model vgg11_cifar --width 0.5 --data digits \
        --input-size 32 --epochs 15 --device cuda --out /tmp/dense.pt --overwrite --quiet &&
    timeout 170 python3 -m hwprune prune --model vgg11_cifar --weights /tmp/dense.pt \
        --data digits --budget 'latency<=50%' --oracle 'latency=torch:cuda?graph=1&batch=256' \
        --device cuda --agent ppo-lagrangian --evaluations 24 --finetune-epochs 3 \
        --staircase-seconds 40 --out /tmp/gpu_run --overwrite --quiet
    echo "exit $?"
} 2>&1 | grep -v "did not reach" | tee "$OUT/prune.log" | tail -25
cp /tmp/gpu_run/report.md /tmp/gpu_run/staircase.json "$OUT/" 2>/dev/null
true
