// Host-side argument checks and output allocation shared by the CPU and CUDA launchers.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <optional>
#include <vector>

namespace fastdistill {

struct LossArgs {
  std::vector<at::Tensor> in;  // inputs, shape (B, ...), each sample one dense block of N elements
  at::Tensor aux;              // (B,) weight / sigma in the math dtype, contiguous; may be undefined
  int64_t B = 0;
  int64_t N = 0;               // elements per sample
  at::ScalarType math_dtype = at::kFloat;  // float for fp16/bf16/fp32 inputs, double for fp64
};

// Whether the kernels can read `inputs` as they lie: each sample one dense block of N elements
// (a contiguous tensor, and a channels_last one too) and all in one layout, so that offset k of a
// sample is the same element in each. Otherwise they are copied contiguous. Mirrored by
// fastdistill/ops/layout.py for the fake kernels and the Triton launchers.
inline bool rows_in_place(std::initializer_list<const at::Tensor*> inputs, int64_t N) {
  const at::Tensor& first = **inputs.begin();
  if (first.numel() == 0) return false;
  for (const at::Tensor* t : inputs) {
    if (!t->is_non_overlapping_and_dense() || t->strides() != first.strides() || (t->size(0) > 1 && t->stride(0) != N))
      return false;
  }
  return true;
}

inline LossArgs prepare_loss_args(const char* op, std::initializer_list<const at::Tensor*> inputs,
                                  const std::optional<at::Tensor>& aux, const char* aux_name,
                                  c10::DeviceType device_type) {
  LossArgs a;
  const at::Tensor& first = **inputs.begin();
  TORCH_CHECK(first.dim() >= 1, op, ": inputs need a leading batch dimension, got a 0-d tensor");
  const auto dtype = first.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, op,
              ": inputs must be float16, bfloat16, float32 or float64, got ", dtype);
  for (const at::Tensor* t : inputs) {
    TORCH_CHECK(t->sizes() == first.sizes(), op, ": all inputs must have the same shape, got ", first.sizes(),
                " and ", t->sizes());
    TORCH_CHECK(t->scalar_type() == dtype, op, ": all inputs must have the same dtype, got ", dtype, " and ",
                t->scalar_type());
    TORCH_CHECK(t->device() == first.device(), op, ": all inputs must be on the same device, got ", first.device(),
                " and ", t->device());
  }
  TORCH_CHECK(first.device().type() == device_type, op, ": kernel for ", device_type, " called with tensors on ",
              first.device());
  a.B = first.size(0);
  a.N = a.B == 0 ? 0 : first.numel() / a.B;
  const bool in_place = rows_in_place(inputs, a.N);
  for (const at::Tensor* t : inputs) a.in.push_back(in_place ? *t : t->contiguous());
  a.math_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;
  if (aux.has_value() && aux->defined()) {
    TORCH_CHECK(aux->numel() == a.B, op, ": ", aux_name, " must have one value per sample (", a.B, "), got shape ",
                aux->sizes());
    TORCH_CHECK(aux->is_floating_point(), op, ": ", aux_name, " must be a floating tensor, got ", aux->scalar_type());
    TORCH_CHECK(aux->device() == first.device(), op, ": ", aux_name, " must be on ", first.device(), ", got ",
                aux->device());
    a.aux = aux->reshape({a.B}).to(a.math_dtype).contiguous();
  }
  return a;
}

inline at::Tensor new_loss(const LossArgs& a) {
  return at::empty({a.B}, a.in[0].options().dtype(a.math_dtype));
}

// A gradient in its input's layout.
inline at::Tensor new_grad(const LossArgs& a) {
  return at::empty_strided(a.in[0].sizes(), a.in[0].strides(), a.in[0].options());
}

}  // namespace fastdistill
