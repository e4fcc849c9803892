// Per-element and per-sample formulas of the fused losses (docs/algorithms.md sections 1-4),
// shared by the CPU kernels (csrc/cpu/, where V is a scalar or at::vec::Vectorized) and the
// CUDA kernels (csrc/cuda/, where V is float or double). Keep everything here free of
// branches on V so one definition serves both, and so the CPU tests exercise the CUDA math.
//
// Every op is a small policy struct, templated on the math type T (float for
// fp16/bf16/fp32 inputs, double for fp64):
//   kIn / kOut / kSums         number of input tensors, gradient outputs, pass-1 sums
//   accumulate(x, s)           pass 1: add this element's terms to the running sums s[]
//   finalize(s, aux, n, b)     per sample: sums -> Coef {loss (already * scale), gradient
//                              coefficients, zero flag}; `aux` is the (B,) weight (or sigma
//                              for dsm), nullptr when absent
//   grads(x, coef, g)          pass 2: this element's gradients of scale * l_b
// The kernels own the non-finite rule (docs/losses.md): a sample with a NaN, +inf or -inf in
// any input, or whose given weight (dsm: sigma) is not finite, gets loss 0 and zero gradients.
// It costs no extra pass: each input of an element enters at least one sum through a term that
// is NaN or +-inf whenever that input is (y and y_real through |y - yr|, y_fake through
// (yr - yf) or its square; dsm pred and target through (pred - target)^2), and a non-finite
// partial sum stays non-finite, so a sample whose sums are all finite has only finite inputs.
// When a sum is not finite (a bad input, or finite inputs whose sums overflow) the kernel scans
// the sample for a non-finite value explicitly (rare path) and, if it finds one, writes loss 0
// and zero gradients. A non-finite given weight or sigma sets Coef::zero in `finalize`.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FD_HD __host__ __device__ __forceinline__
#else
#define FD_HD inline
#include <ATen/cpu/vec/vec.h>
#endif

namespace fastdistill {
namespace math {

constexpr double kWeightFloor = 1e-5;

#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
FD_HD float fd_abs(float v) { return fabsf(v); }
FD_HD double fd_abs(double v) { return fabs(v); }
FD_HD float fd_sqrt(float v) { return sqrtf(v); }
FD_HD double fd_sqrt(double v) { return sqrt(v); }
FD_HD bool fd_isfinite(float v) { return isfinite(v); }
FD_HD bool fd_isfinite(double v) { return isfinite(v); }
#else
FD_HD float fd_abs(float v) { return std::fabs(v); }
FD_HD double fd_abs(double v) { return std::fabs(v); }
FD_HD float fd_sqrt(float v) { return std::sqrt(v); }
FD_HD double fd_sqrt(double v) { return std::sqrt(v); }
FD_HD bool fd_isfinite(float v) { return std::isfinite(v); }
FD_HD bool fd_isfinite(double v) { return std::isfinite(v); }
#endif
#if !defined(__CUDACC__) && !defined(__HIPCC__)
template <typename T>
inline at::vec::Vectorized<T> fd_abs(const at::vec::Vectorized<T>& v) {
  return v.abs();
}
#endif

// SiD's stop-gradient weight: the given w_b, or max(mean_i |y - y_real|, 1e-5).
template <typename T>
FD_HD T resolve_weight(T abs_sum, const T* weight, int64_t n, int64_t b) {
  if (weight != nullptr) return weight[b];
  T w = abs_sum / static_cast<T>(n);
  return w > static_cast<T>(kWeightFloor) ? w : static_cast<T>(kWeightFloor);
}

// A given weight that is not finite zeroes the sample (the computed one is finite whenever
// the sample's inputs are).
template <typename T>
FD_HD bool bad_weight(const T* weight, int64_t b) {
  return weight != nullptr && !fd_isfinite(weight[b]);
}

// ---------------------------------------------------------------- SiD (section 2)
// x = (y, y_real, y_fake); delta = yr - yf, a = yr - y.
// s0 = sum |y - yr|, s1 = sum delta * (a - alpha * delta);  l = scale * s1 / w
// dl/dy = -m delta,  dl/dyr = m a + m (1 - 2 alpha) delta,  dl/dyf = -m a + 2 alpha m delta,
// with m = scale / w.
template <typename T>
struct SidMath {
  static constexpr int kIn = 3, kOut = 3, kSums = 2;
  T alpha, scale;
  struct Coef {
    T loss, m, neg_m, c_yr, c_yf;
    bool zero;
  };
  template <typename V>
  FD_HD void accumulate(const V* x, V* s) const {
    V d = x[1] - x[2];
    V a = x[1] - x[0];
    s[0] = s[0] + fd_abs(x[0] - x[1]);
    s[1] = s[1] + d * (a - V(alpha) * d);
  }
  FD_HD Coef finalize(const T* s, const T* weight, int64_t n, int64_t b) const {
    T w = resolve_weight(s[0], weight, n, b);
    T m = scale / w;
    Coef c;
    c.loss = s[1] / w * scale;
    c.m = m;
    c.neg_m = -m;
    c.c_yr = m * (T(1) - T(2) * alpha);
    c.c_yf = T(2) * alpha * m;
    c.zero = bad_weight(weight, b);
    return c;
  }
  template <typename V>
  FD_HD void grads(const V* x, const Coef& c, V* g) const {
    V d = x[1] - x[2];
    V a = x[1] - x[0];
    g[0] = V(c.neg_m) * d;
    g[1] = V(c.m) * a + V(c.c_yr) * d;
    g[2] = V(c.c_yf) * d - V(c.m) * a;
  }
};

// ---------------------------------------------------------------- SIM (section 3)
// delta = yr - yf, r = yf - y.  s0 = sum |y - yr|, s1 = S = sum delta r, s2 = Q = sum delta^2.
// N = sqrt(Q + c^2) (pseudo-Huber) or 1 (l2);  l = scale * S / (N w)
// dl/dy = -A delta,  dl/dyr = A r - K delta,  dl/dyf = -A r + (K + A) delta,
// with A = scale / (N w), K = scale S / (N^3 w) (K = 0 for l2: N does not depend on delta).
template <typename T>
struct SimMath {
  static constexpr int kIn = 3, kOut = 3, kSums = 3;
  T c, scale;
  bool pseudo_huber;
  struct Coef {
    T loss, A, neg_A, neg_K, K_plus_A;
    bool zero;
  };
  template <typename V>
  FD_HD void accumulate(const V* x, V* s) const {
    V d = x[1] - x[2];
    V r = x[2] - x[0];
    s[0] = s[0] + fd_abs(x[0] - x[1]);
    s[1] = s[1] + d * r;
    s[2] = s[2] + d * d;
  }
  FD_HD Coef finalize(const T* s, const T* weight, int64_t n, int64_t b) const {
    T w = resolve_weight(s[0], weight, n, b);
    T N = pseudo_huber ? fd_sqrt(s[2] + c * c) : T(1);
    Coef k;
    k.loss = s[1] / N / w * scale;
    k.A = scale / (N * w);
    k.neg_A = -k.A;
    T K = pseudo_huber ? k.A * (s[1] / (N * N)) : T(0);
    k.neg_K = -K;
    k.K_plus_A = K + k.A;
    k.zero = bad_weight(weight, b);
    return k;
  }
  template <typename V>
  FD_HD void grads(const V* x, const Coef& k, V* g) const {
    V d = x[1] - x[2];
    V r = x[2] - x[0];
    g[0] = V(k.neg_A) * d;
    g[1] = V(k.A) * r + V(k.neg_K) * d;
    g[2] = V(k.K_plus_A) * d - V(k.A) * r;
  }
};

// ---------------------------------------------------------------- DMD (section 4)
// g = (yf - yr) / w.  s0 = sum |y - yr|, s1 = sum (yf - yr)^2;  l = scale * 0.5 * s1 / w^2
// dl/dy = (scale / w) (yf - yr); y_real and y_fake get no gradient.
template <typename T>
struct DmdMath {
  static constexpr int kIn = 3, kOut = 1, kSums = 2;
  T scale;
  struct Coef {
    T loss, m;
    bool zero;
  };
  template <typename V>
  FD_HD void accumulate(const V* x, V* s) const {
    V g = x[2] - x[1];
    s[0] = s[0] + fd_abs(x[0] - x[1]);
    s[1] = s[1] + g * g;
  }
  FD_HD Coef finalize(const T* s, const T* weight, int64_t n, int64_t b) const {
    T w = resolve_weight(s[0], weight, n, b);
    Coef k;
    k.loss = T(0.5) * (s[1] / (w * w)) * scale;
    k.m = scale / w;
    k.zero = bad_weight(weight, b);
    return k;
  }
  template <typename V>
  FD_HD void grads(const V* x, const Coef& k, V* g) const {
    g[0] = V(k.m) * (x[2] - x[1]);
  }
};

// ---------------------------------------------------------------- DSM (section 1)
// x = (pred, target).  s0 = sum (pred - target)^2;  lambda = (s^2 + sd^2) / (s sd)^2
// l = scale * lambda * s0;  dl/dpred = 2 scale lambda (pred - target) (= -dl/dtarget).
// aux = sigma (B,); a non-finite sigma zeroes the sample.
template <typename T>
struct DsmMath {
  static constexpr int kIn = 2, kOut = 1, kSums = 1;
  T sigma_data, scale;
  struct Coef {
    T loss, m;
    bool zero;
  };
  template <typename V>
  FD_HD void accumulate(const V* x, V* s) const {
    V e = x[0] - x[1];
    s[0] = s[0] + e * e;
  }
  FD_HD Coef finalize(const T* s, const T* sigma, int64_t /*n*/, int64_t b) const {
    T sig = sigma[b];
    Coef k;
    k.zero = !fd_isfinite(sig);
    T ss = sig * sigma_data;
    T lam = (sig * sig + sigma_data * sigma_data) / (ss * ss);
    k.loss = lam * s[0] * scale;
    k.m = T(2) * lam * scale;
    return k;
  }
  template <typename V>
  FD_HD void grads(const V* x, const Coef& k, V* g) const {
    g[0] = V(k.m) * (x[0] - x[1]);
  }
};

}  // namespace math
}  // namespace fastdistill
