// Schemas of the fused loss ops and the (empty) Python module `fastdistill._C`.
//
// Importing fastdistill._C runs the static initialisers of this library, which register the
// schemas below (TORCH_LIBRARY) and the CPU / CUDA kernels (TORCH_LIBRARY_IMPL in
// cpu/losses_cpu.cpp and cuda/losses_cuda.cu). Fake (meta) kernels and autograd are
// registered from Python (fastdistill/ops/).
//
// Every op is a forward that returns the per-sample loss (B,) already multiplied by `scale`
// and the gradients of that scaled loss with respect to each differentiable input (the
// gradient-in-forward scheme, docs/losses.md). Semantics: fastdistill/ops/reference.py.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(fastdistill, m) {
  m.def(
      "sid_fused(Tensor y, Tensor y_real, Tensor y_fake, Tensor? weight, float alpha, float scale)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "sim_fused(Tensor y, Tensor y_real, Tensor y_fake, Tensor? weight, float c, bool pseudo_huber,"
      " float scale) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("dmd_fused(Tensor y, Tensor y_real, Tensor y_fake, Tensor? weight, float scale) -> (Tensor, Tensor)");
  m.def("dsm_fused(Tensor pred, Tensor target, Tensor sigma, float sigma_data, float scale) -> (Tensor, Tensor)");
}

static struct PyModuleDef fastdistill_c_module = {
    PyModuleDef_HEAD_INIT,
    "_C",
    "fastdistill fused loss kernels; the ops live in torch.ops.fastdistill.",
    -1,
    nullptr,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&fastdistill_c_module); }
