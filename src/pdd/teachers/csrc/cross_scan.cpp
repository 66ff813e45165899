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
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

constexpr int64_t kMaxState = 64;
constexpr int64_t kMaxRank = 128;

// 2^t for t <= 0, inline so that the loop vectorises without a libm call (which would spill every
// vector register). 2^t = 2^i * 2^f with i = round(t), |f| <= 1/2 (f exact), and 2^f = e^(f ln 2)
// by its degree-6 Taylor polynomial: relative error < 2e-7.
inline float exp2_nonpositive(float t) {
  t = std::max(t, -126.0f);  // 2^-126: the smallest normal float; the decay is 0 to float precision
  const float i = std::nearbyint(t);
  const float f = t - i;
  float p = 1.5403530e-4f;  // ln2^6 / 6!
  p = p * f + 1.3333558e-3f;  // ln2^5 / 5!
  p = p * f + 9.6181291e-3f;  // ln2^4 / 4!
  p = p * f + 5.5504109e-2f;  // ln2^3 / 3!
  p = p * f + 2.4022651e-1f;  // ln2^2 / 2!
  p = p * f + 6.9314718e-1f;  // ln2
  p = p * f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(i) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// softplus(x) = max(x, 0) + log(1 + z), z = e^-|x| in (0, 1], inline for the same reason.
// log(1 + z) = 2 atanh(q) with q = z / (2 + z) in (0, 1/3]: no cancellation for small z, and the
// odd series to q^13 has relative error < 1e-8.
inline float softplus(float x) {
  const float z = exp2_nonpositive(-std::fabs(x) * 1.44269504f);
  const float q = z / (2.0f + z), q2 = q * q;
  float p = 1.0f / 13.0f;
  p = p * q2 + 1.0f / 11.0f;
  p = p * q2 + 1.0f / 9.0f;
  p = p * q2 + 1.0f / 7.0f;
  p = p * q2 + 1.0f / 5.0f;
  p = p * q2 + 1.0f / 3.0f;
  p = p * q2 + 1.0f;
  return std::max(x, 0.0f) + 2.0f * q * p;
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
  const int64_t length = in.height * in.width, state = in.state, rank = in.rank;
  const int64_t cb = std::min(kBlock, in.width_d - c0);
  // h: states; a: A * log2(e), so the decay is 2^(dt * a); w: the dt projection's block.
  alignas(64) float h[kMaxState * kBlock], a[kMaxState * kBlock], w[kMaxRank * kBlock];
  alignas(64) float bias[kBlock], d_skip[kBlock];
  alignas(64) float dt[kChunk][kBlock], dtu[kChunk][kBlock], acc[kChunk][kBlock];
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
        float* dt_t = dt[t];
        std::copy(bias, bias + kBlock, dt_t);
        for (int64_t r = 0; r < rank; ++r) {
          for (int64_t i = 0; i < kBlock; ++i) dt_t[i] += low[r] * w[r * kBlock + i];
        }
        for (int64_t i = 0; i < kBlock; ++i) {
          const float u_i = i < cb ? u[i] : 0.0f;
          dt_t[i] = softplus(dt_t[i]);
          dtu[t][i] = dt_t[i] * u_i;
          acc[t][i] = d_skip[i] * u_i;
        }
      }
      for (int64_t t = 0; t < steps; ++t) {
        const float* b_row = in.B.at(batch, pos[t], k);
        const float* c_row = in.C.at(batch, pos[t], k);
        for (int64_t s = 0; s < state; ++s) {
          const float b = b_row[s], c = c_row[s];
          float* hs = &h[s * kBlock];
          const float* as = &a[s * kBlock];
          for (int64_t i = 0; i < kBlock; ++i) {
            hs[i] = exp2_nonpositive(dt[t][i] * as[i]) * hs[i] + dtu[t][i] * b;
            acc[t][i] += hs[i] * c;
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
  m.def("cross_scan_forward", &cross_scan_forward,
        "VMamba cross scan + dt projection + selective scan + cross merge (CPU, float32, forward)");
}
