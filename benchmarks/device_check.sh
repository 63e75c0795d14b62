#!/usr/bin/env bash
# The check to run first on a machine with a GPU (about 8 minutes): the GPU-marked tests, the
# package's step against the reference's on the GPU (with the speed levers), the data pipeline's
# throughput (JPEG decode and crops on the GPU), the training loop end to end on JPEG files
# (PIL in loader workers vs decoding on the GPU), benchmarks/gpu_checks.py when present, and a
# CIFAR-10 (50,000 images) ViT pretraining of up to 3 minutes (what the budget leaves) with its
# k-NN at the end. Each part writes JSON into OUT_DIR; the last thing printed is one JSON
# summary of all of them.
#
#   benchmarks/device_check.sh [OUT_DIR]          # default: device-check-<date>
#
# Environment:
#   DINO_REFERENCE       a clone of facebookresearch/dino (default: dino-reference in the
#                        repository root, which git ignores; without it the comparison is skipped)
#   DINOSSL_SHARED_DATA  the shared test data (default: ../shared/data)
#   PYTHON               the interpreter (default: python)
#   BUDGET_S             the whole script's time budget in seconds (default 480)
#   DRY_RUN=1            tiny sizes on whatever device there is (a CPU: GPU-only parts skip with
#                        a reason), one torch thread, and 4x the time limits (a busy CPU is slow):
#                        to check the script itself
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=${1:-device-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python}
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export DINOSSL_SHARED_DATA=${DINOSSL_SHARED_DATA:-$REPO/../shared/data}
REFERENCE=${DINO_REFERENCE:-$REPO/dino-reference}
DRY_RUN=${DRY_RUN:-0}
BUDGET_S=${BUDGET_S:-480}
[ "${DRY_RUN:-0}" = 1 ] && BUDGET_S=${BUDGET_S_DRY:-3000}
START=$(date +%s)
STATUS="$OUT/status.jsonl"
: > "$STATUS"

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

# part NAME LIMIT_S COMMAND...: run with a time limit (never past the budget), log to OUT/NAME.log,
# record rc, seconds and whether it was cut off.
part() {
  local name=$1 limit=$2; shift 2
  local remaining; remaining=$(left)
  if (( remaining < 20 )); then
    echo "{\"part\": \"$name\", \"skipped\": \"no time left in the ${BUDGET_S}-s budget\"}" >> "$STATUS"
    return
  fi
  [ "$DRY_RUN" = 1 ] && limit=$(( limit * 4 ))
  (( limit > remaining - 5 )) && limit=$(( remaining - 5 ))
  echo "== $name (at most ${limit} s)" >&2
  local began; began=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"part\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - began )), \"limit_s\": $limit, \"timed_out\": $([ $rc -eq 124 ] || [ $rc -eq 137 ] && echo true || echo false)}" >> "$STATUS"
}

skip() { echo "{\"part\": \"$1\", \"skipped\": \"$2\"}" >> "$STATUS"; }

GPU=$($PYTHON -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ "$DRY_RUN" = 1 ]; then
  DEVICE=$([ "$GPU" = 1 ] && echo cuda || echo cpu)
  TINY_MODEL=(--arch vit_tiny --depth 2 --global-size 32 --local-size 16 --num-local 2 --batch 4 --out-dim 256
              --hidden-dim 64 --bottleneck-dim 32 --steps 2 --warmup 1)
  COMPARE=(--device "$DEVICE" "${TINY_MODEL[@]}" --threads 1 --levers pack_crops,activation_checkpointing)
  AUGMENT=(--device "$DEVICE" --skip-sample-workloads --jpeg-images 8 --batch 4 --repeats 1 --threads 1)
  LOOP=(--preset vit-tiny-cifar model.depth=1 data.crops.global_size=64 data.crops.local_size=32
        train.batch_size_per_process=4 data.num_workers=1 "train.device=$DEVICE" --warmup 1 --steps 2
        data.geometric=per_image data.photometric=loader)
  CIFAR=(--minutes 0.1 --per-class 10 --warmup 1 --calibration 2 model.depth=1 train.batch_size_per_process=16
         "train.device=$DEVICE")
  GPU_CHECK_MINUTES=0.2
else
  DEVICE=cuda
  COMPARE=(--setting gpu --device cuda --precision auto --steps 10 --warmup 3
           --levers pack_crops,activation_checkpointing,compile)
  AUGMENT=(--device cuda --skip-sample-workloads --jpeg-images 150 --batch 64 --repeats 3)
  LOOP=(--preset vit-small-imagenet train.batch_size_per_process=64 data.crops.num_local=10 data.num_workers=8
        train.precision=auto data.geometric=per_image data.photometric=loader --warmup 3 --steps 12)
  CIFAR=(--minutes 3 train.batch_size_per_process=256 data.num_workers=8)
  GPU_CHECK_MINUTES=0.15  # per precision (fp32, bf16, fp16)
fi

# 1. The GPU-marked tests (on a CPU they skip, each with its reason); only the files that hold
#    some, so that a test module needing an optional package elsewhere cannot stop collection.
GPU_TEST_FILES=$(grep -rl "pytest.mark.gpu" tests --include='test_*.py' | sort)
part gpu_tests 75 $PYTHON -m pytest -q -p no:cacheprovider -m gpu -rs --junitxml="$OUT/gpu_tests.xml" $GPU_TEST_FILES

# 2. The reference's step and the package's, same configuration and device, with the levers.
if [ "$DRY_RUN" != 1 ] && [ "$GPU" != 1 ]; then
  skip compare "torch sees no CUDA device (DRY_RUN=1 runs it on the CPU with tiny sizes)"
elif [ ! -f "$REFERENCE/main_dino.py" ]; then
  skip compare "no reference clone at $REFERENCE (set DINO_REFERENCE to a clone of facebookresearch/dino)"
else
  part compare 100 $PYTHON benchmarks/compare_reference.py "$REFERENCE" "${COMPARE[@]}" --out "$OUT/compare.json"
fi

# 3. The data pipeline alone: JPEG files decoded and cropped on the device, per process.
if [ "$DRY_RUN" != 1 ] && [ "$GPU" != 1 ]; then
  skip augment "torch sees no CUDA device"
else
  part augment 30 $PYTHON benchmarks/augment_throughput.py "${AUGMENT[@]}" --out "$OUT/augment.json"
fi

# 4. The training loop end to end on JPEG files of unequal sizes (the horses and DAVIS frames of
#    the shared data): PIL in the loader workers against decoding and cropping on the device.
JPEG_ARCHIVES=("$DINOSSL_SHARED_DATA/weizmann-horses-100.tar.gz" "$DINOSSL_SHARED_DATA/davis2016-3seq.tar.gz")
if [ "$DRY_RUN" != 1 ] && [ "$GPU" != 1 ]; then
  skip loop "torch sees no CUDA device"
elif [ ! -f "${JPEG_ARCHIVES[0]}" ] || [ ! -f "${JPEG_ARCHIVES[1]}" ]; then
  skip loop "the horses and DAVIS archives are not in $DINOSSL_SHARED_DATA"
else
  JPEGS="$(cd "$OUT" && pwd)/jpegs"
  mkdir -p "$JPEGS/extracted" "$JPEGS/data/horses" "$JPEGS/data/davis"
  for archive in "${JPEG_ARCHIVES[@]}"; do tar xzf "$archive" -C "$JPEGS/extracted"; done
  ln -sf "$JPEGS"/extracted/weizmann-horses/images/*.jpg "$JPEGS/data/horses/"
  for frame in "$JPEGS"/extracted/davis2016/JPEGImages/480p/*/*.jpg; do
    ln -sf "$frame" "$JPEGS/data/davis/$(basename "$(dirname "$frame")")-$(basename "$frame")"
  done
  part loop 45 $PYTHON benchmarks/loop_throughput.py "${LOOP[@]}" "data.path=$JPEGS/data" \
    --compare data.photometric=device,data.geometric=device --out "$OUT/loop.json"
fi

# 5. The bf16/fp16 step checks, when present in this checkout.
if [ -f benchmarks/gpu_checks.py ]; then
  GPU_CHECK_ARGS=(--out "$OUT/gpu_checks.json" --minutes "$GPU_CHECK_MINUTES")
  grep -q -- "--no-tests" benchmarks/gpu_checks.py && GPU_CHECK_ARGS+=(--no-tests)  # part 1 ran them
  [ "$DRY_RUN" = 1 ] && grep -q -- "--dry-run" benchmarks/gpu_checks.py && GPU_CHECK_ARGS+=(--dry-run)
  part gpu_checks 45 $PYTHON benchmarks/gpu_checks.py "${GPU_CHECK_ARGS[@]}"
else
  skip gpu_checks "benchmarks/gpu_checks.py is not in this checkout"
fi

# 6. CIFAR-10 pretraining sized to about 3 minutes (less if the budget is short), then k-NN.
if [ "$DRY_RUN" != 1 ] && [ "$GPU" != 1 ]; then
  skip cifar10 "torch sees no CUDA device"
elif [ ! -f "$DINOSSL_SHARED_DATA/cifar10-jpg.tar.gz" ]; then
  skip cifar10 "$DINOSSL_SHARED_DATA/cifar10-jpg.tar.gz not found (set DINOSSL_SHARED_DATA)"
else
  if [ "$DRY_RUN" != 1 ]; then  # the training gets what the budget leaves after ~60 s of setup and k-NN
    MINUTES=$($PYTHON -c "print(round(max(0.5, min(3.0, ($(left) - 65) / 60)), 2))")
    CIFAR[1]=$MINUTES
  fi
  part cifar10 260 $PYTHON benchmarks/timed_cifar10.py "${CIFAR[@]}" --out "$OUT/cifar10.json"
fi

$PYTHON benchmarks/device_check_summary.py "$OUT" --seconds $(( $(date +%s) - START )) --dry-run "$DRY_RUN"
