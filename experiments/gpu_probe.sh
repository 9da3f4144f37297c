#!/usr/bin/env bash
# The open questions of the compiled MobileNetV2 step on one CUDA GPU, in one call of under 10 minutes:
#   [COMPARE_WITH=DIR] bash experiments/gpu_probe.sh OUT_DIR [bf16|fp32]
# 1. the compiled step at 480p in PRECISION (default bf16; fp32 = strict, TF32 off), three ways, each in its own
#    process with a kernel profile: as landed (one compiled function a frame, every depthwise convolution a fused
#    sum of shifted slices; with COMPARE_WITH, a checkout of older code alternates with it frame by frame in the
#    same process, e.g. 03990db's three graphs a frame: `git archive 03990db mavos conf | tar -x -C DIR`), the
#    propagation's 5x5s on PyTorch's kernel (--fused-depthwise 3), and inductor writing the 5x5s' input out
#    once instead of recomputing it in every tap (--inductor realize_reads_threshold=1);
# 2. (bf16 only) the compiled step at the embedded benchmark's size, then evaluate.py over that benchmark
#    compiled in bf16: its model time per frame against the benchmark's at the same size says how much the
#    evaluation loop costs the model (frames are written and scored in a separate process);
# 3. (bf16 only) the attention formulations side by side;
# 4. (fp32 only) Swin-B compiled in bf16 over 1000 frames again: is its per-frame time flat within 5%?
# Each run stops its timed loop with --max-seconds and has a time limit; logs land in OUT_DIR/probe.log.
set -u
OUT_DIR=${1:?usage: bash experiments/gpu_probe.sh OUT_DIR [bf16|fp32]}
PRECISION=${2:-bf16}
PY=${PYTHON:-python3}
WORK=${TMPDIR:-/tmp}/mavos_gpu_probe
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled PYTHONWARNINGS=ignore
mkdir -p "$OUT_DIR" "$WORK"
SB="$PY experiments/speed_benchmark.py --model mavos_mbv2 --device cuda --no-flops --cudnn-benchmark"
SB="$SB --out $OUT_DIR/runs"
keep() { grep -v -E "^(csv|USDT|ERROR|W[0-9])" | grep -v "dynamo_timed"; }
step() { echo; echo "=== $1 ($(date +%T))"; }
{
  step environment
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  FIRST=" "
  [ -n "${COMPARE_WITH:-}" ] && FIRST="--compare-with $COMPARE_WITH"
  for VARIANT in "$FIRST" "--fused-depthwise 3" "--inductor realize_reads_threshold=1"; do
    NAME=$VARIANT LIMIT=150
    if [ "$VARIANT" = "$FIRST" ]; then NAME="as landed $VARIANT"; [ -n "${COMPARE_WITH:-}" ] && LIMIT=240; fi
    step "compiled $PRECISION 480p $NAME"
    timeout $LIMIT $SB --size 480x854 --precision "$PRECISION" --compile --frames 400 --warmup 35 --max-seconds 20 \
      --profile 10 $VARIANT 2>&1 | keep | head -n 30
  done
  if [ "$PRECISION" = bf16 ]; then
    step "compiled bf16 at the embedded benchmark's size (240x432)"
    timeout 120 $SB --size 240x432 --precision bf16 --compile --frames 400 --warmup 35 --max-seconds 20 2>&1 \
      | keep | head -n 3
    step "evaluate.py, compiled bf16, embedded benchmark (random weights: speeds, not scores)"
    CKPT=$WORK/random_mavos_mbv2.ckpt
    $PY experiments/random_checkpoint.py "$CKPT" mavos_mbv2
    timeout 150 $PY evaluate.py ckpt_path="$CKPT" results_dir="$WORK/eval_compiled" session.compile=true \
      session.amp=bf16 session.max_short_edge=null resume=false 2>&1 | tr '\r' '\n' \
      | grep -E "speed:|model|compil|rror" | grep -v "%|" | tail -n 6
    step "attention formulations, bf16"
    timeout 45 $PY experiments/attention_paths.py --device cuda --dtype bf16 2>&1 | tail -n 16
  else
    step "Swin-B compiled bf16 480p, 1000 frames (flatness, first against last tenth)"
    timeout 200 $PY experiments/speed_benchmark.py --model mavos_swinb --device cuda --no-flops --cudnn-benchmark \
      --out "$OUT_DIR/runs" --size 480x854 --precision bf16 --compile --frames 1000 --warmup 40 --max-seconds 60 \
      2>&1 | keep | head -n 3
  fi
  step done
} 2>&1 | tee "$OUT_DIR/probe.log"
