#!/usr/bin/env bash
# The CUDA path, checked in one call on a lent GPU machine (see README, "GPU"):
#   1. bnexp's BatchNorm against torch.nn.BatchNorm* on the GPU (tests/test_norm.py: the CUDA
#      parity tests and the torch.compile path);
#   2. the default CNN trained for one epoch on MNIST-shaped and CIFAR-shaped data (generated in
#      the real file formats: the machine has no network), in fp32 and bf16, and with
#      torch.compile; prints samples/s for each.
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (about 5 minutes)
# On the lent GPU machine (no network; its python3 has torch but not Hydra) run
# scripts/gpu_wheels.sh here first and carry .wheels (see that script).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-$(mktemp -d)}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
elif python3 -c "import torch" 2>/dev/null && [ -d .wheels ]; then
  PY=python3  # the image's torch; bnexp from this checkout, Hydra from the carried wheels
  $PY -m pip install -q --no-index --find-links .wheels hydra-core omegaconf antlr4-python3-runtime
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  bash scripts/setup.sh
  PY=.venv/bin/python
fi
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
$PY -m pytest -q -p no:cacheprovider tests/test_norm.py -k "cuda or compiled" 2>&1 | tail -3

DATA=$(mktemp -d)  # not under OUT: generated data need not come back
$PY - "$DATA" <<'PYEOF'
import sys
from pathlib import Path
from tests.conftest import write_cifar, write_mnist
root = Path(sys.argv[1])
write_mnist(root, n_train=60000, n_test=10000)
write_cifar(root, n_per_batch=10000, n_test=10000)
PYEOF

printf '%-10s %-6s %-8s %12s %10s\n' data precision compile samples/s test_acc | tee "$OUT/gpu_check.txt"
for data in mnist cifar10; do
  for run in "fp32 false" "bf16 false" "bf16 true"; do
    set -- $run
    $PY -m bnexp.cli train data=$data data.root="$DATA" data.verify=false trainer.device=cuda \
      trainer.precision=$1 trainer.compile=$2 trainer.epochs=1 trainer.progress=none \
      output_dir="$OUT/runs-$data-$1-$2" trainer.checkpoint=false > /dev/null
    $PY - "$OUT/runs-$data-$1-$2" "$data" "$1" "$2" <<'PYEOF' | tee -a "$OUT/gpu_check.txt"
import json, sys
from pathlib import Path
(summary,) = Path(sys.argv[1]).glob("runs/*/summary.json")
s = json.loads(summary.read_text())
print(f"{sys.argv[2]:<10} {sys.argv[3]:<9} {sys.argv[4]:<8} {s['samples_per_s']:12.0f} "
      f"{100 * s['final']['test/acc']:9.2f}%  ({s['status']}, {s['device']})")
PYEOF
  done
done
