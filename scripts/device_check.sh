#!/usr/bin/env bash
# The GPU check of issue 21 as one device call: everything lleval says about GPUs, measured.
#
#   bash scripts/device_wheels.sh            # here, once: fills .whl/ (datasets wheels, the tokenizer)
#   bash scripts/device_check.sh             # on the lent GPU machine: run(command=..., carry=[".whl"], timeout_s=600)
#   bash scripts/device_check.sh --dry-run   # here, on the CPU: the same steps with small sizes
#
# Steps, each under its own `timeout` and all within DEVICE_CHECK_SECONDS (450 s by default, so
# the call ends inside 8 minutes whatever hangs):
#   setup    install .whl/*.whl into a target folder (the device has no `datasets`)
#   env      versions, the GPU, and that lleval imports from src/ (lleval is not installed there)
#   planner  scripts/planner_speed.py: make_batches per 1M tokens of 20-token windows, GPU budget
#   tests    pytest -m gpu tests/test_gpu.py (bf16 default, naive-loop agreement, OOM back-off,
#            --device-map auto, torchrun, NCCL)
#   bench    scripts/bench.py --device cuda: random 1B Llama, bf16, L = 2048 and short documents,
#            lleval against a naive loop: tokens/s, MFU, peak memory, padding
#   kld      lleval kld --base-dtype float32 --dtype bfloat16 on the bench's model and corpus
# Files in $OUT (8 at most, one folder deep; a temp dir when OUT is unset): summary.json, steps.log,
# tests.log, tests.xml, planner.json, bench.json, bench.log, kld.json. Exit status 1 when a step
# failed; summary.json says which, and what the others measured.
# DEVICE_CHECK_STEPS="tests bench" runs setup, env and the steps named only (a rerun; kld needs
# bench's model). DEVICE_CHECK_SECONDS sets the time budget of all steps together.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
case "${1:-}" in
    --dry-run) DRY=1 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "usage: bash scripts/device_check.sh [--dry-run]" >&2; exit 2 ;;
esac
OUT=${OUT:-$(mktemp -d -t lleval-device-check.XXXXXX)}
mkdir -p "$OUT"
WORK=$(mktemp -d -t lleval-device-work.XXXXXX)
PY=${PYTHON:-python3}  # the device's python3 holds torch; here PYTHON=.venv/bin/python
[ -z "${PYTHON:-}" ] && [ "$DRY" = 1 ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
BUDGET=${DEVICE_CHECK_SECONDS:-450}
START=$(date +%s)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
if [ "$DRY" = 1 ]; then
    touch "$WORK/dry-run"
    export LLEVAL_DEVICE_CHECK_CPU=1  # tests/test_gpu.py runs on the CPU instead of skipping
    DEVICE=cpu MODEL=random-small BENCH=(--device cpu --in-process --model-config small --smoke)
    KLD=(--limit 2)
    # the wheels are for the device's CPython 3.12: here they are installed as for it, and not imported
    INSTALL=(--python-version 3.12 --only-binary=:all:)
    export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
else
    DEVICE=cuda MODEL=random-1b BENCH=(--device cuda --model-config 1b)
    KLD=()
    INSTALL=(--no-compile)
    export PYTHONPATH=$WORK/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi

step() {  # step NAME LIMIT_SECONDS LOG COMMAND...: run it under timeout, log it, record it in steps.tsv
    local name=$1 limit=$2 log=$OUT/$3
    shift 3
    case " setup env ${DEVICE_CHECK_STEPS:-$name} " in *" $name "*) ;; *) return ;; esac
    local left=$((BUDGET - ($(date +%s) - START)))
    ((limit > left)) && limit=$left
    if ((limit < 5)); then
        printf '%s\tskipped\t0\t0\n' "$name" >>"$WORK/steps.tsv"
        echo "== $name: skipped, the time budget is spent" | tee -a "$log"
        return
    fi
    local shown="$*"
    echo "== $name (limit ${limit}s): ${shown:0:300}" | tee -a "$log"
    local t0 rc
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    local seconds
    seconds=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$seconds" "$limit" >>"$WORK/steps.tsv"
    echo "== $name: rc $rc in ${seconds}s" | tee -a "$log"
}

ENV_PROBE='
import json, platform, subprocess, sys
import numpy, torch, transformers, datasets, accelerate
import lleval.commands.score
cuda = torch.cuda.is_available()
smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True) if cuda else None
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
        "bf16_supported": torch.cuda.is_bf16_supported() if cuda else None,
        "nvidia_smi": smi.stdout.strip() if smi else None, "transformers": transformers.__version__,
        "datasets": datasets.__version__, "datasets_from": datasets.__file__, "accelerate": accelerate.__version__,
        "numpy": numpy.__version__, "lleval_from": lleval.commands.score.__file__, "cpu_threads": torch.get_num_threads()}
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info, indent=2))
'

step setup 90 steps.log "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --upgrade "${INSTALL[@]}" \
    --target "$WORK/site" .whl/*.whl
step env 60 steps.log "$PY" -c "$ENV_PROBE" "$WORK/env.json"
step planner 90 steps.log "$PY" scripts/planner_speed.py --json "$OUT/planner.json"
step tests 180 tests.log "$PY" -m pytest -p no:cacheprovider -q -rA -m gpu tests/test_gpu.py \
    --junitxml="$OUT/tests.xml"
step bench 240 bench.log "$PY" scripts/bench.py "${BENCH[@]}" --tokenizer .whl/tokenizer --work "$WORK/bench" \
    --json "$OUT/bench.json"
step kld 90 steps.log "$PY" -m lleval kld -q -m "$WORK/bench/$MODEL" --base-dtype float32 --dtype bfloat16 \
    --device "$DEVICE" -d "$WORK/bench/short.jsonl" "${KLD[@]}" -o "$OUT/kld.json"
echo "== done in $(($(date +%s) - START))s; files in $OUT"
"$PY" scripts/device_summary.py "$OUT" "$WORK"
rc=$?
rm -rf "$WORK"
exit $rc
