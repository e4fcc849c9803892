#!/usr/bin/env bash
# All set-up on a fresh machine, idempotent: a .venv with the pinned torch and fastdistill
# built from source (the C++ extension, plus its CUDA kernels when nvcc and a CUDA torch exist).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip
# torch first: the extension is compiled against the installed torch (--no-build-isolation).
"${pip[@]}" torch==2.14.1 torchvision==0.29.1
"${pip[@]}" "setuptools>=77" wheel ninja
echo "building fastdistill (C++ extension; CUDA sources too when nvcc is present: a few minutes)..." >&2
"${pip[@]}" --no-build-isolation -e ".[test]"
