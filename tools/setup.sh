#!/usr/bin/env bash
# Installs everything babelflow needs on a fresh Debian machine (Python 3.11, root):
# espeak-ng (demo corpus) through apt when missing, then a venv with the pinned CPU torch
# and babelflow itself. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

missing=()
ldconfig -p 2>/dev/null | grep -q 'libespeak-ng\.so\.1' || missing+=(espeak-ng)
command -v git >/dev/null || missing+=(git)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  apt_install "${missing[@]}"
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Pinned: this takes the CPU wheel; an unpinned torch would pull several GB of CUDA.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[dev]'
echo "setup: OK ($(.venv/bin/python -c 'import torch, babelflow; print("torch", torch.__version__, "babelflow", babelflow.__version__)'))"
