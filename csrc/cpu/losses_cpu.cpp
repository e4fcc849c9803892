// Fused CPU kernels of sid/sim/dmd/dsm (semantics: fastdistill/ops/reference.py).
//
// Per sample, two passes while the sample stays in the core's cache:
//   pass 1 reads every input once and accumulates the per-sample sums (loss_math.h `accumulate`),
//   pass 2 re-reads the inputs (now cache hits) and writes the gradients (`grads`), with
//   streaming stores when the call writes more than kStreamBytes, while prefetching the
//   inputs of the thread's next sample.
// Gradient outputs come from OutputCache, which recycles the blocks of freed outputs.
// Parallelism: samples are handed to the at::parallel_for threads dynamically; when there are
// fewer samples than the work can balance (B small against the thread count), each sample is
// split across threads instead (parallel reduction for pass 1, parallel_for for pass 2).
// Inner loops use at::vec::Vectorized of the math type (float, or double for fp64 inputs);
// fp16 / bf16 are converted to float on load and back on store. Pass-1 sums use float vector
// lanes over short chunks, folded into double per chunk (accurate and fast).
#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <vector>

#include "loss_math.h"
#include "ops_common.h"

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#define FD_STREAM_STORES 1
#else
#define FD_STREAM_STORES 0
#endif

namespace fastdistill {
namespace {

using at::vec::Vectorized;

// Allocator of the gradient outputs: keeps the blocks of freed outputs and hands them out again.
//
// Why: every call returns gradients as large as its inputs (12.6 MB each for B=256 3x64x64
// fp32). glibc serves blocks that size from fresh mmaps, or from heap memory that it trims
// back to the kernel on free, depending on its dynamic thresholds and the allocation history,
// so in a loop every output page can be a first-touch page fault (9,200 faults per SiD call,
// more time than the kernel itself). A training loop frees the previous step's gradients
// before the next call (zero_grad(set_to_none=True), or once the backward has used them), so
// reusing those blocks writes into pages that are already mapped.
// Safe: a block enters the cache only from the deleter, when the last storage using it is
// gone, so a handed-out block never aliases a live tensor; one mutex guards the list
// (deleters run on any thread). Bounded: at most kMaxCachedBytes idle, evicting the oldest;
// blocks under kMinCachedBytes go to the default allocator (malloc recycles those itself).
// torch.ops.fastdistill.empty_cpu_output_cache() releases the idle blocks. The memory profiler
// sees a block allocated when it is handed out and freed when it comes back, and, like the
// default CPU allocator's reports, only the frees of blocks handed out while it was recording.
class OutputCache final : public c10::Allocator {
 public:
  static constexpr size_t kMinCachedBytes = size_t(1) << 20;
  static constexpr size_t kMaxCachedBytes = size_t(256) << 20;

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinCachedBytes) return c10::GetCPUAllocator()->allocate(n);
    Block* b = take(n);
    if (b == nullptr) b = new Block{c10::alloc_cpu(n), n};
    b->profiled = c10::memoryProfilingEnabled();
    if (b->profiled) report(b, static_cast<int64_t>(n));
    return {b->ptr, b, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // Frees the idle blocks; returns their bytes.
  int64_t empty() {
    std::vector<Block*> idle;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      idle.swap(idle_);
      idle_bytes_ = 0;
    }
    int64_t freed = 0;
    for (Block* b : idle) {
      freed += static_cast<int64_t>(b->size);
      destroy(b);
    }
    return freed;
  }

  static OutputCache& instance() {
    static OutputCache* cache = new OutputCache();  // never destroyed: tensors may outlive static destructors
    return *cache;
  }

 private:
  struct Block {
    void* ptr;
    size_t size;
    bool profiled = false;  // handed out while the memory profiler was recording
  };

  static void release(void* ctx) { instance().put(static_cast<Block*>(ctx)); }

  static void destroy(Block* b) {
    c10::free_cpu(b->ptr);
    delete b;
  }

  // The most recently freed idle block of exactly n bytes (the likeliest to be in cache), or null.
  Block* take(size_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = idle_.rbegin(); it != idle_.rend(); ++it) {
      if ((*it)->size == n) {
        Block* b = *it;
        idle_.erase(std::next(it).base());
        idle_bytes_ -= n;
        return b;
      }
    }
    return nullptr;
  }

  void put(Block* b) {
    if (b->profiled) report(b, -static_cast<int64_t>(b->size));
    if (b->size > kMaxCachedBytes) return destroy(b);
    std::vector<Block*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      idle_.push_back(b);
      idle_bytes_ += b->size;
      size_t drop = 0;
      while (idle_bytes_ > kMaxCachedBytes) {
        idle_bytes_ -= idle_[drop]->size;
        evicted.push_back(idle_[drop++]);
      }
      idle_.erase(idle_.begin(), idle_.begin() + drop);
    }
    for (Block* e : evicted) destroy(e);
  }

  void report(const Block* b, int64_t delta) {
    const int64_t in_use = in_use_.fetch_add(delta) + delta;
    if (c10::memoryProfilingEnabled()) {
      c10::reportMemoryUsageToProfiler(b->ptr, delta, in_use, 0, c10::Device(c10::DeviceType::CPU));
    }
  }

  std::atomic<int64_t> in_use_{0};  // bytes of profiled blocks handed out
  std::mutex mutex_;
  std::vector<Block*> idle_;  // oldest first
  size_t idle_bytes_ = 0;
};

at::Tensor new_cpu_grad(const LossArgs& a) {
  return at::detail::empty_strided_generic(a.in[0].sizes(), a.in[0].strides(), &OutputCache::instance(),
                                           c10::DispatchKeySet(c10::DispatchKey::CPU), a.in[0].scalar_type());
}

int64_t empty_cpu_output_cache() { return OutputCache::instance().empty(); }

// Calls that write more gradient bytes than this use non-temporal (streaming) stores. Why: an
// ordinary store first reads the line it writes (read-for-ownership), so writing a gradient
// costs a read and a write of memory; a streaming store skips that read. It also bypasses the
// cache, which costs nothing at this size: many MB of gradients do not stay in a core's cache
// until autograd consumes them anyway (they would only evict inputs still to be read), while
// small outputs do stay cached and keep ordinary stores. Measured here, one thread, SiD fp32:
// B=256 3x64x64 (38 MB written) 7.6 -> 5.4 ms, B=64 3x64x64 (9.4 MB) 1.7 -> 1.3 ms.
constexpr int64_t kStreamBytes = int64_t(8) << 20;

// Stores vector v at p, which must be aligned to sizeof(V), without reading the line first.
template <typename V>
inline void stream_store(void* p, const V& v) {
#if defined(CPU_CAPABILITY_AVX512)
  static_assert(sizeof(V) == sizeof(__m512i));
  __m512i bits;
  std::memcpy(&bits, &v, sizeof(bits));
  _mm512_stream_si512(static_cast<__m512i*>(p), bits);
#elif defined(CPU_CAPABILITY_AVX2)
  static_assert(sizeof(V) == sizeof(__m256i));
  __m256i bits;
  std::memcpy(&bits, &v, sizeof(bits));
  _mm256_stream_si256(static_cast<__m256i*>(p), bits);
#else
  v.store(p);
#endif
}

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
  // `store` with streaming stores; p must be aligned to kStreamAlign bytes.
  static constexpr size_t kStreamAlign = sizeof(Vectorized<scalar_t>);
  static inline void stream(scalar_t* p, const Vec& a, const Vec& b) {
    if constexpr (std::is_same_v<scalar_t, T>) {
      stream_store(p, a);
      stream_store(p + Vec::size(), b);
    } else {
      stream_store(p, at::vec::convert_from_float<scalar_t>(a, b));
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

  // Asks for the cache lines of one vector step (IO::kStep elements) at p (read, keep in L2).
  static inline void prefetch_step(const scalar_t* p) {
    constexpr int64_t kLine = 64;
    const char* c = reinterpret_cast<const char*>(p);
    for (int64_t off = 0; off < IO::kStep * int64_t(sizeof(scalar_t)); off += kLine) __builtin_prefetch(c + off, 0, 2);
  }

  Op op;
  const scalar_t* in[kIn];
  scalar_t* out[kOut];
  T* loss;
  const T* aux;  // weight or sigma, or nullptr
  int64_t N;
  bool stream = false;  // write the gradients with streaming stores (kStreamBytes)

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

  // Pass 2 over [lo, hi) of sample b: write the gradients. With next >= 0, also prefetches the
  // inputs of sample `next` at the same offsets (see run_sample).
  void pass2(int64_t b, int64_t lo, int64_t hi, const Coef& c, int64_t next = -1) const {
    const int64_t base = b * N;
    const scalar_t* p[kIn];
    const scalar_t* ahead[kIn];
    scalar_t* q[kOut];
    for (int k = 0; k < kIn; ++k) p[k] = in[k] + base;
    for (int k = 0; k < kIn; ++k) ahead[k] = next >= 0 ? in[k] + next * N : nullptr;
    for (int k = 0; k < kOut; ++k) q[k] = out[k] + base;
    auto scalar = [&](int64_t from, int64_t to) {
      for (int64_t i = from; i < to; ++i) {
        T x[kIn], g[kOut];
        for (int k = 0; k < kIn; ++k) x[k] = static_cast<T>(p[k][i]);
        op.grads(x, c, g);
        for (int k = 0; k < kOut; ++k) q[k][i] = static_cast<scalar_t>(g[k]);
      }
    };
    int64_t i = lo;
    if (stream) {  // scalar stores up to the first aligned element (all outputs share the offset)
      const auto misalign = reinterpret_cast<uintptr_t>(q[0] + lo) % IO::kStreamAlign;
      const int64_t head = misalign == 0 ? 0 : (IO::kStreamAlign - misalign) / sizeof(scalar_t);
      i = std::min(hi, lo + head);
      scalar(lo, i);
    }
    const int64_t vec_end = i + (hi - i) / IO::kStep * IO::kStep;
    for (; i < vec_end; i += IO::kStep) {
      Vec x0[kIn], x1[kIn], g0[kOut], g1[kOut];
      for (int k = 0; k < kIn; ++k) IO::load(p[k] + i, x0[k], x1[k]);
      if (next >= 0) {
        for (int k = 0; k < kIn; ++k) prefetch_step(ahead[k] + i);
      }
      op.grads(x0, c, g0);
      op.grads(x1, c, g1);
      if (stream) {
        for (int k = 0; k < kOut; ++k) IO::stream(q[k] + i, g0[k], g1[k]);
      } else {
        for (int k = 0; k < kOut; ++k) IO::store(q[k] + i, g0[k], g1[k]);
      }
    }
    scalar(i, hi);
#if FD_STREAM_STORES
    if (stream) _mm_sfence();  // streaming stores are weakly ordered: publish them before the thread joins
#endif
  }

  void zero(int64_t b, int64_t lo, int64_t hi) const {
    for (int k = 0; k < kOut; ++k) std::fill(out[k] + b * N + lo, out[k] + b * N + hi, scalar_t(0));
  }

  // Rare path (some sum is not finite): does sample b hold a NaN or +-inf in any input?
  bool has_nonfinite(int64_t b) const {
    for (int k = 0; k < kIn; ++k) {
      const scalar_t* p = in[k] + b * N;
      for (int64_t i = 0; i < N; ++i)
        if (!math::fd_isfinite(static_cast<T>(p[i]))) return true;
    }
    return false;
  }

  // Sums -> coefficients; stores the loss. Returns false when the sample is zeroed (a
  // non-finite input, weight or sigma: loss_math.h).
  bool finish(int64_t b, const Sums& acc, Coef& c) const {
    T s[kS];
    bool finite = true;
    for (int j = 0; j < kS; ++j) {
      s[j] = static_cast<T>(acc[j]);
      finite = finite && math::fd_isfinite(s[j]);
    }
    if (!finite && has_nonfinite(b)) {
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

  // Why `next`: pass 1 only reads memory and pass 2 (whose reads hit the cache) only writes it;
  // prefetching the next sample's inputs during pass 2 keeps reads and writes in flight together.
  void run_sample(int64_t b, int64_t next = -1) const {
    Coef c;
    if (finish(b, pass1(b, 0, N), c)) {
      pass2(b, 0, N, c, next);
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
      // that gets preempted holds up only its current chunk, the others take the rest. A thread
      // claims its next chunk before running the current one, so it can prefetch its first sample.
      const int64_t chunk = std::max<int64_t>(1, 16384 / std::max<int64_t>(N, 1));
      const int64_t tasks = (B + chunk - 1) / chunk;
      const int64_t workers = std::min<int64_t>(nt, tasks);
      if (workers <= 1 || B * N < 65536) {
        for (int64_t b = 0; b < B; ++b) run_sample(b, b + 1 < B ? b + 1 : -1);
        return;
      }
      std::atomic<int64_t> counter{0};
      at::parallel_for(0, workers, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t w = lo; w < hi; ++w) {
          int64_t t = counter.fetch_add(1, std::memory_order_relaxed);
          while (t < tasks) {
            const int64_t t_next = counter.fetch_add(1, std::memory_order_relaxed);
            const int64_t end = std::min(B, (t + 1) * chunk);
            for (int64_t b = t * chunk; b < end; ++b) {
              const int64_t after = b + 1 < end ? b + 1 : (t_next < tasks ? t_next * chunk : -1);
              run_sample(b, after);
            }
            t = t_next;
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
  // Streaming needs the outputs equally aligned (true for fresh allocations: 64-byte aligned).
  bool aligned = true;
  for (int i = 0; i < Op::kOut; ++i) {
    aligned = aligned && reinterpret_cast<uintptr_t>(k.out[i]) % CpuLoss<Op, scalar_t>::IO::kStreamAlign == 0;
  }
  k.stream = FD_STREAM_STORES && aligned && a.B * a.N * Op::kOut * int64_t(sizeof(scalar_t)) >= kStreamBytes;
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
  at::Tensor loss = new_loss(a), gy = new_cpu_grad(a), gyr = new_cpu_grad(a), gyf = new_cpu_grad(a);
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
  at::Tensor loss = new_loss(a), gy = new_cpu_grad(a), gyr = new_cpu_grad(a), gyf = new_cpu_grad(a);
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
  at::Tensor loss = new_loss(a), gy = new_cpu_grad(a);
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
  at::Tensor loss = new_loss(a), gp = new_cpu_grad(a);
  FD_DISPATCH(a.in[0].scalar_type(), "dsm_fused_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    launch<math::DsmMath<T>, scalar_t>({T(sigma_data), T(scale)}, a, loss, {&gp});
  });
  return {loss, gp};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastdistill, m) {
  m.def("empty_cpu_output_cache() -> int", &empty_cpu_output_cache);
}

TORCH_LIBRARY_IMPL(fastdistill, CPU, m) {
  m.impl("sid_fused", &sid_fused_cpu);
  m.impl("sim_fused", &sim_fused_cpu);
  m.impl("dmd_fused", &dmd_fused_cpu);
  m.impl("dsm_fused", &dsm_fused_cpu);
}

}  // namespace fastdistill
