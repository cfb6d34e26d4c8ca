#!/usr/bin/env bash
# Create (or refresh) a scratch Python venv with PyTorch 2.15.0 for the CPU benchmark.
# Usage: scripts/pytorch/setup-venv.sh [VENV_DIR]   (default /tmp/tweedie-torch-venv)
#
# Why the full install: the only torch wheel on PyPI for Linux x86_64 is the CUDA build, and
# its libtorch*.so link against libcudart/libcublas/libcudnn/... at load time, so
# `pip install --no-deps torch` fails at `import torch` (libcudart.so.13 not found). We
# therefore install it with its dependencies (~4.4 GB of nvidia-* wheels) and only drop
# triton (~1 GB, a GPU compiler, not needed for eager CPU inference). Idempotent: pip skips
# what is already installed.
set -euo pipefail
VENV="${1:-/tmp/tweedie-torch-venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check \
    'torch==2.15.0' 'numpy>=2' 'safetensors>=0.4'
# triton is only used by torch.compile on GPUs; removing it saves ~1 GB.
"$VENV/bin/pip" uninstall -q -y triton 2>/dev/null || true

"$VENV/bin/python" - <<'PY'
import torch, numpy, safetensors
x = torch.randn(2, 8, 16, 16)
w = torch.randn(8, 8, 3, 3)
y = torch.nn.functional.conv2d(x, w, padding=1)
assert y.shape == (2, 8, 16, 16)
print(f"ok: torch {torch.__version__}, numpy {numpy.__version__}, "
      f"safetensors {safetensors.__version__}, threads {torch.get_num_threads()}")
PY
