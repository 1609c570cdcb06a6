// CPU backend of the fused residual-cell ops: planes (image, channel) in
// parallel (at::parallel_for), each handled by a routine of
// csrc/core/cell_fusion.h. Per-plane reductions are returned as [N, C]
// tensors; the Python side sums them over the batch.
//
// Channels-last (NHWC) activations, taken by every op but the depthwise conv,
// run images in parallel instead: a plane's values are C apart there, so each
// image is one call of a *_channels routine that vectorises over channels.
// (oneDNN's 3x3 convs are much faster on NHWC: the encoder cell stays NHWC.)
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../../../core/cell_fusion.h"
#include "../cell_fusion.h"

namespace ncpfast {
namespace ops {
namespace {

// Enough planes per task that each does ~16k element reads.
int64_t plane_grain(const at::Tensor& x) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, x.size(2) * x.size(3)));
}

// Enough images per task that each does ~16k element reads.
int64_t image_grain(const at::Tensor& x) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, x.size(1) * x.size(2) * x.size(3)));
}

// Runs f(n, red1, red2) for every image n of a channels_last x in parallel;
// red1 and red2 are double workspaces of C values (the image's reductions).
// f must be NCPFAST_ALWAYS_INLINE, to be compiled for each target of the clones.
template <typename F>
void for_each_image(const at::Tensor& x, const F& f) {
  const int64_t C = x.size(1);
  at::parallel_for(0, x.size(0), image_grain(x), [&](int64_t begin, int64_t end) {
    std::vector<double> work(2 * C);
    core::for_each_plane(begin, end, [&](int64_t n) NCPFAST_ALWAYS_INLINE { f(n, work.data(), work.data() + C); });
  });
}

template <typename T>
void store_channels(const double* from, int64_t C, T* to) {
  for (int64_t c = 0; c < C; ++c) to[c] = static_cast<T>(from[c]);
}

std::tuple<at::Tensor, at::Tensor> plane_moments_cpu(const at::Tensor& x) {
  const auto acc = check_activation("plane_moments", "x", x);
  at::Tensor sum = plane_tensor(x, acc), sumsq = plane_tensor(x, acc);
  const int64_t HW = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "plane_moments_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* sp = sum.data_ptr<scalar_t>();
    scalar_t* qp = sumsq.data_ptr<scalar_t>();
    if (is_channels_last(x)) {
      const int64_t C = x.size(1);
      return for_each_image(x, [&](int64_t n, double* s, double* q) NCPFAST_ALWAYS_INLINE {
        core::channel_moments(xp + n * HW * C, HW, C, s, q);
        store_channels(s, C, sp + n * C);
        store_channels(q, C, qp + n * C);
      });
    }
    at::parallel_for(0, x.size(0) * x.size(1), plane_grain(x), [&](int64_t begin, int64_t end) {
      core::for_each_plane(begin, end, [&](int64_t p) NCPFAST_ALWAYS_INLINE {
        double s, q;
        core::plane_moments(xp + p * HW, HW, s, q);
        sp[p] = static_cast<scalar_t>(s);
        qp[p] = static_cast<scalar_t>(q);
      });
    });
  });
  return {sum, sumsq};
}

at::Tensor plane_moments_backward_cpu(const at::Tensor& x, const at::Tensor& grad_sum, const at::Tensor& grad_sumsq) {
  check_plane_moments_backward("plane_moments_backward", x, grad_sum, grad_sumsq);
  at::Tensor grad_x = at::empty_like(x);
  const int64_t HW = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "plane_moments_backward_cpu", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *gs = grad_sum.data_ptr<scalar_t>(),
                   *gq = grad_sumsq.data_ptr<scalar_t>();
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    if (is_channels_last(x)) {
      const int64_t C = x.size(1);
      return for_each_image(x, [&](int64_t n, double*, double*) NCPFAST_ALWAYS_INLINE {
        core::channel_moments_backward(xp + n * HW * C, HW, C, gs + n * C, gq + n * C, gx + n * HW * C);
      });
    }
    at::parallel_for(0, x.size(0) * x.size(1), plane_grain(x), [&](int64_t begin, int64_t end) {
      core::for_each_plane(begin, end, [&](int64_t p) NCPFAST_ALWAYS_INLINE {
        core::plane_moments_backward_plane(xp + p * HW, HW, gs[p], gq[p], gx + p * HW);
      });
    });
  });
  return grad_x;
}

at::Tensor bn_swish_given_stats_cpu(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                                    const at::Tensor& weight, const at::Tensor& bias) {
  check_bn_swish_given_stats("bn_swish_given_stats", x, mean, invstd, weight, bias);
  auto [scale, shift] = folded_affine(mean, invstd, weight, bias);
  at::Tensor y = at::empty_like(x);
  const int64_t C = x.size(1), HW = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bn_swish_given_stats_cpu", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *sc = scale.data_ptr<scalar_t>(), *sh = shift.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    if (is_channels_last(x)) {
      return for_each_image(x, [&](int64_t n, double*, double*) NCPFAST_ALWAYS_INLINE {
        core::bn_swish_channels(xp + n * HW * C, HW, C, sc, sh, yp + n * HW * C);
      });
    }
    at::parallel_for(0, x.size(0) * C, plane_grain(x), [&](int64_t begin, int64_t end) {
      core::for_each_plane(begin, end, [&](int64_t p) NCPFAST_ALWAYS_INLINE {
        core::bn_swish_plane(xp + p * HW, HW, sc[p % C], sh[p % C], yp + p * HW);
      });
    });
  });
  return y;
}

// The pass of bn_swish_given_stats_backward over (grad_out, x) with the BN folded into
// (scale, shift): the per-plane sums into sum_g and sum_gc and, with
// kWriteGrad, grad_x = g_u * scale (see core::bn_swish_backward_plane).
template <bool kWriteGrad>
void bn_swish_backward_pass(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& scale,
                            const at::Tensor& shift, const at::Tensor& mean, at::Tensor& grad_x, at::Tensor& sum_g,
                            at::Tensor& sum_gc) {
  const int64_t C = x.size(1), HW = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bn_swish_given_stats_backward_cpu", [&] {
    const scalar_t *gp = grad_out.data_ptr<scalar_t>(), *xp = x.data_ptr<scalar_t>(), *sc = scale.data_ptr<scalar_t>(),
                   *sh = shift.data_ptr<scalar_t>(), *mp = mean.data_ptr<scalar_t>();
    scalar_t *gx = grad_x.data_ptr<scalar_t>(), *s1 = sum_g.data_ptr<scalar_t>(), *s2 = sum_gc.data_ptr<scalar_t>();
    if (is_channels_last(x)) {
      return for_each_image(x, [&](int64_t n, double* a, double* b) NCPFAST_ALWAYS_INLINE {
        const int64_t o = n * HW * C;
        core::bn_swish_backward_channels<kWriteGrad>(gp + o, xp + o, HW, C, sc, sh, mp, gx + o, a, b);
        store_channels(a, C, s1 + n * C);
        store_channels(b, C, s2 + n * C);
      });
    }
    at::parallel_for(0, x.size(0) * C, plane_grain(x), [&](int64_t begin, int64_t end) {
      core::for_each_plane(begin, end, [&](int64_t p) NCPFAST_ALWAYS_INLINE {
        double a, b;
        const int64_t c = p % C;
        core::bn_swish_backward_plane<kWriteGrad>(gp + p * HW, xp + p * HW, HW, sc[c], sh[c], mp[c], gx + p * HW, a, b);
        s1[p] = static_cast<scalar_t>(a);
        s2[p] = static_cast<scalar_t>(b);
      });
    });
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_swish_given_stats_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
    const at::Tensor& weight, const at::Tensor& bias) {
  const auto acc =
      check_bn_swish_given_stats_backward("bn_swish_given_stats_backward", grad_out, x, mean, invstd, weight, bias);
  auto [scale, shift] = folded_affine(mean, invstd, weight, bias);
  at::Tensor grad_x = at::empty_like(x), sum_g = plane_tensor(x, acc), sum_gc = plane_tensor(x, acc);
  bn_swish_backward_pass<true>(grad_out, x, scale, shift, mean, grad_x, sum_g, sum_gc);
  return {grad_x, sum_g, sum_gc};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_swish_batch_stats_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                                        const at::Tensor& bias, double eps) {
  return bn_swish_batch_stats_with(x, weight, bias, eps, &plane_moments_cpu, &bn_swish_given_stats_cpu);
}

// Two passes over (grad_y, x) (see bn_swish_grad_apply_plane): reads 4 and
// writes 1 full-size tensor, where bn_swish_given_stats_backward followed by an in-place
// add of the statistics' share would read 4 and write 2.
std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_swish_batch_stats_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
    const at::Tensor& weight, const at::Tensor& bias) {
  const auto acc =
      check_bn_swish_given_stats_backward("bn_swish_batch_stats_backward", grad_y, x, mean, invstd, weight, bias);
  auto [scale, shift] = folded_affine(mean, invstd, weight, bias);
  at::Tensor grad_x = at::empty_like(x), sum_g = plane_tensor(x, acc), sum_gc = plane_tensor(x, acc);
  bn_swish_backward_pass<false>(grad_y, x, scale, shift, mean, grad_x, sum_g, sum_gc);  // the sums only
  const int64_t C = x.size(1), HW = x.size(2) * x.size(3);
  const BatchNormGradients g = batch_norm_gradients(x, sum_g, sum_gc, mean, invstd, weight);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bn_swish_batch_stats_backward_cpu", [&] {
    const scalar_t *gp = grad_y.data_ptr<scalar_t>(), *xp = x.data_ptr<scalar_t>(), *sc = scale.data_ptr<scalar_t>(),
                   *sh = shift.data_ptr<scalar_t>(), *ap = g.alpha.data_ptr<scalar_t>(),
                   *bp = g.beta.data_ptr<scalar_t>();
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    if (is_channels_last(x)) {
      return for_each_image(x, [&](int64_t n, double*, double*) NCPFAST_ALWAYS_INLINE {
        const int64_t o = n * HW * C;
        core::bn_swish_grad_apply_channels(gp + o, xp + o, HW, C, sc, sh, ap, bp, gx + o);
      });
    }
    at::parallel_for(0, x.size(0) * C, plane_grain(x), [&](int64_t begin, int64_t end) {
      core::for_each_plane(begin, end, [&](int64_t p) NCPFAST_ALWAYS_INLINE {
        const int64_t c = p % C;
        core::bn_swish_grad_apply_plane(gp + p * HW, xp + p * HW, HW, sc[c], sh[c], ap[c], bp[c], gx + p * HW);
      });
    });
  });
  return {grad_x, g.grad_weight, g.grad_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_swish_dwconv_cpu(
    const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& bn_weight,
    const at::Tensor& bn_bias, const at::Tensor& conv_weight, const at::Tensor& conv_bias) {
  const int64_t K = check_dwconv("bn_swish_dwconv", x, mean, invstd, bn_weight, bn_bias, conv_weight, conv_bias);
  const auto acc = accumulation_type(x);
  auto [scale, shift] = folded_affine(mean, invstd, bn_weight, bn_bias);
  at::Tensor y = at::empty_like(x), sum = plane_tensor(x, acc), sumsq = plane_tensor(x, acc);
  const core::DepthwisePlane geometry{x.size(2), x.size(3), K};
  const int64_t C = x.size(1), HW = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bn_swish_dwconv_cpu", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *sc = scale.data_ptr<scalar_t>(), *sh = shift.data_ptr<scalar_t>(),
                   *wp = conv_weight.data_ptr<scalar_t>(), *bp = conv_bias.data_ptr<scalar_t>();
    scalar_t *yp = y.data_ptr<scalar_t>(), *sp = sum.data_ptr<scalar_t>(), *qp = sumsq.data_ptr<scalar_t>();
    at::parallel_for(0, x.size(0) * C, plane_grain(x), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> padded(geometry.padded_size(), scalar_t(0));
      core::for_each_depthwise_plane(begin, end, [&](int64_t p) NCPFAST_ALWAYS_INLINE {
        const int64_t c = p % C;
        double s, q;
        core::bn_swish_dwconv_plane(geometry, xp + p * HW, sc[c], sh[c], wp + c * K * K, bp[c], padded.data(),
                                    yp + p * HW, s, q);
        sp[p] = static_cast<scalar_t>(s);
        qp[p] = static_cast<scalar_t>(q);
      });
    });
  });
  return {y, sum, sumsq};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_swish_dwconv_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& grad_sum, const at::Tensor& grad_sumsq, const at::Tensor& out,
    const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& bn_weight,
    const at::Tensor& bn_bias, const at::Tensor& conv_weight) {
  const int64_t K = check_dwconv_backward("bn_swish_dwconv_backward", grad_out, grad_sum, grad_sumsq, out, x, mean,
                                          invstd, bn_weight, bn_bias, conv_weight);
  const auto acc = accumulation_type(x);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  auto [scale, shift] = folded_affine(mean, invstd, bn_weight, bn_bias);
  at::Tensor grad_x = at::empty_like(x), sum_g = plane_tensor(x, acc), sum_gc = plane_tensor(x, acc);
  at::Tensor grad_w = at::empty({N, C, K, K}, x.options().dtype(acc)), grad_b = plane_tensor(x, acc);
  const core::DepthwisePlane geometry{x.size(2), x.size(3), K};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bn_swish_dwconv_backward_cpu", [&] {
    const scalar_t *gp = grad_out.data_ptr<scalar_t>(), *gs = grad_sum.data_ptr<scalar_t>(),
                   *gq = grad_sumsq.data_ptr<scalar_t>(), *yp = out.data_ptr<scalar_t>(), *xp = x.data_ptr<scalar_t>(),
                   *sc = scale.data_ptr<scalar_t>(), *sh = shift.data_ptr<scalar_t>(), *mp = mean.data_ptr<scalar_t>(),
                   *wp = conv_weight.data_ptr<scalar_t>();
    scalar_t *gx = grad_x.data_ptr<scalar_t>(), *s1 = sum_g.data_ptr<scalar_t>(), *s2 = sum_gc.data_ptr<scalar_t>(),
             *gw = grad_w.data_ptr<scalar_t>(), *gb = grad_b.data_ptr<scalar_t>();
    at::parallel_for(0, N * C, plane_grain(x), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> padded_a(geometry.padded_size(), scalar_t(0));
      std::vector<scalar_t> padded_g(geometry.padded_size(), scalar_t(0));
      std::vector<scalar_t> grad_a(HW), flipped(K * K), tap_acc(K * K * core::kDepthwiseBlock);
      core::for_each_depthwise_plane(begin, end, [&](int64_t p) NCPFAST_ALWAYS_INLINE {
        const int64_t c = p % C;
        double a, b, bias_grad;
        core::bn_swish_dwconv_backward_plane(geometry, gp + p * HW, gs[p], gq[p], yp + p * HW, xp + p * HW, sc[c],
                                             sh[c], mp[c], wp + c * K * K, padded_a.data(), padded_g.data(),
                                             grad_a.data(), flipped.data(), tap_acc.data(), gx + p * HW, a, b,
                                             gw + p * K * K, bias_grad);
        s1[p] = static_cast<scalar_t>(a);
        s2[p] = static_cast<scalar_t>(b);
        gb[p] = static_cast<scalar_t>(bias_grad);
      });
    });
  });
  return {grad_x, sum_g, sum_gc, grad_w, grad_b};
}

at::Tensor bn_gate_residual_cpu(const at::Tensor& h, const at::Tensor& skip, const at::Tensor& mean,
                                const at::Tensor& invstd, const at::Tensor& weight, const at::Tensor& bias,
                                const at::Tensor& gate, double residual_scale) {
  const char* op = "bn_gate_residual";
  check_gate(op, h, skip, mean, invstd, weight, bias, gate);
  auto [scale, shift] = folded_affine(mean, invstd, weight, bias);
  auto [coef_a, coef_c] = gate_coefficients(scale, shift, gate, residual_scale);
  at::Tensor out = at::empty_like(h);
  const int64_t C = h.size(1), HW = h.size(2) * h.size(3);
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "bn_gate_residual_cpu", [&] {
    const scalar_t *hp = h.data_ptr<scalar_t>(), *sp = skip.data_ptr<scalar_t>(), *ap = coef_a.data_ptr<scalar_t>(),
                   *cp = coef_c.data_ptr<scalar_t>();
    scalar_t* op_ = out.data_ptr<scalar_t>();
    if (is_channels_last(h)) {
      return for_each_image(h, [&](int64_t n, double*, double*) NCPFAST_ALWAYS_INLINE {
        const int64_t o = n * HW * C;
        core::gate_residual_channels(hp + o, sp + o, HW, C, ap + n * C, cp + n * C, op_ + o);
      });
    }
    at::parallel_for(0, h.size(0) * h.size(1), plane_grain(h), [&](int64_t begin, int64_t end) {
      core::for_each_plane(begin, end, [&](int64_t p) NCPFAST_ALWAYS_INLINE {
        core::gate_residual_plane(hp + p * HW, sp + p * HW, HW, ap[p], cp[p], op_ + p * HW);
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_gate_residual_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& h, const at::Tensor& mean, const at::Tensor& invstd,
    const at::Tensor& weight, const at::Tensor& gate, double residual_scale) {
  const char* op = "bn_gate_residual_backward";
  const auto acc = check_gate_backward(op, grad_out, h, mean, invstd, weight, gate);
  at::Tensor coef_a = gate_scale(invstd * weight, gate, residual_scale);
  at::Tensor grad_h = at::empty_like(h), sum_g = plane_tensor(h, acc), sum_gc = plane_tensor(h, acc);
  const int64_t C = h.size(1), HW = h.size(2) * h.size(3);
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "bn_gate_residual_backward_cpu", [&] {
    const scalar_t *gp = grad_out.data_ptr<scalar_t>(), *hp = h.data_ptr<scalar_t>(), *ap = coef_a.data_ptr<scalar_t>(),
                   *mp = mean.data_ptr<scalar_t>();
    scalar_t *gh = grad_h.data_ptr<scalar_t>(), *s1 = sum_g.data_ptr<scalar_t>(), *s2 = sum_gc.data_ptr<scalar_t>();
    if (is_channels_last(h)) {
      return for_each_image(h, [&](int64_t n, double* a, double* b) NCPFAST_ALWAYS_INLINE {
        const int64_t o = n * HW * C;
        core::gate_residual_backward_channels(gp + o, hp + o, HW, C, ap + n * C, mp, gh + o, a, b);
        store_channels(a, C, s1 + n * C);
        store_channels(b, C, s2 + n * C);
      });
    }
    at::parallel_for(0, h.size(0) * C, plane_grain(h), [&](int64_t begin, int64_t end) {
      core::for_each_plane(begin, end, [&](int64_t p) NCPFAST_ALWAYS_INLINE {
        double a, b;
        core::gate_residual_backward_plane(gp + p * HW, hp + p * HW, HW, ap[p], mp[p % C], gh + p * HW, a, b);
        s1[p] = static_cast<scalar_t>(a);
        s2[p] = static_cast<scalar_t>(b);
      });
    });
  });
  return {grad_h, sum_g, sum_gc};
}

}  // namespace

TORCH_LIBRARY_IMPL(ncpfast, CPU, m) {
  m.impl("plane_moments", &plane_moments_cpu);
  m.impl("plane_moments_backward", &plane_moments_backward_cpu);
  m.impl("bn_swish_given_stats", &bn_swish_given_stats_cpu);
  m.impl("bn_swish_given_stats_backward", &bn_swish_given_stats_backward_cpu);
  m.impl("bn_swish_batch_stats", &bn_swish_batch_stats_cpu);
  m.impl("bn_swish_batch_stats_backward", &bn_swish_batch_stats_backward_cpu);
  m.impl("bn_swish_dwconv", &bn_swish_dwconv_cpu);
  m.impl("bn_swish_dwconv_backward", &bn_swish_dwconv_backward_cpu);
  m.impl("bn_gate_residual", &bn_gate_residual_cpu);
  m.impl("bn_gate_residual_backward", &bn_gate_residual_backward_cpu);
}

}  // namespace ops
}  // namespace ncpfast
