#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with what the lent GPU machine lacks for scripts/device_check.sh:
# the wheels of `datasets` and the two of its needs that machine has no copy of (dill,
# multiprocess), for CPython 3.12 on x86-64, at the versions this checkout's environment runs,
# and the built-in model's tokenizer (bench.py cuts its corpora with it; the device has no
# .gguf support and no network). About 5 MB; the device call names it: carry [".whl"].
#
#   bash scripts/device_wheels.sh            # PYTHON=... to pick the interpreter (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
PACKAGES=(datasets dill multiprocess)
pins=$("$PY" -c "import importlib.metadata as m, sys; print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" \
       "${PACKAGES[@]}")
rm -rf .whl && mkdir -p .whl
# shellcheck disable=SC2086  # pins is a list of name==version words
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $pins
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} "$PY" - <<'EOF'
from lleval.commands.score import model_spec
from lleval.config import EvalConfig
from lleval.backends.hf import open_model

open_model(model_spec(EvalConfig(device="cpu"))).tokenizer.save_pretrained(".whl/tokenizer")
EOF
echo "$pins -> .whl/ ($(du -sh .whl | cut -f1))"
ls .whl
