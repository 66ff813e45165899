// VMamba's four-direction selective scan, fused with its dt projection, the cross scan and the
// cross merge, for CPUs. Forward only: the VMamba teacher is frozen.
//
// Per direction, one pass over the sequence with the states of a block of 16-64 channels kept in
// L1/registers; the plain-PyTorch scan instead makes ~8 memory passes over a (channels, L, n) state
// tensor. The direction sequences are never materialised: direction k walks the H x W grid
// row-major (k = 0), column-major (k = 1) or those reversed (k = 2, 3), reads its inputs at the
// visited position and adds its output straight into the merged result there.
//
//   u:        (b, L, d)  scan input, positions in row-major order
//   dt_low:   (b, L, k, r)  low-rank step sizes        } any strides with the last dimension
//   B, C:     (b, L, k, n)  input/output projections   } contiguous (slices of VMamba's x_dbl)
//   dt_weight: (k, r, d)  dt projection, dt = softplus(dt_low @ dt_weight + dt_bias)
//   dt_bias, D: (k, d)     A: (k, n, d) = -exp(A_log)
//   returns y: (b, L, d) = sum over directions of (scan output + D_k * u)
//
// Vectorised explicitly: with AVX-512 (F + DQ) one vector is 16 channels and the exp is a range
// reduction (vreduceps) and a scaling (vscalefps) around a degree-5 polynomial; with AVX2 + FMA
// 8 channels and the exponent added to the polynomial's bits; elsewhere plain scalar loops
// over the channels, which the compiler vectorises. Measured against the auto-vectorised scalar
// loop of the previous kernel: benchmarks/README.md, "Selective scan".
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#define PDD_SCAN_AVX512 1
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__)
#define PDD_SCAN_AVX2 1
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kMaxState = 64;
constexpr int64_t kMaxRank = 128;

// 2^f = 1 + f q(f) for |f| <= 1/2, q the degree-4 minimax polynomial of (2^f - 1) / f: relative
// error < 3e-7 in float32, and exactly 1 at f = 0. That matters: the decays of long sequences are
// 2^t with t near 0, and a constant bias of even 1 ulp there compounds over thousands of steps.
constexpr float kExp2C1 = 0.693147182f, kExp2C2 = 0.240223482f, kExp2C3 = 0.0555033311f,
                kExp2C4 = 0.00966637302f, kExp2C5 = 0.00134004361f;

// ---- one vector of channels: load/store, arithmetic and 2^t for t <= 0, per instruction set ----
#if defined(PDD_SCAN_AVX512)
using vfloat = __m512;
constexpr int64_t kLanes = 16;
constexpr const char* kVectorIsa = "avx512";
inline vfloat vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, vfloat x) { _mm512_storeu_ps(p, x); }
inline vfloat vset(float x) { return _mm512_set1_ps(x); }
inline vfloat vadd(vfloat a, vfloat b) { return _mm512_add_ps(a, b); }
inline vfloat vmul(vfloat a, vfloat b) { return _mm512_mul_ps(a, b); }
inline vfloat vdiv(vfloat a, vfloat b) { return _mm512_div_ps(a, b); }
inline vfloat vfma(vfloat a, vfloat b, vfloat c) { return _mm512_fmadd_ps(a, b, c); }
inline vfloat vmax(vfloat a, vfloat b) { return _mm512_max_ps(a, b); }
inline vfloat vabs(vfloat a) { return _mm512_abs_ps(a); }
#elif defined(PDD_SCAN_AVX2)
using vfloat = __m256;
constexpr int64_t kLanes = 8;
constexpr const char* kVectorIsa = "avx2";
inline vfloat vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, vfloat x) { _mm256_storeu_ps(p, x); }
inline vfloat vset(float x) { return _mm256_set1_ps(x); }
inline vfloat vadd(vfloat a, vfloat b) { return _mm256_add_ps(a, b); }
inline vfloat vmul(vfloat a, vfloat b) { return _mm256_mul_ps(a, b); }
inline vfloat vdiv(vfloat a, vfloat b) { return _mm256_div_ps(a, b); }
inline vfloat vfma(vfloat a, vfloat b, vfloat c) { return _mm256_fmadd_ps(a, b, c); }
inline vfloat vmax(vfloat a, vfloat b) { return _mm256_max_ps(a, b); }
inline vfloat vabs(vfloat a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
#else
// Portable: one float per "vector"; the loops over a block's channels are then plain scalar loops,
// which the compiler vectorises for whatever SIMD the target has.
using vfloat = float;
constexpr int64_t kLanes = 1;
constexpr const char* kVectorIsa = "portable";
inline vfloat vload(const float* p) { return *p; }
inline void vstore(float* p, vfloat x) { *p = x; }
inline vfloat vset(float x) { return x; }
inline vfloat vadd(vfloat a, vfloat b) { return a + b; }
inline vfloat vmul(vfloat a, vfloat b) { return a * b; }
inline vfloat vdiv(vfloat a, vfloat b) { return a / b; }
inline vfloat vfma(vfloat a, vfloat b, vfloat c) { return a * b + c; }
inline vfloat vmax(vfloat a, vfloat b) { return std::max(a, b); }
inline vfloat vabs(vfloat a) { return std::fabs(a); }
#endif

// 1 + f q(f) by Horner's rule.
inline vfloat exp2_reduced(vfloat f) {
  vfloat p = vfma(vset(kExp2C5), f, vset(kExp2C4));
  p = vfma(p, f, vset(kExp2C3));
  p = vfma(p, f, vset(kExp2C2));
  p = vfma(p, f, vset(kExp2C1));
  return vfma(p, f, vset(1.0f));
}

// 2^t for t <= 0 = 2^i * 2^f with i = round(t), |f| <= 1/2 (f exact). Inline, so the recurrence
// needs no libm call (which would spill every vector register).
inline vfloat exp2_nonpositive(vfloat t) {
#if defined(PDD_SCAN_AVX512)
  // f = t - round(t) in one instruction; scalef multiplies by 2^i (0 below float range).
  const vfloat f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_scalef_ps(exp2_reduced(f), _mm512_sub_ps(t, f));
#elif defined(PDD_SCAN_AVX2)
  // 2^-126 is the smallest normal float: below it the decay is 0 to float precision. The
  // polynomial's exponent field is 126 or 127, so adding i >= -126 to it stays >= 0.
  t = _mm256_max_ps(t, vset(-126.0f));
  const __m256i i = _mm256_cvtps_epi32(t);  // round to nearest
  const vfloat f = _mm256_sub_ps(t, _mm256_cvtepi32_ps(i));
  const __m256i bits = _mm256_castps_si256(exp2_reduced(f));
  return _mm256_castsi256_ps(_mm256_add_epi32(bits, _mm256_slli_epi32(i, 23)));
#else
  t = std::max(t, -126.0f);
  const float i = std::nearbyint(t);
  const int32_t bits = (static_cast<int32_t>(i) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return exp2_reduced(t - i) * scale;
#endif
}

// softplus(x) = max(x, 0) + log(1 + z), z = e^-|x| in (0, 1], inline for the same reason.
// log(1 + z) = 2 atanh(q) with q = z / (2 + z) in (0, 1/3]: no cancellation for small z, and the
// odd series to q^13 has relative error < 1e-8.
inline vfloat softplus(vfloat x) {
  const vfloat z = exp2_nonpositive(vmul(vabs(x), vset(-1.44269504f)));
  const vfloat q = vdiv(z, vadd(vset(2.0f), z)), q2 = vmul(q, q);
  vfloat p = vfma(vset(1.0f / 13.0f), q2, vset(1.0f / 11.0f));
  p = vfma(p, q2, vset(1.0f / 9.0f));
  p = vfma(p, q2, vset(1.0f / 7.0f));
  p = vfma(p, q2, vset(1.0f / 5.0f));
  p = vfma(p, q2, vset(1.0f / 3.0f));
  p = vfma(p, q2, vset(1.0f));
  return vfma(vmul(vset(2.0f), q), p, vmax(x, vset(0.0f)));
}

inline int64_t visited_position(int64_t direction, int64_t step, int64_t height, int64_t width) {
  const int64_t l = direction >= 2 ? height * width - 1 - step : step;
  return direction % 2 == 0 ? l : (l % height) * width + l / height;
}

// A (b, L, k, m) input read at (batch, position, direction): raw pointer and strides, taken out of
// the Tensor once so that the hot loops only do integer arithmetic.
struct Rows {
  const float* data;
  int64_t batch, position, direction;
  explicit Rows(const torch::Tensor& t)
      : data(t.data_ptr<float>()),
        batch(t.stride(0)),
        position(t.stride(1)),
        direction(t.dim() == 4 ? t.stride(2) : 0) {}
  const float* at(int64_t b, int64_t pos, int64_t k) const {
    return data + b * batch + pos * position + k * direction;
  }
};

struct Inputs {
  Rows u, dt_low, B, C;
  torch::Tensor dt_weight, dt_bias, A, D;
  int64_t width_d, state, rank, height, width;
};

// Copies row `row` of a (k, rows, d) or (k, d) parameter's channel block, zero-padded to kBlock.
template <int64_t kBlock>
void load_block(const torch::Tensor& t, int64_t k, int64_t row, int64_t c0, int64_t cb,
                float* out) {
  const float* src = t.data_ptr<float>() + k * t.stride(0) + (t.dim() == 3 ? row * t.stride(1) : 0);
  for (int64_t i = 0; i < kBlock; ++i) out[i] = i < cb ? src[c0 + i] : 0.0f;
}

// Steps per chunk. The step sizes of a whole chunk are computed before its recurrence, so their
// long dependency chains (projection, softplus) overlap instead of stalling every step.
constexpr int64_t kChunk = 32;

// One task: channels [c0, c0 + kBlock) of one image, all four directions. Wider blocks give the
// out-of-order core more independent work per step (16 channels: 1 AVX-512 vector).
template <int64_t kBlock>
void scan_channel_block(const Inputs& in, float* y, int64_t batch, int64_t c0) {
  static_assert(kBlock % kLanes == 0, "a channel block is whole vectors");
  const int64_t length = in.height * in.width, state = in.state, rank = in.rank;
  const int64_t cb = std::min(kBlock, in.width_d - c0);
  // h: states; a: A * log2(e), so the decay is 2^(dt * a); w: the dt projection's block.
  alignas(64) float h[kMaxState * kBlock], a[kMaxState * kBlock], w[kMaxRank * kBlock];
  alignas(64) float bias[kBlock], d_skip[kBlock], u_padded[kBlock];
  alignas(64) float dt[kChunk][kBlock], dtu[kChunk][kBlock], acc[kChunk][kBlock];
  constexpr int64_t kVectors = kBlock / kLanes;
  int64_t pos[kChunk];
  for (int64_t k = 0; k < in.A.size(0); ++k) {
    std::fill(h, h + state * kBlock, 0.0f);
    for (int64_t s = 0; s < state; ++s) {
      load_block<kBlock>(in.A, k, s, c0, cb, &a[s * kBlock]);
      for (int64_t i = 0; i < kBlock; ++i) a[s * kBlock + i] *= 1.44269504f;
    }
    for (int64_t r = 0; r < rank; ++r) load_block<kBlock>(in.dt_weight, k, r, c0, cb, &w[r * kBlock]);
    load_block<kBlock>(in.dt_bias, k, 0, c0, cb, bias);
    load_block<kBlock>(in.D, k, 0, c0, cb, d_skip);
    for (int64_t first = 0; first < length; first += kChunk) {
      const int64_t steps = std::min(kChunk, length - first);
      for (int64_t t = 0; t < steps; ++t) {
        pos[t] = visited_position(k, first + t, in.height, in.width);
        const float* low = in.dt_low.at(batch, pos[t], k);
        const float* u = in.u.at(batch, pos[t], 0) + c0;
        if (cb < kBlock) {  // a ragged last block: zeros beyond the channels
          for (int64_t i = 0; i < kBlock; ++i) u_padded[i] = i < cb ? u[i] : 0.0f;
          u = u_padded;
        }
        // The whole block's projections side by side: kVectors independent accumulation chains.
        vfloat x[kVectors];
        for (int64_t j = 0; j < kVectors; ++j) x[j] = vload(&bias[j * kLanes]);
        for (int64_t r = 0; r < rank; ++r) {
          const vfloat low_r = vset(low[r]);
          for (int64_t j = 0; j < kVectors; ++j) {
            x[j] = vfma(low_r, vload(&w[r * kBlock + j * kLanes]), x[j]);
          }
        }
        for (int64_t j = 0; j < kVectors; ++j) {
          const int64_t i = j * kLanes;
          const vfloat dt_i = softplus(x[j]), u_i = vload(&u[i]);
          vstore(&dt[t][i], dt_i);
          vstore(&dtu[t][i], vmul(dt_i, u_i));
          vstore(&acc[t][i], vmul(vload(&d_skip[i]), u_i));
        }
      }
      for (int64_t t = 0; t < steps; ++t) {
        const float* b_row = in.B.at(batch, pos[t], k);
        const float* c_row = in.C.at(batch, pos[t], k);
        for (int64_t s = 0; s < state; ++s) {
          const vfloat b = vset(b_row[s]), c = vset(c_row[s]);
          for (int64_t i = 0; i < kBlock; i += kLanes) {
            float* hs = &h[s * kBlock + i];
            const vfloat dt_a = vmul(vload(&dt[t][i]), vload(&a[s * kBlock + i]));
            const vfloat decay = exp2_nonpositive(dt_a);
            const vfloat updated = vfma(decay, vload(hs), vmul(vload(&dtu[t][i]), b));
            vstore(hs, updated);
            vstore(&acc[t][i], vfma(updated, c, vload(&acc[t][i])));
          }
        }
      }
      for (int64_t t = 0; t < steps; ++t) {
        float* y_row = y + (batch * length + pos[t]) * in.width_d + c0;
        if (k == 0) {  // the first direction initialises this task's slice of y
          for (int64_t i = 0; i < cb; ++i) y_row[i] = acc[t][i];
        } else {
          for (int64_t i = 0; i < cb; ++i) y_row[i] += acc[t][i];
        }
      }
    }
  }
}

}  // namespace

torch::Tensor cross_scan_forward(torch::Tensor u, torch::Tensor dt_low, torch::Tensor B,
                                 torch::Tensor C, torch::Tensor dt_weight, torch::Tensor dt_bias,
                                 torch::Tensor A, torch::Tensor D, int64_t height, int64_t width) {
  for (const auto* t : {&u, &dt_low, &B, &C, &dt_weight, &dt_bias, &A, &D}) {
    TORCH_CHECK(t->scalar_type() == torch::kFloat32 && t->device().is_cpu(),
                "cross_scan: float32 CPU tensors only");
    TORCH_CHECK(t->stride(t->dim() - 1) == 1, "cross_scan: last dimension must be contiguous");
  }
  TORCH_CHECK(u.dim() == 3 && u.size(1) == height * width, "cross_scan: u must be (b, H*W, d)");
  TORCH_CHECK(A.dim() == 3 && A.size(0) >= 1 && A.size(2) == u.size(2),
              "cross_scan: A must be (k, n, d)");
  const int64_t batch = u.size(0), length = u.size(1), width_d = u.size(2);
  const int64_t directions = A.size(0), state = A.size(1);
  TORCH_CHECK(dt_weight.dim() == 3 && dt_weight.size(0) == directions &&
                  dt_weight.size(2) == width_d,
              "cross_scan: dt_weight must be (k, r, d)");
  const int64_t rank = dt_weight.size(1);
  TORCH_CHECK(state <= kMaxState && rank <= kMaxRank, "cross_scan: at most ", kMaxState,
              " states and dt rank ", kMaxRank);
  const auto rows_ok = [&](const torch::Tensor& t, int64_t last) {
    return t.dim() == 4 && t.size(0) == batch && t.size(1) == length && t.size(2) == directions &&
           t.size(3) == last;
  };
  TORCH_CHECK(rows_ok(dt_low, rank), "cross_scan: dt_low must be (b, L, k, r)");
  TORCH_CHECK(rows_ok(B, state) && rows_ok(C, state), "cross_scan: B and C must be (b, L, k, n)");
  for (const auto* t : {&dt_bias, &D}) {
    TORCH_CHECK(t->dim() == 2 && t->size(0) == directions && t->size(1) == width_d,
                "cross_scan: dt_bias and D must be (k, d)");
  }
  const Inputs in{Rows(u), Rows(dt_low), Rows(B), Rows(C), dt_weight, dt_bias, A, D,
                  width_d, state, rank, height, width};
  auto y = torch::empty_like(u, at::MemoryFormat::Contiguous);
  float* y_data = y.data_ptr<float>();
  const int64_t threads = at::get_num_threads();
  // Widest block whose tasks still keep every thread busy: the makespan is the number of task
  // rounds times the block width.
  int64_t block = 16, best = -1;
  for (int64_t candidate : {16, 32, 64}) {
    const int64_t tasks = batch * ((width_d + candidate - 1) / candidate);
    const int64_t makespan = (tasks + threads - 1) / threads * candidate;
    if (best < 0 || makespan <= best) block = candidate, best = makespan;
  }
  const int64_t blocks = (width_d + block - 1) / block;
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t image = task / blocks, c0 = (task % blocks) * block;
      if (block == 64) scan_channel_block<64>(in, y_data, image, c0);
      else if (block == 32) scan_channel_block<32>(in, y_data, image, c0);
      else scan_channel_block<16>(in, y_data, image, c0);
    }
  });
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("vector_isa", [] { return std::string(kVectorIsa); },
        "the instruction set the kernel was vectorised for: avx512, avx2 or portable");
  m.def("cross_scan_forward", &cross_scan_forward,
        "VMamba cross scan + dt projection + selective scan + cross merge (CPU, float32, forward)");
}
