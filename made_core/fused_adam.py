"""Adam fused with the mask products of a MADE that has several masks, on the CPU.

A MADE with K > 1 masks (or a fresh mask every minibatch) multiplies every weight matrix by the
step's mask before the forward pass, and the weight's gradient by that mask after the backward
pass: two memory-bound passes per layer and step that an unmasked MLP does not make (about a
tenth of a 32-mask MADE's training throughput on the 2-core CI machine). ``MaskedAdam`` folds
both into the optimiser's own pass over the weights. One C++ loop per weight matrix

1. masks the raw gradient with the step's mask, computed from degree vectors (no mask tensor),
2. applies Adam with L2 weight decay, in the formula of ``torch.optim.Adam``,
3. writes the weight times the *next* step's mask, which the next forward pass uses as it is.

The same source has the kernels of ``made_core.sorted_step``, which train in degree-sorted
coordinates: ``prefix_adam_`` (Adam on each row's staircase prefix) and ``sorted_masked_adam_``
(``masked_adam_`` reading a sorted gradient and writing the next mask's sorted masked weight),
``made_core.model``'s sampler for one hidden layer, ``sample_one_hidden_layer``, its Bernoulli
log-likelihood in one pass, ``bernoulli_rows`` and ``bernoulli_columns_`` (the latter also writes
the loss's gradient for ``made_core.sorted_step``), and ``made_core.blocked``'s network with a slice
of the columns per thread, ``blocked_log_prob``.

The kernels are compiled on first use (``torch.utils.cpp_extension.load_inline``: g++ and ninja,
about 25 s, cached per CPU model because they are built for the CPU they run on, and per torch
and ninja version). Where that
fails, or with ``MADE_FUSED_ADAM=0``, the Trainer uses ``torch.optim.Adam`` and the mask products.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from made_core.allocator import opted_out
from made_core.hyperparameters import MASK_SAMPLING
from made_core.masks import LayerDegrees, make_degrees
from made_core.model import MADE

OPT_OUT_VARIABLE = "MADE_FUSED_ADAM"

_KERNELS_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <tuple>
#include <vector>
#include <cmath>
#include <cstring>

// Row r of a masked weight sees column c when columns[c] < rows[r] + shift (shift 1: >=, 0: >).
static void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.is_contiguous(), name, " must be a contiguous CPU float32 tensor");
}

torch::Tensor masked_weight(torch::Tensor weight, torch::Tensor rows, torch::Tensor columns, double shift) {
  check(weight, "weight"); check(rows, "rows"); check(columns, "columns");
  auto out = torch::empty_like(weight);
  const float* w = weight.data_ptr<float>(); float* o = out.data_ptr<float>();
  const float* row = rows.data_ptr<float>(); const float* col = columns.data_ptr<float>();
  const int64_t n_rows = weight.size(0), n_cols = weight.size(1); const float s = shift;
  at::parallel_for(0, n_rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float limit = row[r] + s; const float* wr = w + r * n_cols; float* orow = o + r * n_cols;
      #pragma omp simd
      for (int64_t c = 0; c < n_cols; ++c) orow[c] = col[c] < limit ? wr[c] : 0.0f;
    }
  });
  return out;
}

struct AdamStep {
  float beta1, beta2, eps, weight_decay, step_size, bias_correction2_sqrt;
  AdamStep(double lr, double b1, double b2, double e, double wd, double step)
      : beta1(b1), beta2(b2), eps(e), weight_decay(wd),
        step_size(lr / (1.0 - std::pow(b1, step))), bias_correction2_sqrt(std::sqrt(1.0 - std::pow(b2, step))) {}
};

void masked_adam_(torch::Tensor param, torch::Tensor grad, torch::Tensor exp_avg, torch::Tensor exp_avg_sq,
                  torch::Tensor rows, torch::Tensor columns, double shift,
                  torch::Tensor next_rows, torch::Tensor next_columns, double next_shift, torch::Tensor next_masked,
                  double lr, double beta1, double beta2, double eps, double weight_decay, double step) {
  for (auto* t : {&param, &grad, &exp_avg, &exp_avg_sq, &rows, &columns, &next_rows, &next_columns, &next_masked}) check(*t, "every argument");
  const AdamStep adam(lr, beta1, beta2, eps, weight_decay, step);
  float* p = param.data_ptr<float>(); const float* g = grad.data_ptr<float>();
  float* m = exp_avg.data_ptr<float>(); float* v = exp_avg_sq.data_ptr<float>(); float* nm = next_masked.data_ptr<float>();
  const float* row = rows.data_ptr<float>(); const float* col = columns.data_ptr<float>();
  const float* next_row = next_rows.data_ptr<float>(); const float* next_col = next_columns.data_ptr<float>();
  const int64_t n_rows = param.size(0), n_cols = param.size(1); const float s = shift, next_s = next_shift;
  at::parallel_for(0, n_rows, 8, [&](int64_t begin, int64_t end) {
    // Local copies no pointer can alias, so that the loop vectorises.
    const float beta1 = adam.beta1, beta2 = adam.beta2, eps = adam.eps, weight_decay = adam.weight_decay;
    const float step_size = adam.step_size, bias_correction2_sqrt = adam.bias_correction2_sqrt;
    for (int64_t r = begin; r < end; ++r) {
      const float limit = row[r] + s, next_limit = next_row[r] + next_s;
      float* pr = p + r * n_cols; const float* gr = g + r * n_cols; float* mr = m + r * n_cols;
      float* vr = v + r * n_cols; float* nr = nm + r * n_cols;
      #pragma omp simd
      for (int64_t c = 0; c < n_cols; ++c) {
        float grad = col[c] < limit ? gr[c] : 0.0f;
        grad += weight_decay * pr[c];
        const float exp_avg_new = mr[c] + (1.0f - beta1) * (grad - mr[c]);
        const float exp_avg_sq_new = beta2 * vr[c] + (1.0f - beta2) * grad * grad;
        mr[c] = exp_avg_new; vr[c] = exp_avg_sq_new;
        const float updated = pr[c] - step_size * exp_avg_new / (std::sqrt(exp_avg_sq_new) / bias_correction2_sqrt + eps);
        pr[c] = updated;
        nr[c] = next_col[c] < next_limit ? updated : 0.0f;
      }
    }
  });
}

// Adam on the first n entries of one row (or of a whole tensor) of a parameter.
static inline void adam_run(float* p, const float* g, float* m, float* v, int64_t n, const AdamStep& adam) {
  // Local copies no pointer can alias, so that the loop vectorises.
  const float beta1 = adam.beta1, beta2 = adam.beta2, eps = adam.eps, weight_decay = adam.weight_decay;
  const float step_size = adam.step_size, bias_correction2_sqrt = adam.bias_correction2_sqrt;
  #pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    const float grad = g[c] + weight_decay * p[c];
    const float exp_avg_new = m[c] + (1.0f - beta1) * (grad - m[c]);
    const float exp_avg_sq_new = beta2 * v[c] + (1.0f - beta2) * grad * grad;
    m[c] = exp_avg_new; v[c] = exp_avg_sq_new;
    p[c] -= step_size * exp_avg_new / (std::sqrt(exp_avg_sq_new) / bias_correction2_sqrt + eps);
  }
}

void adam_(torch::Tensor param, torch::Tensor grad, torch::Tensor exp_avg, torch::Tensor exp_avg_sq,
           double lr, double beta1, double beta2, double eps, double weight_decay, double step) {
  for (auto* t : {&param, &grad, &exp_avg, &exp_avg_sq}) check(*t, "every argument");
  const AdamStep adam(lr, beta1, beta2, eps, weight_decay, step);
  adam_run(param.data_ptr<float>(), grad.data_ptr<float>(), exp_avg.data_ptr<float>(), exp_avg_sq.data_ptr<float>(),
           param.numel(), adam);
}

// Adam on row r's first prefixes[r] entries only, for a weight whose other entries, their
// gradients and their Adam state are all zero (a one-mask MADE in degree-sorted coordinates):
// Adam leaves such entries at zero, so skipping them changes nothing.
void prefix_adam_(torch::Tensor param, torch::Tensor grad, torch::Tensor exp_avg, torch::Tensor exp_avg_sq,
                  torch::Tensor prefixes, double lr, double beta1, double beta2, double eps, double weight_decay, double step) {
  for (auto* t : {&param, &grad, &exp_avg, &exp_avg_sq}) check(*t, "every argument");
  TORCH_CHECK(param.dim() == 2 && prefixes.device().is_cpu() && prefixes.scalar_type() == torch::kLong && prefixes.is_contiguous()
              && prefixes.numel() == param.size(0), "prefixes must be a contiguous CPU int64 tensor with one entry per row");
  const AdamStep adam(lr, beta1, beta2, eps, weight_decay, step);
  float* p = param.data_ptr<float>(); const float* g = grad.data_ptr<float>();
  float* m = exp_avg.data_ptr<float>(); float* v = exp_avg_sq.data_ptr<float>();
  const int64_t* prefix = prefixes.data_ptr<int64_t>();
  const int64_t n_rows = param.size(0), n_cols = param.size(1);
  at::parallel_for(0, n_rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t offset = r * n_cols;
      adam_run(p + offset, g + offset, m + offset, v + offset, std::min(std::max(prefix[r], int64_t(0)), n_cols), adam);
    }
  });
}

// A layer in one mask's degree-sorted coordinates: its row r is sorted row row_pos[r]; sorted
// column j is its column column_order[j], and its column c sorted column col_pos[c]; sorted row s
// sees its first prefixes[s] sorted columns. Positions and orders are int32, for gathers.
struct SortedLayout {
  const int64_t *row_pos, *prefixes; const int32_t *col_pos, *column_order;
  SortedLayout(const torch::Tensor& rows, const torch::Tensor& columns, const torch::Tensor& order, const torch::Tensor& prefix,
               const torch::Tensor& weight) {
    TORCH_CHECK(weight.dim() == 2, "a weight is a matrix");
    const int64_t n_rows = weight.size(0), n_cols = weight.size(1);
    for (auto [t, n, type] : {std::tuple{&rows, n_rows, torch::kLong}, std::tuple{&prefix, n_rows, torch::kLong},
                              std::tuple{&columns, n_cols, torch::kInt}, std::tuple{&order, n_cols, torch::kInt}}) {
      // Their values are the caller's to keep in range (made_core.sorted_step checks them once per
      // layout): a range check here would cost a tenth of the step.
      TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == type && t->is_contiguous() && t->numel() == n,
                  "positions, orders and prefixes must be contiguous CPU tensors matching the weight (rows int64, columns int32)");
    }
    row_pos = rows.data_ptr<int64_t>(); prefixes = prefix.data_ptr<int64_t>();
    col_pos = columns.data_ptr<int32_t>(); column_order = order.data_ptr<int32_t>();
  }
  // Row r's masked values, in sorted order, into sorted row out (n_cols entries).
  inline void write_row(const float* values, float* out, int64_t limit, int64_t n_cols) const {
    #pragma omp simd
    for (int64_t j = 0; j < limit; ++j) out[j] = values[column_order[j]];
    std::fill(out + limit, out + n_cols, 0.0f);
  }
};

// out (sorted coordinates of the layout) = param masked by the layout's staircase.
void sorted_masked_weight(torch::Tensor param, torch::Tensor row_pos, torch::Tensor col_pos, torch::Tensor column_order,
                          torch::Tensor prefixes, torch::Tensor out) {
  check(param, "param"); check(out, "out");
  TORCH_CHECK(out.sizes() == param.sizes(), "out must have the weight's shape");
  const SortedLayout layout(row_pos, col_pos, column_order, prefixes, param);
  const float* p = param.data_ptr<float>(); float* o = out.data_ptr<float>();
  const int64_t n_rows = param.size(0), n_cols = param.size(1);
  at::parallel_for(0, n_rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t s = layout.row_pos[r];
      layout.write_row(p + r * n_cols, o + s * n_cols, layout.prefixes[s], n_cols);
    }
  });
}

// MaskedAdam's step for a weight whose gradient is in the sorted coordinates of this step's mask
// (entries right of its staircase are not read), writing the next step's masked weight in the
// sorted coordinates of the next step's mask.
void sorted_masked_adam_(torch::Tensor param, torch::Tensor sorted_grad, torch::Tensor exp_avg, torch::Tensor exp_avg_sq,
                         torch::Tensor row_pos, torch::Tensor col_pos, torch::Tensor column_order, torch::Tensor prefixes,
                         torch::Tensor next_row_pos, torch::Tensor next_col_pos, torch::Tensor next_column_order,
                         torch::Tensor next_prefixes, torch::Tensor next_sorted,
                         double lr, double beta1, double beta2, double eps, double weight_decay, double step) {
  for (auto* t : {&param, &sorted_grad, &exp_avg, &exp_avg_sq, &next_sorted}) check(*t, "every tensor argument");
  TORCH_CHECK(sorted_grad.sizes() == param.sizes() && next_sorted.sizes() == param.sizes() && exp_avg.sizes() == param.sizes()
              && exp_avg_sq.sizes() == param.sizes(), "gradient, state and next weight must have the weight's shape");
  const SortedLayout now(row_pos, col_pos, column_order, prefixes, param);
  const SortedLayout next(next_row_pos, next_col_pos, next_column_order, next_prefixes, param);
  const AdamStep adam(lr, beta1, beta2, eps, weight_decay, step);
  float* p = param.data_ptr<float>(); const float* g = sorted_grad.data_ptr<float>();
  float* m = exp_avg.data_ptr<float>(); float* v = exp_avg_sq.data_ptr<float>(); float* nm = next_sorted.data_ptr<float>();
  const int64_t n_rows = param.size(0), n_cols = param.size(1);
  at::parallel_for(0, n_rows, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> grad_row(n_cols);  // row r's masked gradient in its own column order
    float* gr = grad_row.data();
    for (int64_t r = begin; r < end; ++r) {
      const int64_t s = now.row_pos[r], limit = now.prefixes[s]; const float* gs = g + s * n_cols;
      const int32_t* col_pos = now.col_pos;
      #pragma omp simd
      for (int64_t c = 0; c < n_cols; ++c) { const int32_t sc = col_pos[c]; gr[c] = sc < limit ? gs[sc] : 0.0f; }
      adam_run(p + r * n_cols, gr, m + r * n_cols, v + r * n_cols, n_cols, adam);
      const int64_t next_s = next.row_pos[r];
      next.write_row(p + r * n_cols, nm + next_s * n_cols, next.prefixes[next_s], n_cols);
    }
  });
}

// log p(x | logits) of 0/1 inputs, sum over dimensions of x l - softplus(l), in one pass.
// softplus(l) = max(l, 0) + log(1 + exp(-|l|)): exp is a polynomial the compiler vectorises (libm's
// is a scalar call here), and one log per 16 dimensions takes the product of their factors
// 1 + exp(-|l|) in (1, 2], below 2^16. Sums of 16 terms in scalar_t, totals in double.
static inline float exp_nonpositive(float t) {  // exp(t) for t <= 0, Cephes' expf polynomial
  t = t < -87.0f ? -87.0f : t;
  const float n = std::floor(t * 1.44269504088896341f + 0.5f);
  float r = t - n * 0.693359375f;
  r -= n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f; p = p * r + 8.3334519073e-3f; p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f; p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale; std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
static inline double exp_nonpositive(double t) { return std::exp(t); }
static inline float log_positive(float x) {  // log(x) for normal x > 0, Cephes' logf polynomial
  int32_t bits; std::memcpy(&bits, &x, sizeof bits);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  bits = (bits & 0x807fffff) | 0x3f000000;  // x = m 2^e, m in [0.5, 1)
  float m; std::memcpy(&m, &bits, sizeof m);
  const bool low = m < 0.707106781186547524f;
  m = low ? m + m - 1.0f : m - 1.0f;
  e = low ? e - 1.0f : e;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f; y = y * m + 1.1676998740e-1f; y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f; y = y * m - 1.6668057665e-1f; y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f; y = y * m + 3.3333331174e-1f;
  y = y * m * z + e * -2.12194440e-4f - 0.5f * z;
  return m + y + e * 0.693359375f;
}
static inline double log_positive(double x) { return std::log(x); }

constexpr int64_t TILE = 64, CHUNK = 16;  // columns a tile, dimensions a log

// One tile of at most TILE columns b0.. of bernoulli_columns_.
template <typename scalar_t>
static void bernoulli_tile(scalar_t* l_ptr, const scalar_t* x_ptr, scalar_t* out, int64_t D, int64_t B, int64_t b0, int64_t width,
                           scalar_t scale, bool write) {
  double total[TILE]; scalar_t sum[TILE], product[TILE];
  for (int64_t j = 0; j < TILE; ++j) { total[j] = 0; sum[j] = 0; product[j] = 1; }
  for (int64_t d = 0; d < D; ++d) {
    scalar_t* l = l_ptr + d * B + b0; const scalar_t* xv = x_ptr + d * B + b0;
    #pragma omp simd
    for (int64_t j = 0; j < width; ++j) {
      const scalar_t v = l[j], magnitude = v < 0 ? -v : v, e = exp_nonpositive(-magnitude), factor = 1 + e;
      sum[j] += v * (xv[j] - scalar_t(0.5)) - scalar_t(0.5) * magnitude;  // x l - max(l, 0)
      product[j] *= factor;
      if (write) l[j] = ((v >= 0 ? scalar_t(1) : e) / factor - xv[j]) * scale;
    }
    if ((d + 1) % CHUNK == 0 || d + 1 == D) {
      #pragma omp simd
      for (int64_t j = 0; j < width; ++j) {
        total[j] += static_cast<double>(sum[j] - log_positive(product[j]));
        sum[j] = 0; product[j] = 1;
      }
    }
  }
  for (int64_t j = 0; j < width; ++j) out[b0 + j] = static_cast<scalar_t>(total[j]);
}

// logits and x (D, B), contiguous: returns (B,) log-likelihoods; with grad_scale != 0, also
// overwrites logits with grad_scale * (sigmoid(l) - x), d(-log p)/dl scaled (a loss's gradient).
torch::Tensor bernoulli_columns_(torch::Tensor logits, torch::Tensor x, double grad_scale) {
  TORCH_CHECK(logits.dim() == 2 && logits.sizes() == x.sizes(), "logits and x must be (D, B) of one shape");
  TORCH_CHECK(logits.device().is_cpu() && logits.is_contiguous() && x.is_contiguous() && x.scalar_type() == logits.scalar_type(),
              "logits and x must be contiguous CPU tensors of one dtype");
  const int64_t D = logits.size(0), B = logits.size(1);
  auto out = torch::empty({B}, logits.options());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "bernoulli_columns_", [&] {
    scalar_t* l_ptr = logits.data_ptr<scalar_t>(); const scalar_t* x_ptr = x.data_ptr<scalar_t>(); scalar_t* o_ptr = out.data_ptr<scalar_t>();
    // About 32k elements a task: below that a thread costs more than it saves.
    at::parallel_for(0, (B + TILE - 1) / TILE, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, D * TILE)), [&](int64_t begin, int64_t end) {
      for (int64_t tile = begin; tile < end; ++tile)
        bernoulli_tile<scalar_t>(l_ptr, x_ptr, o_ptr, D, B, tile * TILE, std::min(TILE, B - tile * TILE), static_cast<scalar_t>(grad_scale), grad_scale != 0.0);
    });
  });
  return out;
}

// The same for logits and x (B, D), contiguous: (B,) log-likelihoods, a row per task, the row's
// dimensions in LANES interleaved partial sums.
template <typename scalar_t>
static double bernoulli_row(const scalar_t* l, const scalar_t* x, int64_t D) {
  constexpr int64_t LANES = 16;
  double total = 0; scalar_t sum[LANES], product[LANES];
  for (int64_t j = 0; j < LANES; ++j) { sum[j] = 0; product[j] = 1; }
  for (int64_t d0 = 0, steps = 1; d0 < D; d0 += LANES, ++steps) {
    const int64_t width = std::min(LANES, D - d0);
    #pragma omp simd
    for (int64_t j = 0; j < width; ++j) {
      const scalar_t v = l[d0 + j], magnitude = v < 0 ? -v : v;
      sum[j] += v * (x[d0 + j] - scalar_t(0.5)) - scalar_t(0.5) * magnitude;
      product[j] *= 1 + exp_nonpositive(-magnitude);
    }
    if (steps % CHUNK == 0 || d0 + LANES >= D) {
      #pragma omp simd reduction(+:total)
      for (int64_t j = 0; j < LANES; ++j) { total += static_cast<double>(sum[j] - log_positive(product[j])); sum[j] = 0; product[j] = 1; }
    }
  }
  return total;
}

torch::Tensor bernoulli_rows(torch::Tensor logits, torch::Tensor x) {
  TORCH_CHECK(logits.dim() == 2 && logits.sizes() == x.sizes(), "logits and x must be (B, D) of one shape");
  TORCH_CHECK(logits.device().is_cpu() && logits.is_contiguous() && x.is_contiguous() && x.scalar_type() == logits.scalar_type(),
              "logits and x must be contiguous CPU tensors of one dtype");
  const int64_t B = logits.size(0), D = logits.size(1);
  auto out = torch::empty({B}, logits.options());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "bernoulli_rows", [&] {
    const scalar_t* l_ptr = logits.data_ptr<scalar_t>(); const scalar_t* x_ptr = x.data_ptr<scalar_t>(); scalar_t* o_ptr = out.data_ptr<scalar_t>();
    at::parallel_for(0, B, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, D)), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) o_ptr[b] = static_cast<scalar_t>(bernoulli_row<scalar_t>(l_ptr + b * D, x_ptr + b * D, D));
    });
  });
  return out;
}

// made_core.blocked's network on the columns (D, N) of N rows: each thread takes a slice of the
// columns through every layer with single-threaded matmuls (ATen runs ops inside a parallel region
// on one thread), so the narrow blocks' matmuls do not split across threads, and the activations
// stay in that thread's cache. Layers: the hidden ones, the output, then the direct one if any;
// layer i's block b writes rows starts[i][b]..starts[i][b + 1] from its first widths[i][b] inputs
// with block_weights[i][b] and biases[i] (empty: none). Returns (N,) log p(x).
template <typename scalar_t>
static void blocked_slice(const torch::Tensor& columns, const torch::Tensor& order, const std::vector<std::vector<torch::Tensor>>& block_weights,
                          const std::vector<torch::Tensor>& biases, const std::vector<std::vector<int64_t>>& starts,
                          const std::vector<std::vector<int64_t>>& widths, int64_t depth, bool has_direct, bool relu,
                          torch::Tensor& out, int64_t c0, int64_t n) {
  const auto x = columns.narrow(1, c0, n).index_select(0, order);  // (D, n), inputs in the mask's ordering
  auto apply = [&](size_t layer, const torch::Tensor& inputs, torch::Tensor& target, bool accumulate) {
    const auto& bias = biases[layer];
    for (size_t b = 0; b + 1 < starts[layer].size(); ++b) {
      const int64_t start = starts[layer][b], rows = starts[layer][b + 1] - start, width = widths[layer][b];
      auto part = target.narrow(0, start, rows);
      if (accumulate) { if (width) part.addmm_(block_weights[layer][b], inputs.narrow(0, 0, width)); }
      else if (width == 0) { if (bias.numel()) part.copy_(bias.narrow(0, start, rows).unsqueeze(1).expand_as(part)); else part.zero_(); }
      else if (bias.numel()) at::addmm_out(part, bias.narrow(0, start, rows).unsqueeze(1), block_weights[layer][b], inputs.narrow(0, 0, width));
      else at::mm_out(part, block_weights[layer][b], inputs.narrow(0, 0, width));
    }
  };
  torch::Tensor hidden = x;
  for (int64_t layer = 0; layer < depth; ++layer) {
    auto next = at::empty({starts[layer].back(), n}, x.options());
    apply(layer, hidden, next, false);
    if (relu) next.relu_(); else next.tanh_();
    hidden = next;
  }
  auto logits = at::empty({x.size(0), n}, x.options());
  apply(depth, hidden, logits, false);
  if (has_direct) apply(depth + 1, x, logits, true);
  for (int64_t t0 = 0; t0 < n; t0 += TILE)
    bernoulli_tile<scalar_t>(logits.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>() + c0, x.size(0), n, t0, std::min(TILE, n - t0), scalar_t(0), false);
}

torch::Tensor blocked_log_prob(torch::Tensor columns, torch::Tensor order, std::vector<std::vector<torch::Tensor>> block_weights,
                               std::vector<torch::Tensor> biases, std::vector<std::vector<int64_t>> starts, std::vector<std::vector<int64_t>> widths,
                               int64_t depth, bool has_direct, bool relu) {
  const size_t layers = static_cast<size_t>(depth + 1 + (has_direct ? 1 : 0));
  TORCH_CHECK(columns.dim() == 2 && columns.device().is_cpu(), "columns must be a (D, N) CPU tensor");
  TORCH_CHECK(block_weights.size() == layers && biases.size() == layers && starts.size() == layers && widths.size() == layers,
              "one entry per layer: the hidden ones, the output and the direct one");
  TORCH_CHECK(order.scalar_type() == torch::kLong && order.numel() == columns.size(0), "order must hold D int64 indices");
  const int64_t N = columns.size(1);
  auto out = at::empty({N}, columns.options());
  // Slices of at most 512 columns, at least one per thread.
  const int64_t slices = std::max<int64_t>(at::get_num_threads(), (N + 511) / 512);
  AT_DISPATCH_FLOATING_TYPES(columns.scalar_type(), "blocked_log_prob", [&] {
    at::parallel_for(0, slices, 1, [&](int64_t begin, int64_t end) {
      for (int64_t slice = begin; slice < end; ++slice) {
        const int64_t c0 = N * slice / slices, c1 = N * (slice + 1) / slices;
        if (c1 > c0) blocked_slice<scalar_t>(columns, order, block_weights, biases, starts, widths, depth, has_direct, relu, out, c0, c1 - c0);
      }
    });
  });
  return out;
}

// Samples of a one-hidden-layer MADE, one row per task: the row's hidden pre-activations start at
// the bias, and setting input d to 1 adds column d of the masked hidden weight, so all D
// dimensions cost about one forward pass. thresholds (n, D): logit(u) by ordering position;
// input_columns (D, H): the masked hidden weight's transpose; output_weight (D, H) and direct
// (D, D, or empty) masked. x_d = 1 where threshold < logit_d, as in MADE.sample_by_passes.
template <typename scalar_t>
static void sample_rows(const scalar_t* thresholds, const int64_t* order, const scalar_t* input_columns, const scalar_t* hidden_bias,
                        const scalar_t* output_weight, const scalar_t* output_bias, const scalar_t* direct, bool relu,
                        scalar_t* x, int64_t begin, int64_t end, int64_t D, int64_t H) {
  std::vector<scalar_t> pre(H), hidden(H);
  auto activate = [&]() {
    if (relu) { for (int64_t h = 0; h < H; ++h) hidden[h] = pre[h] > 0 ? pre[h] : scalar_t(0); }
    else { for (int64_t h = 0; h < H; ++h) hidden[h] = std::tanh(pre[h]); }
  };
  for (int64_t i = begin; i < end; ++i) {
    std::copy(hidden_bias, hidden_bias + H, pre.begin());
    activate();
    scalar_t* xi = x + i * D; const scalar_t* ti = thresholds + i * D;
    for (int64_t k = 0; k < D; ++k) {
      const int64_t d = order[k]; const scalar_t* w = output_weight + d * H; const scalar_t* hv = hidden.data();
      scalar_t logit = output_bias[d];
      scalar_t acc = 0;
      #pragma omp simd reduction(+:acc)
      for (int64_t h = 0; h < H; ++h) acc += hv[h] * w[h];
      logit += acc;
      if (direct != nullptr) {
        const scalar_t* wd = direct + d * D; scalar_t direct_acc = 0;
        #pragma omp simd reduction(+:direct_acc)
        for (int64_t j = 0; j < D; ++j) direct_acc += xi[j] * wd[j];
        logit += direct_acc;
      }
      if (ti[k] < logit) {
        xi[d] = 1;
        const scalar_t* column = input_columns + d * H; scalar_t* pv = pre.data();
        #pragma omp simd
        for (int64_t h = 0; h < H; ++h) pv[h] += column[h];
        activate();
      }
    }
  }
}

torch::Tensor sample_one_hidden_layer(torch::Tensor thresholds, torch::Tensor order, torch::Tensor input_columns, torch::Tensor hidden_bias,
                                      torch::Tensor output_weight, torch::Tensor output_bias, torch::Tensor direct, bool relu) {
  const int64_t n = thresholds.size(0), D = thresholds.size(1), H = input_columns.size(1);
  TORCH_CHECK(thresholds.dim() == 2 && input_columns.sizes() == torch::IntArrayRef({D, H}) && output_weight.sizes() == torch::IntArrayRef({D, H})
              && hidden_bias.numel() == H && output_bias.numel() == D && order.numel() == D
              && (direct.numel() == 0 || direct.sizes() == torch::IntArrayRef({D, D})), "sampler arguments of mismatched shapes");
  for (auto* t : {&thresholds, &input_columns, &hidden_bias, &output_weight, &output_bias, &direct})
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == thresholds.scalar_type(), "sampler tensors must be contiguous CPU tensors of one dtype");
  TORCH_CHECK(order.device().is_cpu() && order.scalar_type() == torch::kLong && order.is_contiguous(), "order must be a contiguous CPU int64 tensor");
  const int64_t* ord = order.data_ptr<int64_t>();
  std::vector<char> seen(D, 0);
  for (int64_t k = 0; k < D; ++k) { TORCH_CHECK(ord[k] >= 0 && ord[k] < D && !seen[ord[k]], "order must be a permutation"); seen[ord[k]] = 1; }
  auto x = torch::zeros({n, D}, thresholds.options());
  AT_DISPATCH_FLOATING_TYPES(thresholds.scalar_type(), "sample_one_hidden_layer", [&] {
    const scalar_t* direct_ptr = direct.numel() ? direct.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      sample_rows<scalar_t>(thresholds.data_ptr<scalar_t>(), ord, input_columns.data_ptr<scalar_t>(), hidden_bias.data_ptr<scalar_t>(),
                            output_weight.data_ptr<scalar_t>(), output_bias.data_ptr<scalar_t>(), direct_ptr, relu,
                            x.data_ptr<scalar_t>(), begin, end, D, H);
    });
  });
  return x;
}
"""

# -fno-math-errno lets the compiler vectorise sqrt (without it the loop runs scalar, slower
# than torch's path); -march=native builds for this CPU, hence one build per CPU model.
_COMPILER_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
_kernels: Any = None
_load_error: str | None = None


def _build_key(ninja_version: str) -> str:
    """A short hash of what a build is for: this CPU's model and flags (the kernels are built for
    them), the source, the flags, torch's version and the ninja that builds them."""
    description = platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            description += "".join(line for line in cpuinfo if line.startswith(("model name", "flags")))
    except OSError:
        pass
    described = description + _KERNELS_SOURCE + " ".join(_COMPILER_FLAGS) + torch.__version__ + ninja_version
    return hashlib.sha256(described.encode()).hexdigest()[:12]


def _put_ninja_on_path() -> str:
    """Put the ninja package's own binary first on PATH (torch builds with the ``ninja`` there);
    returns its version, or "" without the package (torch then uses any ninja on PATH).

    The package's ninja, not whichever PATH finds first, so that every process of an environment
    builds with the same one: an activated virtualenv or not, a Ray worker. Ninja versions hash a
    build's commands differently (1.11 and 1.13 do), so processes with two ninjas rebuilt the
    cached kernels for each other, 30-45 s each time, inside the first trial of a sweep.
    """
    try:
        import ninja
    except ImportError:
        return ""
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != ninja.BIN_DIR:
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path
    return str(getattr(ninja, "__version__", ""))


STALE_BUILD_LOCK_SECONDS = 300.0
"""A build takes 25-70 s: a build folder's lock file older than this was left by a build that was
killed (torch removes it only when its build ends), and torch would wait on it for ever."""


def clear_stale_build_lock(build_directory: Path, stale_after: float = STALE_BUILD_LOCK_SECONDS) -> None:
    """Wait while another process builds in ``build_directory`` (its ``lock`` file exists); once
    that lock is older than ``stale_after`` seconds, delete the folder, half-built files and all,
    with a warning, so that the next build starts clean."""
    lock = build_directory / "lock"
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        if age > stale_after:
            warnings.warn(
                f"made_core.fused_adam: {lock} is {age:.0f} s old, left by a kernel build that was killed; "
                "deleting that build folder and building again",
                stacklevel=3,
            )
            shutil.rmtree(build_directory, ignore_errors=True)
            return
        time.sleep(0.5)


def kernel_build_directory(name: str) -> Path:
    """Our own folder for build ``name`` under torch's extension root ($TORCH_EXTENSIONS_DIR, as
    torch's own builds read it, else torch's default), so that a stale lock in it can be found."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / "made_core" / name


def load_kernels() -> Any:
    """The compiled kernels, built on first use; None (after one warning) when they cannot be built."""
    global _kernels, _load_error
    if _kernels is None and _load_error is None:
        try:
            from torch.utils.cpp_extension import load_inline

            ninja_version = _put_ninja_on_path()
            name = f"made_fused_adam_{_build_key(ninja_version)}"
            build_directory = kernel_build_directory(name)
            clear_stale_build_lock(build_directory)
            build_directory.mkdir(parents=True, exist_ok=True)
            _kernels = load_inline(
                name, cpp_sources=_KERNELS_SOURCE, build_directory=str(build_directory),
                functions=["masked_weight", "masked_adam_", "adam_", "prefix_adam_", "sorted_masked_weight", "sorted_masked_adam_", "sample_one_hidden_layer", "bernoulli_columns_", "bernoulli_rows", "blocked_log_prob"], extra_cflags=_COMPILER_FLAGS, verbose=False,
            )  # fmt: skip
        except Exception as error:  # no compiler, no ninja, an unsupported platform, ...
            _load_error = f"{type(error).__name__}: {error}"
            warnings.warn(
                f"made_core.fused_adam: the fused masked-Adam kernels could not be built ({_load_error}); "
                "training uses torch.optim.Adam and the weight x mask products instead",
                stacklevel=2,
            )
    return _kernels


def enabled_kernels() -> Any:
    """The compiled kernels for code that can do without them: None with ``MADE_FUSED_ADAM=0``
    or where they cannot be built."""
    return None if opted_out(OPT_OUT_VARIABLE) else load_kernels()


def masked_adam_applies(model: MADE, device: torch.device, grad_clip: float | None) -> bool:
    """Whether ``MaskedAdam`` can train ``model``: several masks (or mask sampling), float32 on the
    CPU, no gradient clipping (its norm needs the masked gradients), not opted out, kernels built."""
    if model.num_masks == 1 or device.type != "cpu" or grad_clip is not None:
        return False
    if any(parameter.dtype != torch.float32 for parameter in model.parameters()):
        return False
    return enabled_kernels() is not None


def kernel_adam_reproduces(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` is a ``torch.optim.Adam`` that the kernels' Adam reproduces (L2 weight
    decay; no AMSGrad, maximize, capturable or differentiable mode) over float32 CPU parameters,
    with the kernels built."""
    if type(optimizer) is not torch.optim.Adam:
        return False
    for group in optimizer.param_groups:
        if group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]:
            return False
        if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in group["params"]):
            return False
        if torch.is_tensor(group["lr"]):
            return False
    return enabled_kernels() is not None


AdamUpdate = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[float, ...]]


def adam_updates(optimizer: torch.optim.Optimizer) -> Iterator[AdamUpdate]:
    """For each parameter of ``optimizer`` with a gradient: (parameter, contiguous gradient,
    exp_avg, exp_avg_sq, (lr, beta1, beta2, eps, weight_decay, step)) for one Adam update by the
    kernels, its state counted one step on; the state has ``torch.optim.Adam``'s layout, made
    on first use as torch makes it, so that either can carry on from the other."""
    for group in optimizer.param_groups:
        beta1, beta2 = group["betas"]
        for param in group["params"]:
            if param.grad is None:
                continue
            state = optimizer.state[param]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["step"] += 1
            hyper = (group["lr"], beta1, beta2, group["eps"], group["weight_decay"], float(state["step"]))
            yield param, param.grad.contiguous(), state["exp_avg"], state["exp_avg_sq"], hyper


_Degrees = tuple[tuple[torch.Tensor, torch.Tensor, float], ...]  # per masked layer: rows, columns, shift


class MaskedAdam(torch.optim.Optimizer):
    """Adam (L2 weight decay, as ``torch.optim.Adam``) for a MADE with several masks, fused with
    its mask products; see the module docstring. Its state has ``torch.optim.Adam``'s layout.

    A step (``made_core.steps.FusedAdamStep``) is a forward pass with
    ``optimizer.masked_weights_for(step)``, a loss, ``backward()``, then ``optimizer.step()``. The
    masked weights prepared by a step are used by the next one only if nothing else has written
    the weights since (``tensor._version``).
    """

    def __init__(
        self,
        model: MADE,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if model.num_masks == 1:
            raise ValueError("MaskedAdam is for models with several masks; a fixed-mask model trains without mask products")
        kernels = load_kernels()
        if kernels is None:
            raise RuntimeError(f"the fused masked-Adam kernels are unavailable ({_load_error})")
        super().__init__(model.parameters(), {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.model, self._kernels = model, kernels
        self._layer_of = {id(layer.weight): i for i, layer in enumerate(model.masked_layers())}
        self._degree_cache: dict[int, _Degrees] = {}
        self._current: tuple[int, _Degrees] | None = None  # the step whose masks the last forward used
        self._prepared: tuple[int, tuple[torch.Tensor, ...], tuple[int, ...]] | None = None  # (step, masked weights, versions)

    def _degrees(self, step: int) -> _Degrees:
        model, mask_index = self.model, self.model.training_mask_index(step)
        cached = self._degree_cache.get(mask_index)
        if cached is None:
            layers: Iterable[LayerDegrees] = make_degrees(
                model.input_dim, model.hidden_sizes, model.ordering, model.seed, mask_index, model.direct_connection
            )
            cached = tuple((layer.rows.float(), layer.columns.float(), float(layer.shift)) for layer in layers)
            if model.num_masks != MASK_SAMPLING:  # sampled masks are used once
                self._degree_cache[mask_index] = cached
        return cached

    def _masked_weights(self, step: int, degrees: _Degrees) -> tuple[torch.Tensor, ...]:
        weights = [layer.weight for layer in self.model.masked_layers()]
        prepared = self._prepared
        if prepared is not None and prepared[0] == step and prepared[2] == tuple(w._version for w in weights):
            return prepared[1]
        with torch.no_grad():
            return tuple(self._kernels.masked_weight(w, *layer) for w, layer in zip(weights, degrees))

    def masked_weights_for(self, step: int) -> tuple[torch.Tensor, ...]:
        """The masked weights of training step ``step``, in ``masked_layers()`` order, for the
        forward pass (``made_core.steps.FusedAdamStep``); the step's gradients reach the raw
        weights unmasked, and ``step()`` masks them."""
        degrees = self._degrees(step)
        self._current = (step, degrees)
        return self._masked_weights(step, degrees)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("MaskedAdam does not take a closure")
        if self._current is None:
            raise RuntimeError("MaskedAdam.step() needs a forward pass with masked_weights_for() first")
        step_index, degrees = self._current
        next_degrees = self._degrees(step_index + 1)
        layers = self.model.masked_layers()
        next_masked: list[torch.Tensor | None] = [None] * len(layers)
        for param, grad, exp_avg, exp_avg_sq, hyper in adam_updates(self):
            layer = self._layer_of.get(id(param))
            if layer is None:
                self._kernels.adam_(param, grad, exp_avg, exp_avg_sq, *hyper)
            else:
                masked = torch.empty_like(param)
                self._kernels.masked_adam_(
                    param, grad, exp_avg, exp_avg_sq, *degrees[layer], *next_degrees[layer], masked, *hyper
                )
                next_masked[layer] = masked
        self._current = None
        if all(masked is not None for masked in next_masked):
            versions = tuple(layer.weight._version for layer in layers)
            self._prepared = (step_index + 1, tuple(next_masked), versions)  # type: ignore[arg-type]
        else:
            self._prepared = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._current = self._prepared = None
