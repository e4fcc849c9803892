"""Test-wide set-up.

Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter, which must be
switched on before triton is first imported, so it is done here, ahead of every test module.
`FASTDISTILL_REQUIRE_BACKENDS=cpp,triton` (set by CI) turns a missing backend into a
failure instead of a skip, so a broken build cannot pass as skipped tests.
`FASTDISTILL_RUN_SLOW=1` runs the long convergence tests too; they are opt-in, and CI
does not set it.
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
    """GPU tests skip without a device; long convergence runs (`slow`) only with FASTDISTILL_RUN_SLOW=1 (opt-in)."""
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_slow = pytest.mark.skip(reason="long convergence run: set FASTDISTILL_RUN_SLOW=1")
    run_slow = os.environ.get("FASTDISTILL_RUN_SLOW") == "1"
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: small networks run faster on one thread than on two,
    and much faster when the machine's other core is busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def testvectors() -> Path:
    if not TESTVECTORS.is_dir():
        pytest.skip(f"shared test vectors not found at {TESTVECTORS}")
    return TESTVECTORS
