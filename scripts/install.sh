#!/usr/bin/env bash
# Creates .venv with mdctr's pinned CPU stack. Idempotent: `make` calls it only when
# .venv/.mdctr-installed is missing or older than the requirement files.
# GPU install: see README.md ("GPU install"); it swaps fbgemm-gpu-cpu for fbgemm-gpu.
set -euo pipefail
venv=${VENV:-.venv}
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x "$venv/bin/python" ]; then
  echo "mdctr: creating $venv with $("$python" --version)"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q)
# this machine's pip config lists local indexes that may not exist; drop that noise only
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
echo "mdctr: [1/4] torch 2.13.0 (CPU) + fbgemm-gpu-cpu 1.8.0"
quiet "${pip[@]}" "setuptools>=68" wheel -r requirements/torch-cpu.txt
echo "mdctr: [2/4] ray, optuna, pandas, pyarrow, duckdb, torchmetrics, ..."
quiet "${pip[@]}" -c requirements/constraints.txt -r requirements/cpu.txt
echo "mdctr: [3/4] torchrec 1.8.0 (--no-deps: keeps the CPU fbgemm kernels)"
quiet "${pip[@]}" --no-deps torchrec==1.8.0
echo "mdctr: [4/4] mdctr (editable; compiles mdctr's CPU kernels, mdctr/csrc)"
quiet "${pip[@]}" --no-deps --no-build-isolation -e .
if "$venv/bin/python" -m pip show -q fbgemm-gpu >/dev/null 2>&1; then
  echo "mdctr: the CUDA fbgemm-gpu got installed on a CPU machine; remove $venv and retry" >&2
  exit 1
fi
"$venv/bin/python" -c "import torch, torchrec, fbgemm_gpu, ray, optuna, duckdb; from importlib.metadata import version as v; from mdctr.core.native import status; print('mdctr: stack ok: torch', torch.__version__, '| torchrec', v('torchrec'), '| fbgemm-gpu-cpu', v('fbgemm-gpu-cpu'), '| ray', ray.__version__, '| kernels', status())"
touch "$venv/.mdctr-installed"
