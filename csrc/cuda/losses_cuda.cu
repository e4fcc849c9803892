// Fused CUDA kernels of sid/sim/dmd/dsm (semantics: fastdistill/ops/reference.py; per-element
// math: loss_math.h, shared with the CPU kernels).
//
// Large batches (B >= 2 * #SMs): one block per sample, single kernel. Pass 1 reads the sample
// once (16-byte vector loads when every pointer is aligned and N is a multiple of the vector
// width), a block reduction yields the per-sample sums, pass 2 re-reads the sample (mostly L2
// hits) and writes the gradients. Small batches: P blocks per sample; kernel 1 writes P partial
// sums per sample, kernel 2 reduces them (every block redundantly, P <= 256) and writes its
// slice of the gradients. All offsets are int64. Math in float (double for fp64 inputs).
#include <ATen/OpMathType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "loss_math.h"
#include "ops_common.h"

namespace fastdistill {
namespace {

// 1024 threads: at most 2 resident blocks (samples) per SM, so the samples in flight (2 x #SMs x
// bytes per sample, e.g. 216 x 144 KB = 31 MB on an A100 for fp32 3x64x64) stay in L2 and the
// pass-2 re-reads are L2 hits, not DRAM traffic.
constexpr int kThreads = 1024;
constexpr int kMaxParts = kThreads;  // partial sums per sample reduced by one block

template <typename scalar_t, int kIn, int kOut>
struct Ptrs {
  const scalar_t* in[kIn];
  scalar_t* out[kOut];
};

// Sum of each s[j] over the block; every thread gets the result.
template <typename T, int kS>
__device__ __forceinline__ void block_reduce(T (&s)[kS]) {
  __shared__ T sh[kS][kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int j = 0; j < kS; ++j) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s[j] += __shfl_down_sync(0xffffffffu, s[j], off);
  }
  if (lane == 0) {
#pragma unroll
    for (int j = 0; j < kS; ++j) sh[j][warp] = s[j];
  }
  __syncthreads();
  if (warp == 0) {
    const int nwarps = blockDim.x >> 5;
#pragma unroll
    for (int j = 0; j < kS; ++j) {
      T v = lane < nwarps ? sh[j][lane] : T(0);
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
      if (lane == 0) sh[j][0] = v;
    }
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kS; ++j) s[j] = sh[j][0];
  __syncthreads();  // sh may be reused by a later call
}

template <typename Op, typename scalar_t>
struct BlockOps {
  using T = at::opmath_type<scalar_t>;
  using P = Ptrs<scalar_t, Op::kIn, Op::kOut>;
  static constexpr int kIn = Op::kIn, kOut = Op::kOut, kS = Op::kSums;
  static constexpr int kVec = 16 / sizeof(scalar_t);
  struct alignas(16) Pack {
    scalar_t v[kVec];
  };

  // Pass 1 over [lo, hi) of the sample at `base` (lo, hi multiples of kVec when vec).
  static __device__ __forceinline__ void pass1(const Op& op, const P& p, int64_t base, int64_t lo, int64_t hi,
                                               bool vec, T (&s)[kS]) {
#pragma unroll
    for (int j = 0; j < kS; ++j) s[j] = T(0);
    if (vec) {
      for (int64_t i = lo + int64_t(threadIdx.x) * kVec; i < hi; i += int64_t(blockDim.x) * kVec) {
        Pack pk[kIn];
#pragma unroll
        for (int k = 0; k < kIn; ++k) pk[k] = *reinterpret_cast<const Pack*>(p.in[k] + base + i);
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          T x[kIn];
#pragma unroll
          for (int k = 0; k < kIn; ++k) x[k] = static_cast<T>(pk[k].v[e]);
          op.accumulate(x, s);
        }
      }
    } else {
      for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        T x[kIn];
#pragma unroll
        for (int k = 0; k < kIn; ++k) x[k] = static_cast<T>(p.in[k][base + i]);
        op.accumulate(x, s);
      }
    }
  }

  // Pass 2 over [lo, hi): gradients, or zeros when !ok.
  static __device__ __forceinline__ void pass2(const Op& op, const P& p, int64_t base, int64_t lo, int64_t hi,
                                               bool vec, bool ok, const typename Op::Coef& c) {
    if (vec) {
      for (int64_t i = lo + int64_t(threadIdx.x) * kVec; i < hi; i += int64_t(blockDim.x) * kVec) {
        Pack out[kOut];
        if (ok) {
          Pack pk[kIn];
#pragma unroll
          for (int k = 0; k < kIn; ++k) pk[k] = *reinterpret_cast<const Pack*>(p.in[k] + base + i);
#pragma unroll
          for (int e = 0; e < kVec; ++e) {
            T x[kIn], g[kOut];
#pragma unroll
            for (int k = 0; k < kIn; ++k) x[k] = static_cast<T>(pk[k].v[e]);
            op.grads(x, c, g);
#pragma unroll
            for (int k = 0; k < kOut; ++k) out[k].v[e] = static_cast<scalar_t>(g[k]);
          }
        } else {
#pragma unroll
          for (int k = 0; k < kOut; ++k)
#pragma unroll
            for (int e = 0; e < kVec; ++e) out[k].v[e] = static_cast<scalar_t>(T(0));
        }
#pragma unroll
        for (int k = 0; k < kOut; ++k) *reinterpret_cast<Pack*>(p.out[k] + base + i) = out[k];
      }
    } else {
      for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        T g[kOut];
        if (ok) {
          T x[kIn];
#pragma unroll
          for (int k = 0; k < kIn; ++k) x[k] = static_cast<T>(p.in[k][base + i]);
          op.grads(x, c, g);
        } else {
#pragma unroll
          for (int k = 0; k < kOut; ++k) g[k] = T(0);
        }
#pragma unroll
        for (int k = 0; k < kOut; ++k) p.out[k][base + i] = static_cast<scalar_t>(g[k]);
      }
    }
  }

  // Sums -> coefficients (every thread, identical result). Returns false for a zeroed sample.
  // Contains __syncthreads_or: call from every thread of the block.
  static __device__ __forceinline__ bool finish(const Op& op, const P& p, int64_t base, int64_t N, int64_t b,
                                                const T (&s)[kS], const T* aux, typename Op::Coef& c) {
    bool finite = true;
#pragma unroll
    for (int j = 0; j < kS; ++j) finite = finite && math::fd_isfinite(s[j]);
    if (!finite) {  // block-uniform branch: rare explicit scan for NaN / +-inf (loss_math.h)
      int found = 0;
      for (int k = 0; k < kIn && !found; ++k)
        for (int64_t i = threadIdx.x; i < N; i += blockDim.x)
          if (!math::fd_isfinite(static_cast<T>(p.in[k][base + i]))) {
            found = 1;
            break;
          }
      if (__syncthreads_or(found)) return false;
    }
    c = op.finalize(s, aux, N, b);
    return !c.zero;
  }
};

// One block per sample: pass 1, block reduction, pass 2.
template <typename Op, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    fused_kernel(Op op, Ptrs<scalar_t, Op::kIn, Op::kOut> p, at::opmath_type<scalar_t>* loss,
                 const at::opmath_type<scalar_t>* aux, int64_t N, bool vec) {
  using B = BlockOps<Op, scalar_t>;
  using T = at::opmath_type<scalar_t>;
  const int64_t b = blockIdx.x;
  const int64_t base = b * N;
  T s[B::kS];
  B::pass1(op, p, base, 0, N, vec, s);
  block_reduce(s);
  typename Op::Coef c;
  const bool ok = B::finish(op, p, base, N, b, s, aux, c);
  if (threadIdx.x == 0) loss[b] = ok ? c.loss : T(0);
  B::pass2(op, p, base, 0, N, vec, ok, c);
}

// Split mode, kernel 1: block (b, part) writes the partial sums of its slice.
template <typename Op, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    partial_kernel(Op op, Ptrs<scalar_t, Op::kIn, Op::kOut> p, at::opmath_type<scalar_t>* partial, int64_t N,
                   int64_t slice, bool vec) {
  using B = BlockOps<Op, scalar_t>;
  using T = at::opmath_type<scalar_t>;
  const int64_t b = blockIdx.x, part = blockIdx.y, parts = gridDim.y;
  const int64_t lo = part * slice, hi = lo + slice < N ? lo + slice : N;
  T s[B::kS];
  B::pass1(op, p, b * N, lo, hi, vec, s);
  block_reduce(s);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int j = 0; j < B::kS; ++j) partial[(b * parts + part) * B::kS + j] = s[j];
  }
}

// Split mode, kernel 2: block (b, part) reduces the sample's partials and writes its slice.
template <typename Op, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    apply_kernel(Op op, Ptrs<scalar_t, Op::kIn, Op::kOut> p, const at::opmath_type<scalar_t>* partial,
                 at::opmath_type<scalar_t>* loss, const at::opmath_type<scalar_t>* aux, int64_t N, int64_t slice,
                 bool vec) {
  using B = BlockOps<Op, scalar_t>;
  using T = at::opmath_type<scalar_t>;
  const int64_t b = blockIdx.x, part = blockIdx.y, parts = gridDim.y;
  T s[B::kS];
#pragma unroll
  for (int j = 0; j < B::kS; ++j)
    s[j] = threadIdx.x < parts ? partial[(b * parts + threadIdx.x) * B::kS + j] : T(0);
  block_reduce(s);
  typename Op::Coef c;
  const bool ok = B::finish(op, p, b * N, N, b, s, aux, c);
  if (part == 0 && threadIdx.x == 0) loss[b] = ok ? c.loss : T(0);
  const int64_t lo = part * slice, hi = lo + slice < N ? lo + slice : N;
  B::pass2(op, p, b * N, lo, hi, vec, ok, c);
}

// SM count of the current device (ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers).
int64_t multiprocessor_count() {
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms > 0 ? sms : 1;
}

template <typename Op, typename scalar_t>
void launch(const Op& op, const LossArgs& a, at::Tensor& loss, std::initializer_list<at::Tensor*> grads) {
  using T = at::opmath_type<scalar_t>;
  constexpr int kVec = BlockOps<Op, scalar_t>::kVec;
  if (a.B == 0 || a.N == 0) {
    loss.zero_();
    return;
  }
  Ptrs<scalar_t, Op::kIn, Op::kOut> p;
  bool vec = a.N % kVec == 0;
  for (int i = 0; i < Op::kIn; ++i) {
    p.in[i] = a.in[i].data_ptr<scalar_t>();
    vec = vec && reinterpret_cast<uintptr_t>(p.in[i]) % 16 == 0;
  }
  int j = 0;
  for (at::Tensor* g : grads) {
    p.out[j] = g->data_ptr<scalar_t>();
    vec = vec && reinterpret_cast<uintptr_t>(p.out[j]) % 16 == 0;
    ++j;
  }
  T* loss_ptr = loss.data_ptr<T>();
  const T* aux = a.aux.defined() ? a.aux.data_ptr<T>() : nullptr;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t sms = multiprocessor_count();
  TORCH_CHECK(a.B <= 0x7fffffff, "batch too large for the CUDA kernel grid");

  // Blocks per sample: enough blocks to fill the GPU, slices of at least 4096 elements.
  int64_t parts = 1;
  if (a.B < 2 * sms) {
    parts = std::min<int64_t>({(2 * sms + a.B - 1) / a.B, (a.N + 4095) / 4096, kMaxParts});
    parts = std::max<int64_t>(parts, 1);
  }
  if (parts == 1) {
    fused_kernel<Op, scalar_t><<<static_cast<unsigned>(a.B), kThreads, 0, stream>>>(op, p, loss_ptr, aux, a.N, vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  int64_t slice = (a.N + parts - 1) / parts;
  slice = (slice + kVec - 1) / kVec * kVec;  // keep slices vector-aligned
  parts = (a.N + slice - 1) / slice;
  at::Tensor partial = at::empty({a.B, parts, Op::kSums}, loss.options());
  dim3 grid(static_cast<unsigned>(a.B), static_cast<unsigned>(parts));
  partial_kernel<Op, scalar_t><<<grid, kThreads, 0, stream>>>(op, p, partial.data_ptr<T>(), a.N, slice, vec);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  apply_kernel<Op, scalar_t>
      <<<grid, kThreads, 0, stream>>>(op, p, partial.data_ptr<T>(), loss_ptr, aux, a.N, slice, vec);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define FD_DISPATCH(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sid_fused_cuda(const at::Tensor& y,
                                                                          const at::Tensor& y_real,
                                                                          const at::Tensor& y_fake,
                                                                          const std::optional<at::Tensor>& weight,
                                                                          double alpha, double scale) {
  LossArgs a = prepare_loss_args("sid_fused", {&y, &y_real, &y_fake}, weight, "weight", c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(y.device());
  at::Tensor loss = new_loss(a), gy = new_grad(a), gyr = new_grad(a), gyf = new_grad(a);
  FD_DISPATCH(a.in[0].scalar_type(), "sid_fused_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    launch<math::SidMath<T>, scalar_t>({T(alpha), T(scale)}, a, loss, {&gy, &gyr, &gyf});
  });
  return {loss, gy, gyr, gyf};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sim_fused_cuda(const at::Tensor& y,
                                                                          const at::Tensor& y_real,
                                                                          const at::Tensor& y_fake,
                                                                          const std::optional<at::Tensor>& weight,
                                                                          double c, bool pseudo_huber, double scale) {
  LossArgs a = prepare_loss_args("sim_fused", {&y, &y_real, &y_fake}, weight, "weight", c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(y.device());
  at::Tensor loss = new_loss(a), gy = new_grad(a), gyr = new_grad(a), gyf = new_grad(a);
  FD_DISPATCH(a.in[0].scalar_type(), "sim_fused_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    launch<math::SimMath<T>, scalar_t>({T(c), T(scale), pseudo_huber}, a, loss, {&gy, &gyr, &gyf});
  });
  return {loss, gy, gyr, gyf};
}

std::tuple<at::Tensor, at::Tensor> dmd_fused_cuda(const at::Tensor& y, const at::Tensor& y_real,
                                                  const at::Tensor& y_fake, const std::optional<at::Tensor>& weight,
                                                  double scale) {
  LossArgs a = prepare_loss_args("dmd_fused", {&y, &y_real, &y_fake}, weight, "weight", c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(y.device());
  at::Tensor loss = new_loss(a), gy = new_grad(a);
  FD_DISPATCH(a.in[0].scalar_type(), "dmd_fused_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    launch<math::DmdMath<T>, scalar_t>({T(scale)}, a, loss, {&gy});
  });
  return {loss, gy};
}

std::tuple<at::Tensor, at::Tensor> dsm_fused_cuda(const at::Tensor& pred, const at::Tensor& target,
                                                  const at::Tensor& sigma, double sigma_data, double scale) {
  LossArgs a = prepare_loss_args("dsm_fused", {&pred, &target}, sigma, "sigma", c10::DeviceType::CUDA);
  TORCH_CHECK(a.aux.defined() || a.B == 0, "dsm_fused: sigma is required");
  const c10::cuda::CUDAGuard guard(pred.device());
  at::Tensor loss = new_loss(a), gp = new_grad(a);
  FD_DISPATCH(a.in[0].scalar_type(), "dsm_fused_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    launch<math::DsmMath<T>, scalar_t>({T(sigma_data), T(scale)}, a, loss, {&gp});
  });
  return {loss, gp};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdistill, CUDA, m) {
  m.impl("sid_fused", &sid_fused_cuda);
  m.impl("sim_fused", &sim_fused_cuda);
  m.impl("dmd_fused", &dmd_fused_cuda);
  m.impl("dsm_fused", &dsm_fused_cuda);
}

}  // namespace fastdistill
