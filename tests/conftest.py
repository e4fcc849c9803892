"""Test-wide set-up.

Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter, which must be
switched on before triton is first imported, so it is done here, ahead of every test module.
`FASTDISTILL_REQUIRE_BACKENDS=cpp,triton` (set by CI) turns a missing backend into a
failure instead of a skip, so a broken build cannot pass as skipped tests.
"""
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("triton was imported before TRITON_INTERPRET=1 could be set")
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTVECTORS = REPO_ROOT.parent / "shared" / "testvectors"


def required_backends() -> set[str]:
    return {b.strip() for b in os.environ.get("FASTDISTILL_REQUIRE_BACKENDS", "").split(",") if b.strip()}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def testvectors() -> Path:
    if not TESTVECTORS.is_dir():
        pytest.skip(f"shared test vectors not found at {TESTVECTORS}")
    return TESTVECTORS
