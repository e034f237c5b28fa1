#!/usr/bin/env bash
# Builds .wheels/: the pure-Python packages bnexp needs that the lent GPU machine's image lacks
# (it has torch, torchvision, typer, tensorboard, matplotlib, pytest, but not Hydra) and cannot
# download there. Run it here, then carry the folder:
#   device run: command="bash scripts/gpu_check.sh $OUT", carry=[".wheels"], timeout_s=540
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rm -rf .wheels && mkdir -p .wheels
$PY -m pip wheel -q --no-deps -w .wheels "hydra-core==1.3.8" "omegaconf==2.3.1" \
  "antlr4-python3-runtime==4.9.3" 2> >(grep -v "^WARNING: Location" >&2)
ls -la .wheels
