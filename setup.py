"""Builds the optional extension `fastdistill._C` from csrc/.

CPU kernels are always built. CUDA kernels are added when a CUDA toolkit and a CUDA
build of torch are present, or when FASTDISTILL_FORCE_CUDA=1; FASTDISTILL_NO_CUDA=1 skips
them (fast CPU-only builds).

The CPU kernels use at::vec::Vectorized, whose instruction set is fixed at compile time.
By default the build targets the instruction set torch detects on the building machine
(torch.backends.cpu.get_cpu_capability(): AVX512 / AVX2 / DEFAULT), like -march=native for
source installs. For a portable binary set FASTDISTILL_CPU_CAPABILITY=default (or avx2).

A failed compile fails the install. The package itself also imports without `_C` (a copy of
the sources, say) and then runs on the reference path, saying so once.
"""
import glob
import os

from setuptools import setup


def _cpu_capability_flags(torch):
    """Compiler flags selecting the at::vec::Vectorized implementation (see module docstring)."""
    import platform

    cap = os.environ.get("FASTDISTILL_CPU_CAPABILITY")
    if cap is None:
        try:
            cap = torch.backends.cpu.get_cpu_capability()
        except Exception:  # older torch
            cap = "default"
    cap = cap.lower()
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    # The same flags torch's own build uses for its AVX2 / AVX512 kernels.
    if cap == "avx512":
        return ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
                "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    if cap == "avx2":
        return ["-mavx2", "-mfma", "-mbmi", "-mbmi2", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return []


def _extensions():
    import torch
    from torch.utils import cpp_extension

    if os.environ.get("CUDA_HOME") is None and os.path.isdir("/usr/local/cuda"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
        cpp_extension.CUDA_HOME = "/usr/local/cuda"
    cuda_home = cpp_extension.CUDA_HOME
    force_cuda = os.environ.get("FASTDISTILL_FORCE_CUDA") == "1"
    with_cuda = force_cuda or (cuda_home is not None and torch.version.cuda is not None)
    if os.environ.get("FASTDISTILL_NO_CUDA") == "1":
        with_cuda = False

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"] + _cpu_capability_flags(torch)
    extra = {"cxx": cxx_flags}
    if with_cuda:
        if not torch.cuda.is_available() and "TORCH_CUDA_ARCH_LIST" not in os.environ:
            # No device to query: one modern architecture plus PTX keeps the build quick
            # and still runs on every GPU from Ampere on (the PTX is JIT-compiled).
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0+PTX"
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        extra["cxx"] = cxx_flags + ["-DFASTDISTILL_WITH_CUDA"]
        extra["nvcc"] = ["-O3", "--use_fast_math", "-DFASTDISTILL_WITH_CUDA", "-std=c++20"]
        ext_cls = cpp_extension.CUDAExtension
        library_dirs = [os.path.join(cuda_home, d) for d in ("lib", "lib64") if os.path.isdir(os.path.join(cuda_home, d))]
    else:
        ext_cls = cpp_extension.CppExtension
        library_dirs = []
    ext = ext_cls(
        name="fastdistill._C",
        sources=sources,
        include_dirs=[os.path.abspath("csrc")],
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
        library_dirs=library_dirs,
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
