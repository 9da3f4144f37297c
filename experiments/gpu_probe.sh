#!/usr/bin/env bash
# A short look at where MobileNetV2's 480p step spends its time on one CUDA GPU (a few minutes):
#   bash experiments/gpu_probe.sh OUT_DIR
# eager bf16 kernel profile with cuDNN's algorithm search off and on; the compiled bf16 step at 480p (with its
# profile: kernel time against wall time) and at a small size (what the host costs per frame when the GPU has
# almost nothing to do); compiled TF32; eager at the small size; the attention formulations side by side.
set -u
OUT_DIR=${1:?usage: bash experiments/gpu_probe.sh OUT_DIR}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled PYTHONWARNINGS=ignore
mkdir -p "$OUT_DIR"
SB="$PY experiments/speed_benchmark.py --model mavos_mbv2 --device cuda --no-flops --out $OUT_DIR/runs"
keep() { grep -v -E "^(csv|USDT|ERROR|W[0-9])" | grep -v "dynamo_timed"; }
step() { echo; echo "=== $1 ($(date +%T))"; }
{
  step environment
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  for B in "" "--cudnn-benchmark"; do
    step "eager bf16 480p profile $B"
    timeout 75 $SB --size 480x854 --precision bf16 --frames 40 --warmup 25 --profile 10 $B 2>&1 | keep | head -n 40
  done
  step "eager bf16 at 128x224 (host cost of an eager frame)"
  timeout 45 $SB --size 128x224 --precision bf16 --frames 60 --warmup 25 2>&1 | keep | head -n 3
  step "compiled bf16 480p, cudnn.benchmark, with profile"
  timeout 150 $SB --size 480x854 --precision bf16 --compile --frames 200 --warmup 35 --profile 10 \
    --cudnn-benchmark 2>&1 | keep | head -n 40
  step "compiled bf16 at 128x224 (host cost of a compiled frame)"
  timeout 100 $SB --size 128x224 --precision bf16 --compile --frames 200 --warmup 35 --cudnn-benchmark 2>&1 | keep | head -n 3
  step "compiled tf32 480p, cudnn.benchmark"
  timeout 100 $SB --size 480x854 --precision tf32 --compile --frames 200 --warmup 35 --cudnn-benchmark 2>&1 | keep | head -n 3
  step "attention formulations, bf16"
  timeout 45 $PY experiments/attention_paths.py --device cuda --dtype bf16 2>&1 | tail -n 16
  step done
} 2>&1 | tee "$OUT_DIR/probe.log"
