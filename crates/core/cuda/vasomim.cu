// vasomim's CUDA kernels (crates/core/src/nn/kernels/cuda.rs and cuda/segmentor.rs launch them;
// docs/CUDA.md): the ViT step's hot ops, AdamW, and the segmentor's depthwise conv and BatchNorm.
//
// Each kernel reads and writes its tensors' own dtype (f32 or bf16, one instantiation each) and
// computes in f32: statistics, softmax and reductions never run in bf16. Row kernels run one block
// per row; column reductions (weight and bias gradients) are two passes over fixed row chunks, so
// results do not depend on scheduling (no atomics).
#include <cuda_bf16.h>
#include <stdint.h>

#define WARP 32

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ float block_sum(float v) {
  __shared__ float part[32];
  __shared__ float total;
  int lane = threadIdx.x % WARP, wid = threadIdx.x / WARP;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) part[wid] = v;
  __syncthreads();
  if (wid == 0) {
    float s = lane < (int)(blockDim.x / WARP) ? part[lane] : 0.f;
    s = warp_sum(s);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

__device__ float block_max(float v) {
  __shared__ float part[32];
  __shared__ float total;
  int lane = threadIdx.x % WARP, wid = threadIdx.x / WARP;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) part[wid] = v;
  __syncthreads();
  if (wid == 0) {
    float s = lane < (int)(blockDim.x / WARP) ? part[lane] : -INFINITY;
    s = warp_max(s);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

// ------------------------------------------------------------------ LayerNorm over the last dim

// y = (x − μ)·rstd·w + b per row; μ and rstd = 1/sqrt(σ²_biased + eps) saved for the backward.
template <typename T>
__device__ void layer_norm_fwd(const T *x, const float *w, const float *b, T *y, float *mean, float *rstd,
                               int cols, float eps) {
  const T *xr = x + (size_t)blockIdx.x * cols;
  T *yr = y + (size_t)blockIdx.x * cols;
  float s = 0.f;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) s += to_f(xr[i]);
  float mu = block_sum(s) / cols;
  float q = 0.f;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) {
    float d = to_f(xr[i]) - mu;
    q += d * d;
  }
  float r = rsqrtf(block_sum(q) / cols + eps);
  for (int i = threadIdx.x; i < cols; i += blockDim.x) yr[i] = from_f<T>((to_f(xr[i]) - mu) * r * w[i] + b[i]);
  if (threadIdx.x == 0) {
    mean[blockIdx.x] = mu;
    rstd[blockIdx.x] = r;
  }
}

// dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) with ĝ = dy·w, x̂ = (x − μ)·rstd.
template <typename T>
__device__ void layer_norm_bwd_dx(const T *x, const float *w, const T *dy, const float *mean, const float *rstd,
                                  T *dx, int cols) {
  size_t off = (size_t)blockIdx.x * cols;
  float mu = mean[blockIdx.x], r = rstd[blockIdx.x];
  float sg = 0.f, sgx = 0.f;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) {
    float g = to_f(dy[off + i]) * w[i];
    sg += g;
    sgx += g * (to_f(x[off + i]) - mu) * r;
  }
  sg = block_sum(sg) / cols;
  sgx = block_sum(sgx) / cols;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) {
    float xh = (to_f(x[off + i]) - mu) * r;
    float g = to_f(dy[off + i]) * w[i];
    dx[off + i] = from_f<T>(r * (g - sg - xh * sgx));
  }
}

// Partial dw = Σ dy·x̂ and db = Σ dy over the rows of chunk blockIdx.y, for the columns of this
// block: part[(chunk·2 + 0)·cols + c] (dw) and part[(chunk·2 + 1)·cols + c] (db).
template <typename T>
__device__ void layer_norm_bwd_dwdb(const T *x, const T *dy, const float *mean, const float *rstd, float *part,
                                    int rows, int cols, int chunk_rows) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  int r0 = blockIdx.y * chunk_rows, r1 = min(rows, r0 + chunk_rows);
  float dw = 0.f, db = 0.f;
  for (int r = r0; r < r1; ++r) {
    size_t o = (size_t)r * cols + c;
    float g = to_f(dy[o]);
    dw += g * (to_f(x[o]) - mean[r]) * rstd[r];
    db += g;
  }
  part[((size_t)blockIdx.y * 2) * cols + c] = dw;
  part[((size_t)blockIdx.y * 2 + 1) * cols + c] = db;
}

// ------------------------------------------------------------------ column sums (bias gradients)

// part[chunk·cols + c] = Σ over the chunk's rows of x[r, c].
template <typename T>
__device__ void col_sum_part(const T *x, float *part, int rows, int cols, int chunk_rows) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  int r0 = blockIdx.y * chunk_rows, r1 = min(rows, r0 + chunk_rows);
  float s = 0.f;
  for (int r = r0; r < r1; ++r) s += to_f(x[(size_t)r * cols + c]);
  part[(size_t)blockIdx.y * cols + c] = s;
}

// out[k·cols + c] = Σ_chunk part[(chunk·groups + k)·cols + c], in chunk order (deterministic).
extern "C" __global__ void col_sum_final(const float *part, float *out, int chunks, int groups, int cols) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= groups * cols) return;
  float s = 0.f;
  for (int ch = 0; ch < chunks; ++ch) s += part[(size_t)ch * groups * cols + i];
  out[i] = s;
}

// y[r, c] = x[r, c] + b[c] (b f32), computed in f32.
template <typename T>
__device__ void bias_add(const T *x, const float *b, T *y, size_t n, int cols) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    y[i] = from_f<T>(to_f(x[i]) + b[i % cols]);
}

// ------------------------------------------------------------------ softmax over the last dim

// y = softmax(scale·x) per row, f32 arithmetic.
template <typename T>
__device__ void softmax_fwd(const T *x, T *y, int cols, float scale) {
  size_t off = (size_t)blockIdx.x * cols;
  float m = -INFINITY;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) m = fmaxf(m, to_f(x[off + i]) * scale);
  m = block_max(m);
  float s = 0.f;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) s += __expf(to_f(x[off + i]) * scale - m);
  float inv = 1.f / block_sum(s);
  for (int i = threadIdx.x; i < cols; i += blockDim.x) y[off + i] = from_f<T>(__expf(to_f(x[off + i]) * scale - m) * inv);
}

// dx = scale·y·(g − Σ g·y) per row.
template <typename T>
__device__ void softmax_bwd(const T *y, const T *g, T *dx, int cols, float scale) {
  size_t off = (size_t)blockIdx.x * cols;
  float s = 0.f;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) s += to_f(g[off + i]) * to_f(y[off + i]);
  s = block_sum(s);
  for (int i = threadIdx.x; i < cols; i += blockDim.x)
    dx[off + i] = from_f<T>(scale * to_f(y[off + i]) * (to_f(g[off + i]) - s));
}

// ------------------------------------------------------------------ exact GELU

__device__ __forceinline__ float gelu_f(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_grad_f(float x) {
  return 0.5f * (1.f + erff(x * 0.70710678118654752f)) + x * 0.3989422804014327f * __expf(-0.5f * x * x);
}

template <typename T>
__device__ void gelu_fwd(const T *x, T *y, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    y[i] = from_f<T>(gelu_f(to_f(x[i])));
}

template <typename T>
__device__ void gelu_bwd(const T *x, const T *g, T *dx, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    dx[i] = from_f<T>(to_f(g[i]) * gelu_grad_f(to_f(x[i])));
}

// y = GELU(z + b) with b f32 over the last dim (the MLP's fc1 epilogue), and its backward
// dz = g·GELU'(z + b): the pre-activation is recomputed from z, never stored.
template <typename T>
__device__ void bias_gelu_fwd(const T *z, const float *b, T *y, size_t n, int cols) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    y[i] = from_f<T>(gelu_f(to_f(z[i]) + b[i % cols]));
}

template <typename T>
__device__ void bias_gelu_bwd(const T *z, const float *b, const T *g, T *dz, size_t n, int cols) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    dz[i] = from_f<T>(to_f(g[i]) * gelu_grad_f(to_f(z[i]) + b[i % cols]));
}

// ------------------------------------------------------------------ depthwise 3×3 conv, channels last

// dst[b, y, x, c] = bias[c] + Σ_(dy, dx) w[c·9 + dy·3 + dx]·src[b, y + dir·(dy − 1), x + dir·(dx − 1), c]
// over the taps inside the (H, W) grid (zero padding 1), for (B, H, W, C) data: the conv with
// dir 1 and `has_bias`, the input gradient (mirrored taps, no bias) with dir −1. Taps are added in
// the CPU kernel's order. One thread per output value, channels fastest (coalesced).
template <typename T>
__device__ void dwconv3x3(const T *src, const float *w, const float *bias, T *dst, int B, int H, int W, int C,
                          int dir, int has_bias) {
  size_t n = (size_t)B * H * W * C;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    int c = (int)(i % C);
    size_t p = i / C;
    int x = (int)(p % W);
    p /= W;
    int y = (int)(p % H);
    size_t b = p / H;
    float acc = has_bias ? bias[c] : 0.f;
    for (int dy = 0; dy < 3; ++dy) {
      int iy = y + dir * (dy - 1);
      if (iy < 0 || iy >= H) continue;
      for (int dx = 0; dx < 3; ++dx) {
        int ix = x + dir * (dx - 1);
        if (ix < 0 || ix >= W) continue;
        acc += to_f(src[((b * H + iy) * W + ix) * C + c]) * w[c * 9 + dy * 3 + dx];
      }
    }
    dst[i] = from_f<T>(acc);
  }
}

// Partial weight and bias gradients over the positions (rows of B·H·W) of chunk blockIdx.y, one
// thread per channel: part[(chunk·10 + t)·C + c] = Σ g·x shifted by tap t (t < 9), and Σ g (t = 9).
template <typename T>
__device__ void dwconv3x3_bwd_wb(const T *x, const T *g, float *part, int B, int H, int W, int C, int chunk_rows) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  int rows = B * H * W;
  int r0 = blockIdx.y * chunk_rows, r1 = min(rows, r0 + chunk_rows);
  float acc[10];
  for (int t = 0; t < 10; ++t) acc[t] = 0.f;
  for (int r = r0; r < r1; ++r) {
    int xw = r % W, y = (r / W) % H, b = r / (W * H);
    float gv = to_f(g[(size_t)r * C + c]);
    acc[9] += gv;
    for (int dy = 0; dy < 3; ++dy) {
      int iy = y + dy - 1;
      if (iy < 0 || iy >= H) continue;
      for (int dx = 0; dx < 3; ++dx) {
        int ix = xw + dx - 1;
        if (ix < 0 || ix >= W) continue;
        acc[dy * 3 + dx] += gv * to_f(x[(((size_t)b * H + iy) * W + ix) * C + c]);
      }
    }
  }
  for (int t = 0; t < 10; ++t) part[((size_t)blockIdx.y * 10 + t) * C + c] = acc[t];
}

// ------------------------------------------------------------------ BatchNorm over (B, C, L)

// part[chunk·C + c] = Σ over the batch rows of chunk blockIdx.y and all L of v or v² with
// v = x − shift[c] (`square` 0 / 1): pass 1 gives the mean, pass 2 (shift = mean) the biased
// variance. One block per (channel, chunk).
template <typename T>
__device__ void bn_sum_part(const T *x, const float *shift, float *part, int B, int C, int L, int chunk_b,
                            int square) {
  int c = blockIdx.x;
  int b0 = blockIdx.y * chunk_b, b1 = min(B, b0 + chunk_b);
  float sh = square ? shift[c] : 0.f;
  float s = 0.f;
  for (int b = b0; b < b1; ++b) {
    const T *row = x + ((size_t)b * C + c) * L;
    for (int l = threadIdx.x; l < L; l += blockDim.x) {
      float v = to_f(row[l]) - sh;
      s += square ? v * v : v;
    }
  }
  s = block_sum(s);
  if (threadIdx.x == 0) part[(size_t)blockIdx.y * C + c] = s;
}

// Per channel, the partials summed in chunk order (in double) and divided by n: the mean
// (square 0) into stat; the biased variance (square 1) into stat and 1/sqrt(var + eps) into invstd.
extern "C" __global__ void bn_stat_final(const float *part, float *stat, float *invstd, int chunks, int C, int n,
                                         float eps, int square) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double s = 0.0;
  for (int ch = 0; ch < chunks; ++ch) s += part[(size_t)ch * C + c];
  float v = (float)(s / n);
  stat[c] = v;
  if (square) invstd[c] = (float)(1.0 / sqrt((double)v + eps));
}

// y = (x − mean[c])·invstd[c]·w[c] + b[c].
template <typename T>
__device__ void bn_apply(const T *x, const float *mean, const float *invstd, const float *w, const float *b, T *y,
                         size_t n, int C, int L) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    int c = (int)((i / L) % C);
    y[i] = from_f<T>((to_f(x[i]) - mean[c]) * invstd[c] * w[c] + b[c]);
  }
}

// Backward partials per (channel, chunk): part[(chunk·2 + 0)·C + c] = Σ g·x̂ (dw) and
// part[(chunk·2 + 1)·C + c] = Σ g (db), x̂ = (x − mean)·invstd.
template <typename T>
__device__ void bn_bwd_part(const T *x, const T *g, const float *mean, const float *invstd, float *part, int B, int C,
                            int L, int chunk_b) {
  int c = blockIdx.x;
  int b0 = blockIdx.y * chunk_b, b1 = min(B, b0 + chunk_b);
  float mu = mean[c], r = invstd[c];
  float sgx = 0.f, sg = 0.f;
  for (int b = b0; b < b1; ++b) {
    size_t off = ((size_t)b * C + c) * L;
    for (int l = threadIdx.x; l < L; l += blockDim.x) {
      float gv = to_f(g[off + l]);
      sgx += gv * (to_f(x[off + l]) - mu) * r;
      sg += gv;
    }
  }
  sgx = block_sum(sgx);
  sg = block_sum(sg);
  if (threadIdx.x == 0) {
    part[((size_t)blockIdx.y * 2) * C + c] = sgx;
    part[((size_t)blockIdx.y * 2 + 1) * C + c] = sg;
  }
}

// dx from sums = (Σ g·x̂; Σ g) per channel (2·C): train mode (batch statistics)
// w·invstd·(g − Σg/n − x̂·Σg·x̂/n); eval mode (fixed statistics) w·invstd·g.
template <typename T>
__device__ void bn_bwd_dx(const T *x, const T *g, const float *mean, const float *invstd, const float *w,
                          const float *sums, T *dx, size_t n, int C, int L, float inv_count, int train) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    int c = (int)((i / L) % C);
    float gv = to_f(g[i]);
    if (train) {
      float xh = (to_f(x[i]) - mean[c]) * invstd[c];
      gv = gv - sums[C + c] * inv_count - xh * sums[c] * inv_count;
    }
    dx[i] = from_f<T>(w[c] * invstd[c] * gv);
  }
}

// ------------------------------------------------------------------ AdamW (f32 master weights)

// One update in one pass: w in place, new moments into m2 and v2. The same operations in the same
// order as the CPU kernel (crates/core/src/optim.rs): decay, moments, denom, step.
extern "C" __global__ void adamw_f32(float *w, const float *g, const float *m, const float *v, float *m2, float *v2,
                                     size_t n, int decay, float decay_f, float b1, float one_m_b1, float b2,
                                     float one_m_b2, float inv_bc2_sqrt, float eps, float step_size) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float wi = decay ? w[i] * decay_f : w[i];
    float gi = g[i];
    float mi = m[i] * b1 + gi * one_m_b1;
    float vi = v[i] * b2 + (gi * gi) * one_m_b2;
    float denom = sqrtf(vi) * inv_bc2_sqrt + eps;
    m2[i] = mi;
    v2[i] = vi;
    w[i] = wi - (mi / denom) * step_size;
  }
}

// ------------------------------------------------------------------ one entry point per dtype

#define INSTANTIATE(T, S)                                                                                          \
  extern "C" __global__ void layer_norm_fwd_##S(const T *x, const float *w, const float *b, T *y, float *mean,     \
                                                float *rstd, int cols, float eps) {                                \
    layer_norm_fwd<T>(x, w, b, y, mean, rstd, cols, eps);                                                          \
  }                                                                                                                \
  extern "C" __global__ void layer_norm_bwd_dx_##S(const T *x, const float *w, const T *dy, const float *mean,     \
                                                   const float *rstd, T *dx, int cols) {                           \
    layer_norm_bwd_dx<T>(x, w, dy, mean, rstd, dx, cols);                                                          \
  }                                                                                                                \
  extern "C" __global__ void layer_norm_bwd_dwdb_##S(const T *x, const T *dy, const float *mean, const float *rstd, \
                                                     float *part, int rows, int cols, int chunk_rows) {            \
    layer_norm_bwd_dwdb<T>(x, dy, mean, rstd, part, rows, cols, chunk_rows);                                       \
  }                                                                                                                \
  extern "C" __global__ void col_sum_part_##S(const T *x, float *part, int rows, int cols, int chunk_rows) {        \
    col_sum_part<T>(x, part, rows, cols, chunk_rows);                                                              \
  }                                                                                                                \
  extern "C" __global__ void bias_add_##S(const T *x, const float *b, T *y, size_t n, int cols) {                  \
    bias_add<T>(x, b, y, n, cols);                                                                                 \
  }                                                                                                                \
  extern "C" __global__ void softmax_fwd_##S(const T *x, T *y, int cols, float scale) {                            \
    softmax_fwd<T>(x, y, cols, scale);                                                                             \
  }                                                                                                                \
  extern "C" __global__ void softmax_bwd_##S(const T *y, const T *g, T *dx, int cols, float scale) {               \
    softmax_bwd<T>(y, g, dx, cols, scale);                                                                         \
  }                                                                                                                \
  extern "C" __global__ void gelu_fwd_##S(const T *x, T *y, size_t n) { gelu_fwd<T>(x, y, n); }                    \
  extern "C" __global__ void gelu_bwd_##S(const T *x, const T *g, T *dx, size_t n) { gelu_bwd<T>(x, g, dx, n); }                \
  extern "C" __global__ void bias_gelu_fwd_##S(const T *z, const float *b, T *y, size_t n, int cols) {             \
    bias_gelu_fwd<T>(z, b, y, n, cols);                                                                            \
  }                                                                                                                \
  extern "C" __global__ void bias_gelu_bwd_##S(const T *z, const float *b, const T *g, T *dz, size_t n, int cols) {\
    bias_gelu_bwd<T>(z, b, g, dz, n, cols);                                                                        \
  }                                                                                                                \
  extern "C" __global__ void dwconv3x3_##S(const T *src, const float *w, const float *bias, T *dst, int B, int H,  \
                                           int W, int C, int dir, int has_bias) {                                  \
    dwconv3x3<T>(src, w, bias, dst, B, H, W, C, dir, has_bias);                                                    \
  }                                                                                                                \
  extern "C" __global__ void dwconv3x3_bwd_wb_##S(const T *x, const T *g, float *part, int B, int H, int W, int C, \
                                                  int chunk_rows) {                                                \
    dwconv3x3_bwd_wb<T>(x, g, part, B, H, W, C, chunk_rows);                                                       \
  }                                                                                                                \
  extern "C" __global__ void bn_sum_part_##S(const T *x, const float *shift, float *part, int B, int C, int L,     \
                                             int chunk_b, int square) {                                            \
    bn_sum_part<T>(x, shift, part, B, C, L, chunk_b, square);                                                      \
  }                                                                                                                \
  extern "C" __global__ void bn_apply_##S(const T *x, const float *mean, const float *invstd, const float *w,      \
                                          const float *b, T *y, size_t n, int C, int L) {                          \
    bn_apply<T>(x, mean, invstd, w, b, y, n, C, L);                                                                \
  }                                                                                                                \
  extern "C" __global__ void bn_bwd_part_##S(const T *x, const T *g, const float *mean, const float *invstd,       \
                                             float *part, int B, int C, int L, int chunk_b) {                      \
    bn_bwd_part<T>(x, g, mean, invstd, part, B, C, L, chunk_b);                                                    \
  }                                                                                                                \
  extern "C" __global__ void bn_bwd_dx_##S(const T *x, const T *g, const float *mean, const float *invstd,         \
                                           const float *w, const float *sums, T *dx, size_t n, int C, int L,       \
                                           float inv_count, int train) {                                           \
    bn_bwd_dx<T>(x, g, mean, invstd, w, sums, dx, n, C, L, inv_count, train);                                      \
  }

INSTANTIATE(float, f32)
INSTANTIATE(__nv_bfloat16, bf16)
