#!/usr/bin/env bash
# The GPU check (docs/development.md, "GPU check"): build, GPU tests, benchmarks and a short SiD run
# on a CUDA machine in at most 4.5 minutes (a rerun reuses the build); without CUDA, or with --dry, what it would run and the
# cheap parts only. Results: OUT_DIR/summary.txt, OUT_DIR/results.json, OUT_DIR/details.tar.gz.
#   scripts/gpu_check.sh [--dry] [--budget SECONDS] OUT_DIR
# Python: $PYTHON, else the repository's .venv, else python3.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then python=$repo/.venv/bin/python; else python=python3; fi
fi
exec "$python" "$repo/scripts/gpu_check.py" "$@"
