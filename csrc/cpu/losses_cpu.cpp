// Fused CPU kernels of sid/sim/dmd/dsm (semantics: fastdistill/ops/reference.py).
//
// Per sample, two passes while the sample stays in the core's cache:
//   pass 1 reads every input once and accumulates the per-sample sums (loss_math.h `accumulate`),
//   pass 2 re-reads the inputs (now cache hits) and writes the gradients (`grads`).
// Parallelism: samples are handed to the at::parallel_for threads dynamically; when there are
// fewer samples than the work can balance (B small against the thread count), each sample is
// split across threads instead (parallel reduction for pass 1, parallel_for for pass 2).
// Inner loops use at::vec::Vectorized of the math type (float, or double for fp64 inputs);
// fp16 / bf16 are converted to float on load and back on store. Pass-1 sums use float vector
// lanes over short chunks, folded into double per chunk (accurate and fast).
#include <ATen/OpMathType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <array>
#include <atomic>
#include <type_traits>

#include "loss_math.h"
#include "ops_common.h"

namespace fastdistill {
namespace {

using at::vec::Vectorized;

// Two math vectors' worth of elements per load / store.
template <typename scalar_t>
struct VecIO {
  using T = at::opmath_type<scalar_t>;
  using Vec = Vectorized<T>;
  static constexpr int64_t kStep = 2 * Vec::size();

  static inline void load(const scalar_t* p, Vec& a, Vec& b) {
    if constexpr (std::is_same_v<scalar_t, T>) {
      a = Vec::loadu(p);
      b = Vec::loadu(p + Vec::size());
    } else {
      at::vec::load_to_float<scalar_t>(p, a, b);
    }
  }
  static inline void store(scalar_t* p, const Vec& a, const Vec& b) {
    if constexpr (std::is_same_v<scalar_t, T>) {
      a.store(p);
      b.store(p + Vec::size());
    } else {
      at::vec::convert_from_float<scalar_t>(a, b).store(p);
    }
  }
};

template <typename Op, typename scalar_t>
struct CpuLoss {
  using T = at::opmath_type<scalar_t>;
  using Vec = Vectorized<T>;
  using IO = VecIO<scalar_t>;
  using Coef = typename Op::Coef;
  static constexpr int kIn = Op::kIn, kOut = Op::kOut, kS = Op::kSums;
  // Elements per vector-accumulated chunk before folding into double (a multiple of kStep).
  static constexpr int64_t kChunk = 64 * IO::kStep;
  using Sums = std::array<double, kS>;

  Op op;
  const scalar_t* in[kIn];
  scalar_t* out[kOut];
  T* loss;
  const T* aux;  // weight or sigma, or nullptr
  int64_t N;

  // Pass 1 over elements [lo, hi) of sample b; returns the partial sums.
  Sums pass1(int64_t b, int64_t lo, int64_t hi) const {
    Sums acc{};
    const int64_t base = b * N;
    const scalar_t* p[kIn];
    for (int k = 0; k < kIn; ++k) p[k] = in[k] + base;
    int64_t i = lo;
    const int64_t vec_end = lo + (hi - lo) / IO::kStep * IO::kStep;
    while (i < vec_end) {
      const int64_t chunk_end = std::min(vec_end, i + kChunk);
      Vec s0[kS], s1[kS];
      for (int j = 0; j < kS; ++j) {
        s0[j] = Vec(T(0));
        s1[j] = Vec(T(0));
      }
      for (; i < chunk_end; i += IO::kStep) {
        Vec x0[kIn], x1[kIn];
        for (int k = 0; k < kIn; ++k) IO::load(p[k] + i, x0[k], x1[k]);
        op.accumulate(x0, s0);
        op.accumulate(x1, s1);
      }
      for (int j = 0; j < kS; ++j) {
        alignas(64) T lanes[Vec::size()];
        (s0[j] + s1[j]).store(lanes);
        double t = 0;
        for (int l = 0; l < Vec::size(); ++l) t += static_cast<double>(lanes[l]);
        acc[j] += t;
      }
    }
    if (i < hi) {
      T s[kS];
      for (int j = 0; j < kS; ++j) s[j] = T(0);
      for (; i < hi; ++i) {
        T x[kIn];
        for (int k = 0; k < kIn; ++k) x[k] = static_cast<T>(p[k][i]);
        op.accumulate(x, s);
      }
      for (int j = 0; j < kS; ++j) acc[j] += static_cast<double>(s[j]);
    }
    return acc;
  }

  // Pass 2 over [lo, hi) of sample b: write the gradients.
  void pass2(int64_t b, int64_t lo, int64_t hi, const Coef& c) const {
    const int64_t base = b * N;
    const scalar_t* p[kIn];
    scalar_t* q[kOut];
    for (int k = 0; k < kIn; ++k) p[k] = in[k] + base;
    for (int k = 0; k < kOut; ++k) q[k] = out[k] + base;
    int64_t i = lo;
    const int64_t vec_end = lo + (hi - lo) / IO::kStep * IO::kStep;
    for (; i < vec_end; i += IO::kStep) {
      Vec x0[kIn], x1[kIn], g0[kOut], g1[kOut];
      for (int k = 0; k < kIn; ++k) IO::load(p[k] + i, x0[k], x1[k]);
      op.grads(x0, c, g0);
      op.grads(x1, c, g1);
      for (int k = 0; k < kOut; ++k) IO::store(q[k] + i, g0[k], g1[k]);
    }
    for (; i < hi; ++i) {
      T x[kIn], g[kOut];
      for (int k = 0; k < kIn; ++k) x[k] = static_cast<T>(p[k][i]);
      op.grads(x, c, g);
      for (int k = 0; k < kOut; ++k) q[k][i] = static_cast<scalar_t>(g[k]);
    }
  }

  void zero(int64_t b, int64_t lo, int64_t hi) const {
    for (int k = 0; k < kOut; ++k) std::fill(out[k] + b * N + lo, out[k] + b * N + hi, scalar_t(0));
  }

  bool has_nan(int64_t b) const {
    for (int k = 0; k < kIn; ++k) {
      const scalar_t* p = in[k] + b * N;
      for (int64_t i = 0; i < N; ++i)
        if (math::fd_isnan(static_cast<T>(p[i]))) return true;
    }
    return false;
  }

  // Sums -> coefficients; stores the loss. Returns false when the sample is zeroed (NaN).
  bool finish(int64_t b, const Sums& acc, Coef& c) const {
    T s[kS];
    bool finite = true;
    for (int j = 0; j < kS; ++j) {
      s[j] = static_cast<T>(acc[j]);
      finite = finite && math::fd_isfinite(s[j]);
    }
    if (!finite && has_nan(b)) {
      loss[b] = T(0);
      return false;
    }
    c = op.finalize(s, aux, N, b);
    if (c.zero) {
      loss[b] = T(0);
      return false;
    }
    loss[b] = c.loss;
    return true;
  }

  void run_sample(int64_t b) const {
    Coef c;
    if (finish(b, pass1(b, 0, N), c)) {
      pass2(b, 0, N, c);
    } else {
      zero(b, 0, N);
    }
  }

  void run(int64_t B) const {
    if (B == 0) return;
    const int64_t nt = at::get_num_threads();
    constexpr int64_t kMinSplit = 8192;  // elements per thread worth a barrier
    const bool split = nt > 1 && N >= 2 * kMinSplit && (B < nt || (B % nt != 0 && B < 8 * nt));
    if (!split) {
      // Samples are handed out dynamically (an atomic counter), `chunk` at a time (~16K
      // elements), rather than as one static block per thread: on a shared machine a thread
      // that gets preempted holds up only its current chunk, the others take the rest.
      const int64_t chunk = std::max<int64_t>(1, 16384 / std::max<int64_t>(N, 1));
      const int64_t tasks = (B + chunk - 1) / chunk;
      const int64_t workers = std::min<int64_t>(nt, tasks);
      if (workers <= 1 || B * N < 65536) {
        for (int64_t b = 0; b < B; ++b) run_sample(b);
        return;
      }
      std::atomic<int64_t> next{0};
      at::parallel_for(0, workers, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t w = lo; w < hi; ++w) {
          for (int64_t t = next.fetch_add(1, std::memory_order_relaxed); t < tasks;
               t = next.fetch_add(1, std::memory_order_relaxed)) {
            const int64_t end = std::min(B, (t + 1) * chunk);
            for (int64_t b = t * chunk; b < end; ++b) run_sample(b);
          }
        }
      });
      return;
    }
    for (int64_t b = 0; b < B; ++b) {
      Sums acc = at::parallel_reduce(
          0, N, kMinSplit, Sums{},
          [&](int64_t lo, int64_t hi, Sums) { return pass1(b, lo, hi); },
          [](Sums x, const Sums& y) {
            for (int j = 0; j < kS; ++j) x[j] += y[j];
            return x;
          });
      Coef c;
      const bool ok = finish(b, acc, c);
      at::parallel_for(0, N, kMinSplit, [&](int64_t lo, int64_t hi) {
        if (ok) {
          pass2(b, lo, hi, c);
        } else {
          zero(b, lo, hi);
        }
      });
    }
  }
};

// Fills a CpuLoss with data pointers and runs it.
template <typename Op, typename scalar_t>
void launch(const Op& op, const LossArgs& a, at::Tensor& loss, std::initializer_list<at::Tensor*> grads) {
  using T = at::opmath_type<scalar_t>;
  CpuLoss<Op, scalar_t> k;
  k.op = op;
  for (int i = 0; i < Op::kIn; ++i) k.in[i] = a.in[i].data_ptr<scalar_t>();
  int j = 0;
  for (at::Tensor* g : grads) k.out[j++] = g->data_ptr<scalar_t>();
  k.loss = loss.data_ptr<T>();
  k.aux = a.aux.defined() ? a.aux.data_ptr<T>() : nullptr;
  k.N = a.N;
  k.run(a.B);
}

#define FD_DISPATCH(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sid_fused_cpu(const at::Tensor& y,
                                                                         const at::Tensor& y_real,
                                                                         const at::Tensor& y_fake,
                                                                         const std::optional<at::Tensor>& weight,
                                                                         double alpha, double scale) {
  LossArgs a = prepare_loss_args("sid_fused", {&y, &y_real, &y_fake}, weight, "weight", c10::DeviceType::CPU);
  at::Tensor loss = new_loss(a), gy = new_grad(a), gyr = new_grad(a), gyf = new_grad(a);
  FD_DISPATCH(a.in[0].scalar_type(), "sid_fused_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    launch<math::SidMath<T>, scalar_t>({T(alpha), T(scale)}, a, loss, {&gy, &gyr, &gyf});
  });
  return {loss, gy, gyr, gyf};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sim_fused_cpu(const at::Tensor& y,
                                                                         const at::Tensor& y_real,
                                                                         const at::Tensor& y_fake,
                                                                         const std::optional<at::Tensor>& weight,
                                                                         double c, bool pseudo_huber, double scale) {
  LossArgs a = prepare_loss_args("sim_fused", {&y, &y_real, &y_fake}, weight, "weight", c10::DeviceType::CPU);
  at::Tensor loss = new_loss(a), gy = new_grad(a), gyr = new_grad(a), gyf = new_grad(a);
  FD_DISPATCH(a.in[0].scalar_type(), "sim_fused_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    launch<math::SimMath<T>, scalar_t>({T(c), T(scale), pseudo_huber}, a, loss, {&gy, &gyr, &gyf});
  });
  return {loss, gy, gyr, gyf};
}

std::tuple<at::Tensor, at::Tensor> dmd_fused_cpu(const at::Tensor& y, const at::Tensor& y_real,
                                                 const at::Tensor& y_fake, const std::optional<at::Tensor>& weight,
                                                 double scale) {
  LossArgs a = prepare_loss_args("dmd_fused", {&y, &y_real, &y_fake}, weight, "weight", c10::DeviceType::CPU);
  at::Tensor loss = new_loss(a), gy = new_grad(a);
  FD_DISPATCH(a.in[0].scalar_type(), "dmd_fused_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    launch<math::DmdMath<T>, scalar_t>({T(scale)}, a, loss, {&gy});
  });
  return {loss, gy};
}

std::tuple<at::Tensor, at::Tensor> dsm_fused_cpu(const at::Tensor& pred, const at::Tensor& target,
                                                 const at::Tensor& sigma, double sigma_data, double scale) {
  LossArgs a = prepare_loss_args("dsm_fused", {&pred, &target}, sigma, "sigma", c10::DeviceType::CPU);
  TORCH_CHECK(a.aux.defined() || a.B == 0, "dsm_fused: sigma is required");
  at::Tensor loss = new_loss(a), gp = new_grad(a);
  FD_DISPATCH(a.in[0].scalar_type(), "dsm_fused_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    launch<math::DsmMath<T>, scalar_t>({T(sigma_data), T(scale)}, a, loss, {&gp});
  });
  return {loss, gp};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdistill, CPU, m) {
  m.impl("sid_fused", &sid_fused_cpu);
  m.impl("sim_fused", &sim_fused_cpu);
  m.impl("dmd_fused", &dmd_fused_cpu);
  m.impl("dsm_fused", &dsm_fused_cpu);
}

}  // namespace fastdistill
