#!/usr/bin/env bash
# One cell of the quality grid on a GPU machine, its runs side by side, one per CPU core.
#
# The H200 machine of benchmarks/results/gpu_grid/env.log has 16 CPU cores: the runs of one grid cell (every
# searcher and seed) run at once there, each pinned to its own core, training, fine-tuning and
# the search proxy on the GPU, the latency oracle (ONNX Runtime, 1 thread) on the run's core.
# Its rows are kept apart from this machine's (`quality.py --store TAG`): another CPU, another
# reference latency, another load. Waves run one after the other, one per search proxy
# (PROXIES, the first is the most wanted); each run stops at the time limit (LIMIT seconds from
# the start), and every finished row is packed into $OUT as it lands, so a wave cut short keeps
# what it finished.
#
# Measured on that H200 (2026-11-30, driver 580.159.04, torch 2.11.0+cu130; commit fd9c208): 30 ResNet-32 runs
# at latency<=20%, 15 at a time, took 426 s, but only 8 finished. With 15 runs at once the
# dense model measured 1.14-2.11 ms against the idle reference of 1.25 ms, and on that CPU the
# smallest allowed model is near 20% of dense: most searches found no candidate under the
# bound. The reference and the runs must see the same load: fewer runs at once, or a budget
# well above the CPU's floor.
#
# Needs: CUDA and PyTorch; the packages the machine lacks as wheels in .whl/ (see
# benchmarks/gpu_check.sh); Fashion-MNIST's four idx files in .fmnist/ (copied from
# /usr/share/datasets/fashion-mnist; both folders ignored through .git/info/exclude and carried).
# Writes to $OUT: env.log, rows.tgz (benchmarks/results/quality-$STORE_runs/) and logs.tgz.
# Collect here: unpack rows.tgz into benchmarks/results/, then
#   python -m benchmarks.quality --data 'fashion-mnist?train=3000' --models resnet32_cifar=1 \
#       --budgets 'latency<=20%' --searchers ppo-lagrangian qlp amc uniform global-magnitude \
#       --seeds 0 1 2 --fixed-bound --proxy PROXY --store h200 --stored-only --how '...'
set -u
START=$(date +%s)
OUT=${OUT:-/tmp/gpu_grid_out}
LIMIT=${LIMIT:-540}
MODEL=${MODEL:-resnet32_cifar}
WIDTH=${WIDTH:-1}
BUDGET=${BUDGET:-latency<=20%}
SEARCHERS=${SEARCHERS:-ppo-lagrangian qlp amc uniform global-magnitude}
SEEDS=${SEEDS:-0 1 2}
PROXIES=${PROXIES:-recover:30 bn}
DEVICE=${DEVICE:-cuda}
STORE=${STORE:-h200}
EVALS=${EVALS:-60}
FT=${FT:-5}
TRAIN=${TRAIN:-20}
CORES=${CORES:-$(nproc)}
DATA=${DATA:-fashion-mnist:$PWD/.fmnist?train=3000}
ORACLE="onnxruntime:cpu?threads=1"
LOGS=${LOGS:-/tmp/gpu_grid_logs}
mkdir -p "$OUT" "$LOGS"
. benchmarks/_device_env.sh  # wheels from .whl/, PYTHONPATH, taskset
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
ROWS=benchmarks/results/quality-${STORE}_runs
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    lscpu | grep -E "Model name|^CPU\(s\)"
    python3 -c "import sys, torch, onnxruntime; print(sys.version.split()[0], 'torch',
torch.__version__, torch.cuda.is_available(), 'onnxruntime', onnxruntime.__version__)"
    echo "model $MODEL w$WIDTH, $BUDGET, searchers: $SEARCHERS; seeds: $SEEDS; proxies: $PROXIES"
} > "$OUT/env.log" 2>&1

pack() {  # every finished row and every log so far, replaced whole (never half written)
    [ -d "$ROWS" ] && tar czf "$OUT/rows.tgz.part" -C benchmarks/results "quality-${STORE}_runs" \
        && mv "$OUT/rows.tgz.part" "$OUT/rows.tgz"
    tar czf "$OUT/logs.tgz.part" -C "$LOGS" . && mv "$OUT/logs.tgz.part" "$OUT/logs.tgz"
}
left() { echo $((LIMIT - ($(date +%s) - START))); }

# 1. The dense models (one per seed, on the GPU, side by side), then the dense model's
#    reference latency alone on an idle CPU: the fixed bound of every run.
core=0
for seed in $SEEDS; do
    taskset -c $core python3 -c "
from benchmarks.quality import dense_checkpoint, DIGITS_BATCH, DIGITS_TRAIN_LR
print(dense_checkpoint('$MODEL', width=$WIDTH, data='$DATA', epochs=$TRAIN, seed=$seed,
      device='$DEVICE', batch_size=DIGITS_BATCH, lr=DIGITS_TRAIN_LR))" > "$LOGS/dense-s$seed.log" 2>&1 &
    core=$((core + 1))
done
wait
taskset -c 0 python3 -c "
from benchmarks._common import RunRows
from benchmarks.quality import _reference
_reference('$MODEL', $WIDTH, '$DATA', '$ORACLE', RunRows('quality-$STORE'))" > "$LOGS/reference.log" 2>&1
pack
echo "dense and reference: $(( $(date +%s) - START )) s" >> "$OUT/env.log"

# 2. The waves: every searcher and seed at once, one run per core (cores 1.. first).
for proxy in $PROXIES; do
    budget_s=$(left)
    [ "$budget_s" -lt 60 ] && break
    echo "wave --proxy $proxy: starts at $(( $(date +%s) - START )) s, $budget_s s left" >> "$OUT/env.log"
    i=1
    pids=()
    for seed in $SEEDS; do
        for s in $SEARCHERS; do
            HWPRUNE_CACHE=/tmp/hwprune-$i.sqlite taskset -c $((i % CORES)) timeout "$budget_s" \
                python3 -m benchmarks.quality --data "$DATA" --models "$MODEL=$WIDTH" \
                --budgets "$BUDGET" --searchers "$s" --seeds "$seed" --fixed-bound \
                --proxy "$proxy" --device "$DEVICE" --store "$STORE" --no-write \
                --evaluations "$EVALS" --finetune-epochs "$FT" --train-epochs "$TRAIN" \
                > "$LOGS/${proxy//[^a-z0-9]/_}-$s-s$seed.log" 2>&1 &
            pids+=($!)
            i=$((i + 1))
        done
    done
    running() { for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
    while running; do sleep 15; pack; done
    echo "wave --proxy $proxy: ends at $(( $(date +%s) - START )) s" >> "$OUT/env.log"
done
pack
ls "$ROWS" >> "$OUT/env.log" 2>&1
