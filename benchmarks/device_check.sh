#!/usr/bin/env bash
# The check to run on a bare GPU machine, as one call, at most 8 minutes. Parts, in order, each
# writing its JSON into OUT_DIR when it ends (and one line to OUT_DIR/status.jsonl):
#   env         (<= 30 s) the interpreter, torch, torchvision, timm, the GPU; stops the whole
#               check at once, with one line, if torch sees no GPU
#   gpu_tests   the gpu-marked tests (pytest -m gpu; junit XML)
#   compare_*   the package's training step against the reference's on the GPU, in fp32, bf16
#               and fp16, each with compile off and on (benchmarks/compare_reference.py)
#   pipeline    the batched device pipeline (decode, crops, photometric ops on the GPU) against
#               the PIL path of the loader workers, per CPU core (benchmarks/loader_throughput.py)
#   cifar10     a CIFAR-10 ViT pretraining timed to what the budget leaves, then its k-NN
#               (benchmarks/timed_cifar10.py)
# then one JSON summary of all parts (OUT_DIR/summary.json, also printed).
#
#   benchmarks/device_check.sh --prepare     # on the CPU machine, before the device call
#   benchmarks/device_check.sh [OUT_DIR]     # on the GPU machine (default OUT_DIR: device-check-<date>)
#
# --prepare copies what the check reads into device-check-data/ in the repository (git ignores
# it; under 40 MiB): the real-image archives of the shared test data (DINOSSL_SHARED_DATA,
# default ../shared/data), the Python files of a clone of facebookresearch/dino (DINO_REFERENCE,
# default dino-reference or ../dino-reference, "none" for no clone; without one the comparison is
# skipped with its reason) and pytest as pure-Python packages (the GPU image may lack it). The check itself reads
# only from there (DEVICE_CHECK_DATA overrides the folder).
#
# Environment: PYTHON (default python3), BUDGET_S (default 480), DRY_RUN=1: every part that can
# runs on the CPU with tiny sizes, 4x the time limits (BUDGET_S_DRY, default 3000), without the
# compile lever, the GPU-only one (fp16 comparison) skips with its reason: to check the script itself
# (tests/benchmarks/test_device_check.py runs it).
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)
DATA=${DEVICE_CHECK_DATA:-$REPO/device-check-data}
PYTHON=${PYTHON:-python3}
ARCHIVES=(weizmann-horses-100.tar.gz davis2016-3seq.tar.gz cifar10-jpg.tar.gz)
LIMIT_MIB=40

die() { echo "device_check: error: $*" >&2; exit 2; }

if [ "${1:-}" = "--prepare" ]; then
  SHARED=${DINOSSL_SHARED_DATA:-$REPO/../shared/data}
  for archive in "${ARCHIVES[@]}"; do
    [ -f "$SHARED/$archive" ] || die "$SHARED/$archive not found (set DINOSSL_SHARED_DATA to the shared test data)"
  done
  REFERENCE=${DINO_REFERENCE:-}
  if [ "$REFERENCE" = none ]; then
    REFERENCE=""
  elif [ -z "$REFERENCE" ]; then
    for candidate in "$REPO/dino-reference" "$REPO/../dino-reference"; do
      [ -f "$candidate/main_dino.py" ] && REFERENCE=$candidate && break
    done
  fi
  [ -z "$REFERENCE" ] || [ -f "$REFERENCE/main_dino.py" ] || die "$REFERENCE has no main_dino.py (DINO_REFERENCE: a clone of facebookresearch/dino)"
  "$PYTHON" -c "import pytest" 2>/dev/null || die "$PYTHON cannot import pytest (run --prepare with the project's environment)"
  STAGE=$(mktemp -d "$REPO/.device-check-data.XXXXXX") || die "cannot write in $REPO"
  trap 'rm -rf "$STAGE"' EXIT
  mkdir -p "$STAGE/shared"
  for archive in "${ARCHIVES[@]}"; do cp "$SHARED/$archive" "$STAGE/shared/" || die "copying $archive failed"; done
  if [ -n "$REFERENCE" ]; then
    (cd "$REFERENCE" && find . -name '*.py' -not -path './.git/*' | tar cf - -T -) | (mkdir -p "$STAGE/dino-reference" && cd "$STAGE/dino-reference" && tar xf -) \
      || die "copying the reference's Python files from $REFERENCE failed"
  fi
  "$PYTHON" - "$STAGE/pylib.tar.gz" <<'EOF' || die "packing pytest failed"
import sys, tarfile
from importlib import metadata
from pathlib import Path
names = ["pytest", "pluggy", "iniconfig", "pygments", "packaging"]
with tarfile.open(sys.argv[1], "w:gz") as tar:
    for name in names:
        dist = metadata.distribution(name)
        for file in dist.files or []:
            path = Path(dist.locate_file(file))
            if path.is_file() and "__pycache__" not in path.parts and ".." not in file.parts:
                tar.add(path, arcname=str(file))
EOF
  size=$(du -sm "$STAGE" | cut -f1)
  (( size < LIMIT_MIB )) || die "the prepared folder would hold ${size} MiB, more than ${LIMIT_MIB}"
  rm -rf "$DATA" && mv "$STAGE" "$DATA" && trap - EXIT
  echo "device_check: prepared $DATA (${size} MiB: ${ARCHIVES[*]}${REFERENCE:+, the Python files of the reference clone $REFERENCE}, pytest)"
  exit 0
fi

case "${1:-}" in -*) die "unknown option $1 (use --prepare, or give an output folder)";; esac
OUT=${1:-device-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
DRY_RUN=${DRY_RUN:-0}
BUDGET_S=${BUDGET_S:-480}
[ "$DRY_RUN" = 1 ] && BUDGET_S=${BUDGET_S_DRY:-3000}  # a busy CPU is slow: 4x each part's limit too
START=$(date +%s)
STATUS="$OUT/status.jsonl"
: > "$STATUS"
[ -d "$DATA/shared" ] || die "$DATA/shared not found: run benchmarks/device_check.sh --prepare first (and carry device-check-data)"
export PYTHONPATH="$REPO/src:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export DINOSSL_SHARED_DATA="$DATA/shared"
REFERENCE="$DATA/dino-reference"
SCRATCH=$(mktemp -d) || die "no temporary folder"
trap 'rm -rf "$SCRATCH"' EXIT
if ! "$PYTHON" -c "import pytest" 2>/dev/null && [ -f "$DATA/pylib.tar.gz" ]; then
  mkdir -p "$SCRATCH/pylib" && tar xzf "$DATA/pylib.tar.gz" -C "$SCRATCH/pylib" && export PYTHONPATH="$PYTHONPATH:$SCRATCH/pylib"
fi

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

# part NAME LIMIT_S COMMAND...: run with a time limit (never past the budget), log to OUT/NAME.log,
# then append its rc, seconds and whether it was cut off to status.jsonl.
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
  timeout -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"part\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - began )), \"limit_s\": $limit, \"timed_out\": $([ $rc -eq 124 ] || [ $rc -eq 137 ] && echo true || echo false)}" >> "$STATUS"
}

skip() { echo "{\"part\": \"$1\", \"skipped\": \"$2\"}" >> "$STATUS"; }

# env: at most 30 s; without a GPU (and without DRY_RUN=1) the check stops here with one line.
timeout -k 5 30 "$PYTHON" - "$OUT/env.json" "$DRY_RUN" <<'EOF'
import json, os, platform, shutil, subprocess, sys
env = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
       "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())}
try:
    import torch
except ImportError as exc:
    print(f"device_check: error: {sys.executable} cannot import torch ({exc})", file=sys.stderr)
    sys.exit(2)
env.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
from importlib import metadata
for name in ("torchvision", "timm", "pillow", "numpy", "pytest"):  # versions without importing them
    try:
        env[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        env[name] = "missing"
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    env.update(gpu=props.name, gpus=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}",
               memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version())
    if shutil.which("nvidia-smi"):
        env["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout.strip()
open(sys.argv[1], "w").write(json.dumps(env, indent=2) + "\n")
print(json.dumps(env, indent=2))
if not torch.cuda.is_available() and sys.argv[2] != "1":
    print(f"device_check: error: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no GPU; "
          "nothing to check (DRY_RUN=1 runs the script on a CPU)", file=sys.stderr)
    sys.exit(2)
EOF
rc=$?
echo "{\"part\": \"env\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - START )), \"limit_s\": 30}" >> "$STATUS"
{ [ $rc -eq 124 ] || [ $rc -eq 137 ]; } && die "$PYTHON took more than 30 s to import torch and describe the machine"
[ $rc -eq 0 ] || exit 2
GPU=$([ "$DRY_RUN" = 1 ] && "$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 1)
DEVICE=$([ "$GPU" = 1 ] && echo cuda || echo cpu)

if [ "$DRY_RUN" = 1 ]; then
  COMPARE=(--device "$DEVICE" --arch vit_tiny --depth 2 --global-size 32 --local-size 16 --num-local 2 --batch 4
           --out-dim 256 --hidden-dim 64 --bottleneck-dim 32 --steps 2 --warmup 1 --threads 1)
  PIPELINE=(--device "$DEVICE" --images 4 --batch 2 --repeats 1)
  CIFAR=(--minutes 0.1 --per-class 10 --warmup 1 --calibration 2 model.depth=1 train.batch_size_per_process=16
         "train.device=$DEVICE")
  PRECISIONS=(fp32 bf16)
  LEVERS=()  # compiling on a busy CPU takes minutes: the dry run checks the script, not compile
else
  COMPARE=(--setting gpu --device cuda --steps 10 --warmup 3)
  PIPELINE=(--device cuda --images 256 --batch 64 --repeats 2)
  CIFAR=(--minutes 3 train.batch_size_per_process=256 data.num_workers=8)
  PRECISIONS=(fp32 bf16 fp16)
  LEVERS=(--levers compile)
fi

# gpu_tests: only the files that hold some, so that a module needing a package the image lacks
# elsewhere cannot stop the collection.
GPU_TEST_FILES=$(grep -rl "pytest.mark.gpu" tests --include='test_*.py' | sort)
part gpu_tests 110 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu -rs --junitxml="$OUT/gpu_tests.xml" $GPU_TEST_FILES

# compare_<precision>: the reference's step and the package's, compile off (the base) and on (the lever).
for precision in fp32 bf16 fp16; do
  if [[ ! " ${PRECISIONS[*]} " =~ " $precision " ]]; then
    skip "compare_$precision" "fp16 autocast with a gradient scaler needs a GPU"
  elif [ ! -f "$REFERENCE/main_dino.py" ]; then
    skip "compare_$precision" "no reference in $REFERENCE (--prepare found no clone of facebookresearch/dino)"
  else
    REFERENCE_PRECISION=$([ "$precision" = fp32 ] || [ "$DEVICE" = cpu ] && echo fp32 || echo fp16)
    part "compare_$precision" 70 "$PYTHON" benchmarks/compare_reference.py "$REFERENCE" "${COMPARE[@]}" \
      --precision "$precision" --reference-precision "$REFERENCE_PRECISION" "${LEVERS[@]}" --out "$OUT/compare_$precision.json"
  fi
done

# pipeline: the loader's images/s per CPU core (PIL path, device path's worker part) and the
# device part's images/s on the GPU, on the horses and DAVIS JPEGs.
part pipeline 40 "$PYTHON" benchmarks/loader_throughput.py "${PIPELINE[@]}" --out "$OUT/pipeline.json"

# cifar10: pretraining sized to what the budget leaves after ~60 s of setup and k-NN.
if [ "$DRY_RUN" != 1 ]; then
  CIFAR[1]=$("$PYTHON" -c "print(round(max(0.3, min(3.0, ($(left) - 70) / 60)), 2))")
fi
part cifar10 260 "$PYTHON" benchmarks/timed_cifar10.py "${CIFAR[@]}" --out "$OUT/cifar10.json"

"$PYTHON" benchmarks/device_check_summary.py "$OUT" --seconds $(( $(date +%s) - START )) --dry-run "$DRY_RUN"
