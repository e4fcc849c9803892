"""Backend discovery: the build, the fallback without the extension, and `fastdistill doctor`."""
import subprocess
import sys

import pytest
import torch

from fastdistill.cli import main
from fastdistill.ops import registry

from .conftest import REPO_ROOT, required_backends


def test_cuda_kernels_were_compiled_when_required():
    """CI forces the CUDA build on a GPU-less machine: the CUDA kernels must be registered in _C."""
    if "cuda-build" not in required_backends():
        pytest.skip("FASTDISTILL_REQUIRE_BACKENDS does not ask for the CUDA build")
    assert registry.extension_has_kernel("CPU"), registry.EXTENSION_REASON
    assert registry.extension_has_kernel("CUDA"), "fastdistill._C was built without its CUDA kernels"


def test_missing_extension_falls_back_to_reference_and_says_so_once():
    code = (
        "import sys, warnings\n"
        "sys.modules['fastdistill._C'] = None\n"  # makes `import fastdistill._C` fail
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    import torch\n"
        "    from fastdistill.losses import sid_loss\n"
        "    from fastdistill import losses\n"
        "    x = torch.randn(2, 3)\n"
        "    print(float(sid_loss(x, x + 1, x - 1)))\n"
        "    print(float(sid_loss(x, x + 1, x - 1)))\n"
        "msgs = [str(w.message) for w in caught if 'reference path' in str(w.message)]\n"
        "print(len(msgs))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    first, second, warnings_seen = out.stdout.split()
    assert first == second and float(first) != 0.0
    assert warnings_seen == "1"


def test_auto_prefers_fused_cpu_kernel_when_built():
    expected = "cpp" if registry.extension_has_kernel("CPU") else "reference"
    assert registry.resolve_backend("auto", "cpu").name == expected


@pytest.mark.gpu
def test_auto_prefers_fused_cuda_kernel_when_built():
    """CUDA tensors: the CUDA kernel when _C has it, else Triton; a required CUDA build must have it."""
    if {"cuda", "cuda-build"} & required_backends():
        assert registry.extension_has_kernel("CUDA"), registry.EXTENSION_REASON
    expected = "cuda" if registry.extension_has_kernel("CUDA") else "triton"
    assert registry.resolve_backend("auto", "cuda").name == expected


def test_doctor_reports_every_backend(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"torch        {torch.__version__}" in out
    for name in registry.BACKENDS:
        assert f"cpu  {name}" in out
    assert "auto    ->" in out
