#!/usr/bin/env bash
# The open questions of issue 11 on one CUDA GPU, in calls of under 10 minutes each (most wanted first):
#   [COMPARE_WITH=DIR] bash experiments/gpu_probe.sh OUT_DIR [eval|eval480|fp32mm|freeze|fp32both|fp32|graphs|main|swinb]
# eval (~7 minutes at most; the default): the CUDA tests of the session's own graphs (the compiled step equals
#   eager in float32; graphs recorded by warm_up's rehearsal serve the video after it, stepped under
#   torch.inference_mode, and the next session's video, which record none: on 2026-11-27 the first video recorded
#   them again, 6 graphs, when the session still ran in its caller's mode), then evaluate.py over the embedded
#   benchmark compiled in bf16 (frames decoded by threads, written and scored by processes): model FPS against
#   end-to-end FPS (it outlasted 115 s, compiling included, on 2026-11-27).
# eval480 (~5 minutes at most; right after eval, while the machine is warm): evaluate.py at DAVIS's 480x854 (two
#   synthetic 300-frame videos in the DAVIS layout), where a frame takes ~3 ms on the GPU and ~4-7 ms to decode
#   and ~35 ms to write and score on one core.
# fp32mm (~9 minutes at most): MobileNetV2's compiled step in strict fp32 (TF32 off) at 480p over 1000 frames with
#   inductor turning the 1x1 convolutions (43 of a regular frame's 48 non-depthwise ones) into matmuls
#   (--inductor conv_1x1_as_mm=True), beside the same code with inductor's defaults in the same process
#   (--compare-with .), with the kernel profile of the first: on 2026-11-27 cuDNN's direct convolution
#   (convolve_common_engine_float_NHWC, 24 calls a frame) took 11.6% of the fp32 kernel time and the
#   implicit-GEMM convolutions 15% (150 FPS? 138.7 then). Both contenders compile (over 120 s each in fp32).
# freeze (~9 minutes at most): the same strict fp32 step with inductor freezing the weights into the compiled code
#   (--inductor freezing=True: constants, folded; what a CPU session does by itself, 0.92-0.94x the eager time
#   on a 2-core Xeon on 2026-11-28) beside the defaults in one process, with the kernel profile of the first.
# fp32both (~9 minutes at most): both of the above at once (weights frozen and 1x1 convolutions as matmuls) beside
#   the defaults: one call that says whether the two together reach 150 FPS, where the device time allows one.
# fp32 (~8 minutes at most): the same CUDA tests, then MobileNetV2's compiled step in strict fp32 (TF32 off) at
#   480p over 1000 frames (150 FPS? 138.7 on 2026-11-27 on the session's own graphs, 133 on 2026-11-26 with
#   torch.compile's), given the time its compiling takes (over 120 s).
# graphs (~9 minutes at most, COMPARE_WITH a checkout of 1704b70: torch.compile's own CUDA graphs): the
#   session's own CUDA graphs with the memory updated in place (mavos/inference/graphs.py), MobileNetV2 compiled
#   bf16 at 480p over 1000 frames beside COMPARE_WITH in one process, with the kernel profile (300 FPS?), after
#   the CUDA tests' compiled-equals-eager check (float32, 1e-4) on those graphs.
# main (~9 minutes at most):
#   1. MobileNetV2's compiled bf16 step at 480p over 1000 frames with inductor writing the 5x5 depthwise
#      convolutions' input out once instead of recomputing it in every tap (--inductor realize_reads_threshold=1),
#      beside the same code with inductor's defaults in the same process (--compare-with .), with the kernel
#      profile of the first (300 FPS? the 5x5s were 0.5 of 3.16 ms of kernels a frame on 2026-11-27);
#   2. the same step in strict fp32 (TF32 off; 150 FPS?), given the time its compiling takes (over 120 s).
# swinb (~9 minutes at most): Swin-B's compiled bf16 step over 1000 frames, beside COMPARE_WITH (a checkout of
#   03990db, the three graphs a frame: `mkdir -p DIR && git archive 03990db mavos conf | tar -x -C DIR`): 7.2 ms
#   a frame on 2026-11-27 against 6.1 for 03990db on 2026-11-26, on two machines; the same process says whether
#   one graph a frame costs Swin-B time.
# Compiling happens inside each run's warm-up frames (133 s for MobileNetV2 in bf16 and 241 s for Swin-B on a
# fresh H100 machine; later processes reuse inductor's on-disk caches), so every run bounds its whole frame loop
# with --max-seconds (it then prints the summary of the frames timed so far) and has a `timeout` as the
# backstop. Logs land in OUT_DIR/probe_PART.log, per-frame curves in OUT_DIR/runs.
set -u
OUT_DIR=${1:?usage: bash experiments/gpu_probe.sh OUT_DIR [eval|eval480|fp32mm|freeze|fp32both|fp32|graphs|main|swinb]}
PART=${2:-eval}
PY=${PYTHON:-python3}
WORK=${TMPDIR:-/tmp}/mavos_gpu_probe
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled PYTHONWARNINGS=ignore
case "$PART" in eval|eval480|fp32mm|freeze|fp32both|fp32|graphs|main|swinb) ;; *) echo "gpu_probe.sh: PART must be eval, eval480, fp32mm, freeze, fp32both, fp32, graphs, main or swinb, not '$PART'" >&2; exit 2;; esac
if { [ "$PART" = swinb ] || [ "$PART" = graphs ]; } && [ -z "${COMPARE_WITH:-}" ]; then
  echo "gpu_probe.sh $PART: set COMPARE_WITH to an older checkout (see the header)" >&2; exit 2
fi
mkdir -p "$OUT_DIR" "$WORK"
SB="$PY experiments/speed_benchmark.py --device cuda --no-flops --cudnn-benchmark --size 480x854 --compile"
SB="$SB --warmup 35 --frames 1000 --out $OUT_DIR/runs"
keep() { grep -v -E "^(csv|USDT|ERROR|W[0-9])" | grep -v "dynamo_timed"; }
step() { echo; echo "=== $1 ($(date +%T))"; }
{
  step "environment ($PART)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  if [ "$PART" = fp32 ] || [ "$PART" = eval ]; then
    step "CUDA tests: the session's own CUDA graphs, compiled equals eager and handed from session to session"
    timeout 180 $PY -m pytest -q -s -p no:cacheprovider -p no:logging tests/test_cuda.py \
      -k "compiled_step or session_to_session" 2>&1 | grep -E "^E |passed|failed|vs eager|Error" | head -n 30
  fi
  if [ "$PART" = fp32mm ] || [ "$PART" = freeze ] || [ "$PART" = fp32both ]; then
    if [ "$PART" = fp32mm ]; then SETTING=conv_1x1_as_mm=True; WHAT="1x1 convolutions as matmuls"
    elif [ "$PART" = freeze ]; then SETTING=freezing=True; WHAT="weights frozen"
    else SETTING="freezing=True --inductor conv_1x1_as_mm=True"; WHAT="weights frozen, 1x1 convolutions as matmuls"; fi
    step "MobileNetV2 compiled strict fp32 (TF32 off) 480p: $WHAT (new) beside the defaults (old)"
    timeout 550 $SB --model mavos_mbv2 --precision fp32 --max-seconds 530 --profile 10 --compare-with . \
      --inductor $SETTING 2>&1 | keep | head -n 50
  elif [ "$PART" = fp32 ]; then
    step "MobileNetV2 compiled strict fp32 (TF32 off) 480p, 1000 frames"
    timeout 270 $SB --model mavos_mbv2 --precision fp32 --max-seconds 250 --profile 10 2>&1 | keep | head -n 40
  elif [ "$PART" = graphs ]; then
    step "CUDA tests: the compiled step on its own CUDA graphs equals eager (float32)"
    timeout 150 $PY -m pytest -q -s -p no:cacheprovider -p no:logging tests/test_cuda.py -k compiled_step 2>&1 \
      | grep -E "^E |passed|failed|compiled vs eager|Error" | head -n 30
    step "MobileNetV2 compiled bf16 480p: the session's own CUDA graphs (new) beside $COMPARE_WITH (old)"
    timeout 320 $SB --model mavos_mbv2 --precision bf16 --max-seconds 300 --profile 10 --compare-with "$COMPARE_WITH" \
      2>&1 | keep | head -n 50
  elif [ "$PART" = main ]; then
    step "MobileNetV2 compiled bf16 480p: realize_reads_threshold=1 (new) beside inductor's defaults (old)"
    timeout 290 $SB --model mavos_mbv2 --precision bf16 --max-seconds 270 --profile 10 --compare-with . \
      --inductor realize_reads_threshold=1 2>&1 | keep | head -n 50
    step "MobileNetV2 compiled strict fp32 (TF32 off) 480p"
    timeout 250 $SB --model mavos_mbv2 --precision fp32 --max-seconds 230 2>&1 | keep | head -n 6
  elif [ "$PART" = swinb ]; then
    step "Swin-B compiled bf16 480p beside $COMPARE_WITH (flatness: first against last tenth)"
    timeout 530 $SB --model mavos_swinb --precision bf16 --max-seconds 510 --compare-with "$COMPARE_WITH" 2>&1 \
      | keep | head -n 8
  else
    CKPT=$WORK/random_mavos_mbv2.ckpt
    [ -f "$CKPT" ] || $PY experiments/random_checkpoint.py "$CKPT" mavos_mbv2
    if [ "$PART" = eval ]; then
      step "evaluate.py, compiled bf16, embedded benchmark (random weights: speeds, not scores)"
      timeout 200 $PY evaluate.py ckpt_path="$CKPT" results_dir="$WORK/eval_compiled" session.compile=true \
        session.amp=bf16 session.max_short_edge=null resume=false 2>&1 | tr '\r' '\n' \
        | grep -E "speed:|model|compil|rror" | grep -v "%|" | tail -n 6
    else
      step "evaluate.py, compiled bf16, at DAVIS's 480x854: two synthetic 300-frame videos in the DAVIS layout"
      $PY -c "from mavos.data.synthetic import ensure_synthetic_davis as make; make('$WORK/davis480', num_train=0,
num_val=2, val_lengths=(300, 300), height=480, width=854)"
      timeout 270 $PY evaluate.py ckpt_path="$CKPT" data=davis2017 data.root="$WORK/davis480" \
        results_dir="$WORK/eval_480p" session.compile=true session.amp=bf16 session.max_short_edge=null \
        resume=false 2>&1 | tr '\r' '\n' | grep -E "speed:|model|compil|rror" | grep -v "%|" | tail -n 6
    fi
  fi
  step done
} 2>&1 | tee "$OUT_DIR/probe_$PART.log"
