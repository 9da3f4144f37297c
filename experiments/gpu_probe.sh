#!/usr/bin/env bash
# The open questions of issue 11 on one CUDA GPU, in calls of under 10 minutes each (most wanted first):
#   [COMPARE_WITH=DIR] bash experiments/gpu_probe.sh OUT_DIR [main|extra]
# main (default; ~9 minutes at most):
#   1. MobileNetV2's compiled bf16 step at 480p over 1000 frames, with its kernel profile (300 FPS?); with
#      COMPARE_WITH, a checkout of older code alternates with it frame by frame in the same process, e.g. 03990db's
#      three graphs a frame: `mkdir -p DIR && git archive 03990db mavos conf | tar -x -C DIR`;
#   2. the same with the propagation's 5x5 depthwise convolutions on PyTorch's kernel (--fused-depthwise 3: the
#      fused form measured 55 against 33 us a call in the three-graph step), with its kernel profile;
#   3. the same in strict fp32 (TF32 off; 150 FPS?).
# extra (~9 minutes at most):
#   4. Swin-B's compiled bf16 step over 1000 frames (per-frame time flat within 5%?);
#   5. the 480p bf16 step with inductor writing the 5x5s' input out once instead of recomputing it in every tap
#      (--inductor realize_reads_threshold=1), with its kernel profile;
#   6. the compiled bf16 step at the embedded benchmark's size, then evaluate.py over that benchmark compiled in
#      bf16: its model time per frame against the benchmark's at the same size says what the evaluation loop
#      costs the model (frames are written and scored in a separate process).
# Compiling happens inside each run's warm-up frames (a minute or more per step on an H100 machine), so every
# run bounds its whole frame loop with --max-seconds (it then prints the summary of the frames timed so far)
# and has a `timeout` as the backstop. Logs land in OUT_DIR/probe_PART.log, per-frame curves in OUT_DIR/runs.
set -u
OUT_DIR=${1:?usage: bash experiments/gpu_probe.sh OUT_DIR [main|extra]}
PART=${2:-main}
PY=${PYTHON:-python3}
WORK=${TMPDIR:-/tmp}/mavos_gpu_probe
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled PYTHONWARNINGS=ignore
case "$PART" in main|extra) ;; *) echo "gpu_probe.sh: PART must be main or extra, not '$PART'" >&2; exit 2;; esac
mkdir -p "$OUT_DIR" "$WORK"
SB="$PY experiments/speed_benchmark.py --device cuda --no-flops --cudnn-benchmark --size 480x854 --compile"
SB="$SB --warmup 35 --out $OUT_DIR/runs"
keep() { grep -v -E "^(csv|USDT|ERROR|W[0-9])" | grep -v "dynamo_timed"; }
step() { echo; echo "=== $1 ($(date +%T))"; }
{
  step "environment ($PART)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  if [ "$PART" = main ]; then
    COMPARE=""
    [ -n "${COMPARE_WITH:-}" ] && COMPARE="--compare-with $COMPARE_WITH"
    step "MobileNetV2 compiled bf16 480p, 1000 frames ${COMPARE:+(beside $COMPARE_WITH)}"
    timeout 240 $SB --model mavos_mbv2 --precision bf16 --frames 1000 --max-seconds 200 --profile 10 $COMPARE 2>&1 \
      | keep | head -n 60
    step "MobileNetV2 compiled bf16 480p, 1000 frames, the 5x5s on PyTorch's kernel (--fused-depthwise 3)"
    timeout 140 $SB --model mavos_mbv2 --precision bf16 --frames 1000 --max-seconds 110 --profile 10 \
      --fused-depthwise 3 2>&1 | keep | head -n 50
    step "MobileNetV2 compiled strict fp32 (TF32 off) 480p, 1000 frames"
    timeout 150 $SB --model mavos_mbv2 --precision fp32 --frames 1000 --max-seconds 120 2>&1 | keep | head -n 6
  else
    step "Swin-B compiled bf16 480p, 1000 frames (flatness: first against last tenth)"
    timeout 170 $SB --model mavos_swinb --precision bf16 --frames 1000 --max-seconds 140 2>&1 | keep | head -n 6
    step "MobileNetV2 compiled bf16 480p --inductor realize_reads_threshold=1"
    timeout 120 $SB --model mavos_mbv2 --precision bf16 --frames 400 --max-seconds 95 --profile 10 \
      --inductor realize_reads_threshold=1 2>&1 | keep | head -n 50
    step "MobileNetV2 compiled bf16 at the embedded benchmark's size (240x432)"
    timeout 100 $SB --model mavos_mbv2 --precision bf16 --frames 1000 --max-seconds 75 --size 240x432 2>&1 \
      | keep | head -n 6
    step "evaluate.py, compiled bf16, embedded benchmark (random weights: speeds, not scores)"
    CKPT=$WORK/random_mavos_mbv2.ckpt
    $PY experiments/random_checkpoint.py "$CKPT" mavos_mbv2
    timeout 150 $PY evaluate.py ckpt_path="$CKPT" results_dir="$WORK/eval_compiled" session.compile=true \
      session.amp=bf16 session.max_short_edge=null resume=false 2>&1 | tr '\r' '\n' \
      | grep -E "speed:|model|compil|rror" | grep -v "%|" | tail -n 6
  fi
  step done
} 2>&1 | tee "$OUT_DIR/probe_$PART.log"
