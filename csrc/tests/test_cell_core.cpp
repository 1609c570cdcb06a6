// Native tests of the torch-free residual-cell core (csrc/core/cell_fusion.h):
// every per-plane routine in float against a direct double-precision
// evaluation of its formula, on odd plane sizes (1x1, rows narrower than and
// not a multiple of the 8-wide register block) and kernel sizes 1, 3, 5, 7.
// Workspaces are allocated at exactly the documented sizes, so under ASan a
// routine that reads or writes past them fails here. The channels-last
// routines are checked against the plane routines on the same values.
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "cell_fusion.h"
#include "check.h"

using namespace ncpfast::core;

namespace {

double sigmoid_ref(double u) { return 1.0 / (1.0 + std::exp(-u)); }
double swish_ref(double u) { return u * sigmoid_ref(u); }
double swish_grad_ref(double u) {
  const double s = sigmoid_ref(u);
  return s * (1 + u * (1 - s));
}

// Largest |a - b| / (1 + |b|): one number per comparison.
double worst_error(const float* got, const std::vector<double>& want) {
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i)
    worst = std::max(worst, std::fabs(got[i] - want[i]) / (1 + std::fabs(want[i])));
  return worst;
}

// grad_x of the backward routines in their sums-only (<false>) form: not written.
float* const kNoGrad = nullptr;

double relative(double got, double want) { return std::fabs(got - want) / (1 + std::fabs(want)); }

const int64_t kSizes[][2] = {{1, 1}, {1, 3}, {3, 5}, {2, 8}, {7, 9}, {5, 17}, {16, 16}};
const int64_t kKernels[] = {1, 3, 5, 7};

void test_moments_and_bn_swish() {
  for (int64_t n : {1, 7, 8, 37, 256}) {
    const auto x = random_values(n, 2.f);
    double sum = -1, sumsq = -1, want_sum = 0, want_sq = 0;
    plane_moments(x.data(), n, sum, sumsq);
    for (float v : x) want_sum += v, want_sq += double(v) * v;
    NCPFAST_EXPECT(relative(sum, want_sum) < 1e-12 && relative(sumsq, want_sq) < 1e-12, "moments n=%ld", long(n));

    std::vector<float> grad(n);
    plane_moments_backward_plane(x.data(), n, 0.25f, -0.5f, grad.data());
    std::vector<double> want(n);
    for (int64_t i = 0; i < n; ++i) want[i] = 0.25 - 1.0 * x[i];
    NCPFAST_EXPECT(worst_error(grad.data(), want) < 1e-6, "moments backward n=%ld", long(n));

    const float scale = 1.3f, shift = -0.2f, mean = 0.1f;
    std::vector<float> y(n);
    bn_swish_plane(x.data(), n, scale, shift, y.data());
    for (int64_t i = 0; i < n; ++i) want[i] = swish_ref(double(x[i]) * scale + shift);
    NCPFAST_EXPECT(worst_error(y.data(), want) < 2e-6, "bn_swish_given_stats n=%ld: %g", long(n),
                   worst_error(y.data(), want));

    const auto gy = random_values(n);
    std::vector<float> gx(n);
    double sum_g = 0, sum_gc = 0, want_g = 0, want_gc = 0;
    bn_swish_backward_plane(gy.data(), x.data(), n, scale, shift, mean, gx.data(), sum_g, sum_gc);
    for (int64_t i = 0; i < n; ++i) {
      const double g = gy[i] * swish_grad_ref(double(x[i]) * scale + shift);
      want[i] = g * scale;
      want_g += g;
      want_gc += g * (double(x[i]) - mean);
    }
    NCPFAST_EXPECT(worst_error(gx.data(), want) < 2e-6, "bn_swish_given_stats backward n=%ld", long(n));
    NCPFAST_EXPECT(relative(sum_g, want_g) < 1e-5 && relative(sum_gc, want_gc) < 1e-5,
                   "bn_swish_given_stats sums n=%ld", long(n));

    // bn_swish_batch_stats's two backward passes: the same sums, then g_u * scale + alpha + beta x.
    double pass_g = 0, pass_gc = 0;
    bn_swish_backward_plane<false>(gy.data(), x.data(), n, scale, shift, mean, kNoGrad, pass_g, pass_gc);
    NCPFAST_EXPECT(relative(pass_g, want_g) < 1e-5 && relative(pass_gc, want_gc) < 1e-5, "grad sums n=%ld", long(n));
    const float alpha = 0.25f, beta = -0.5f;
    bn_swish_grad_apply_plane(gy.data(), x.data(), n, scale, shift, alpha, beta, gx.data());
    for (int64_t i = 0; i < n; ++i) want[i] += alpha + double(beta) * x[i];
    NCPFAST_EXPECT(worst_error(gx.data(), want) < 2e-6, "grad apply n=%ld", long(n));
  }
}

// The padded activation a = swish(x * scale + shift) with a zero border, in double.
std::vector<double> padded_activation_ref(const DepthwisePlane& g, const std::vector<float>& x, float scale,
                                          float shift) {
  const int64_t P = g.pad(), Wp = g.padded_width();
  std::vector<double> a(g.padded_size(), 0.0);
  for (int64_t i = 0; i < g.H; ++i)
    for (int64_t j = 0; j < g.W; ++j) a[(i + P) * Wp + j + P] = swish_ref(double(x[i * g.W + j]) * scale + shift);
  return a;
}

void test_depthwise_forward_and_backward() {
  const float scale = 0.9f, shift = 0.15f, mean = -0.05f, bias = 0.3f;
  for (const auto& size : kSizes) {
    for (int64_t K : kKernels) {
      const DepthwisePlane g{size[0], size[1], K};
      const int64_t H = g.H, W = g.W, n = H * W, KK = K * K, P = g.pad(), Wp = g.padded_width();
      const auto x = random_values(n);
      const auto w = random_values(KK, 0.3f);
      const auto a = padded_activation_ref(g, x, scale, shift);

      // forward: y = bias + correlation of the padded activation with w, and y's moments
      std::vector<float> padded(g.padded_size(), 0.f), y(n);
      double sum = 0, sumsq = 0;
      bn_swish_dwconv_plane(g, x.data(), scale, shift, w.data(), bias, padded.data(), y.data(), sum, sumsq);
      std::vector<double> want_y(n);
      double want_sum = 0, want_sq = 0;
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < W; ++j) {
          double acc = bias;
          for (int64_t ki = 0; ki < K; ++ki)
            for (int64_t kj = 0; kj < K; ++kj) acc += double(w[ki * K + kj]) * a[(i + ki) * Wp + j + kj];
          want_y[i * W + j] = acc;
        }
      for (int64_t i = 0; i < n; ++i) want_sum += y[i], want_sq += double(y[i]) * y[i];
      NCPFAST_EXPECT(worst_error(y.data(), want_y) < 1e-5, "dwconv H=%ld W=%ld K=%ld: %g", long(H), long(W), long(K),
                     worst_error(y.data(), want_y));
      NCPFAST_EXPECT(relative(sum, want_sum) < 1e-9 && relative(sumsq, want_sq) < 1e-9, "dwconv moments K=%ld",
                     long(K));

      // backward, against the chain rule written out in double
      const auto gy = random_values(n);
      const float grad_sum = 0.05f, grad_sumsq = -0.02f;
      std::vector<float> padded_a(g.padded_size(), 0.f), padded_g(g.padded_size(), 0.f), grad_a(n), flipped(KK),
          tap_acc(KK * kDepthwiseBlock), grad_x(n), grad_w(KK);
      double sum_g = 0, sum_gc = 0, grad_bias = 0;
      bn_swish_dwconv_backward_plane(g, gy.data(), grad_sum, grad_sumsq, y.data(), x.data(), scale, shift, mean,
                                     w.data(), padded_a.data(), padded_g.data(), grad_a.data(), flipped.data(),
                                     tap_acc.data(), grad_x.data(), sum_g, sum_gc, grad_w.data(), grad_bias);
      std::vector<double> ge(n), want_gw(KK, 0.0), want_gx(n);
      double want_gb = 0, want_g = 0, want_gc = 0;
      for (int64_t i = 0; i < n; ++i) {
        ge[i] = gy[i] + grad_sum + 2.0 * y[i] * grad_sumsq;
        want_gb += ge[i];
      }
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < W; ++j)
          for (int64_t ki = 0; ki < K; ++ki)
            for (int64_t kj = 0; kj < K; ++kj) want_gw[ki * K + kj] += ge[i * W + j] * a[(i + ki) * Wp + j + kj];
      for (int64_t r = 0; r < H; ++r)
        for (int64_t c = 0; c < W; ++c) {
          double ga = 0;  // sum over the outputs (i, j) that read input (r, c)
          for (int64_t ki = 0; ki < K; ++ki)
            for (int64_t kj = 0; kj < K; ++kj) {
              const int64_t i = r + P - ki, j = c + P - kj;
              if (i >= 0 && i < H && j >= 0 && j < W) ga += double(w[ki * K + kj]) * ge[i * W + j];
            }
          const double gu = ga * swish_grad_ref(double(x[r * W + c]) * scale + shift);
          want_gx[r * W + c] = gu * scale;
          want_g += gu;
          want_gc += gu * (double(x[r * W + c]) - mean);
        }
      NCPFAST_EXPECT(worst_error(grad_x.data(), want_gx) < 1e-5, "dwconv grad_x H=%ld W=%ld K=%ld: %g", long(H),
                     long(W), long(K), worst_error(grad_x.data(), want_gx));
      NCPFAST_EXPECT(worst_error(grad_w.data(), want_gw) < 1e-5, "dwconv grad_w H=%ld W=%ld K=%ld: %g", long(H),
                     long(W), long(K), worst_error(grad_w.data(), want_gw));
      NCPFAST_EXPECT(relative(grad_bias, want_gb) < 1e-5, "dwconv grad_bias K=%ld", long(K));
      NCPFAST_EXPECT(relative(sum_g, want_g) < 1e-5 && relative(sum_gc, want_gc) < 1e-5, "dwconv sums K=%ld", long(K));
      // The workspaces' borders must still be zero: later planes reuse them.
      bool zero_border = true;
      for (int64_t i = 0; i < H + 2 * P; ++i)
        for (int64_t j = 0; j < Wp; ++j)
          if (i < P || i >= H + P || j < P || j >= W + P)
            zero_border =
                zero_border && padded_a[i * Wp + j] == 0.f && padded_g[i * Wp + j] == 0.f && padded[i * Wp + j] == 0.f;
      NCPFAST_EXPECT(zero_border, "a workspace border was written (H=%ld W=%ld K=%ld)", long(H), long(W), long(K));
    }
  }
}

void test_gate_residual() {
  for (int64_t n : {1, 9, 64}) {
    const auto h = random_values(n), skip = random_values(n), grad_out = random_values(n);
    const float a = 0.07f, c = -0.01f, mean = 0.2f;
    std::vector<float> out(n), grad_h(n);
    gate_residual_plane(h.data(), skip.data(), n, a, c, out.data());
    std::vector<double> want(n), want_gh(n);
    double sum_g = 0, sum_gc = 0, want_g = 0, want_gc = 0;
    for (int64_t i = 0; i < n; ++i) want[i] = double(skip[i]) + double(a) * h[i] + c;
    NCPFAST_EXPECT(worst_error(out.data(), want) < 1e-6, "gate_residual n=%ld", long(n));
    gate_residual_backward_plane(grad_out.data(), h.data(), n, a, mean, grad_h.data(), sum_g, sum_gc);
    for (int64_t i = 0; i < n; ++i) {
      want_gh[i] = double(a) * grad_out[i];
      want_g += grad_out[i];
      want_gc += grad_out[i] * (double(h[i]) - mean);
    }
    NCPFAST_EXPECT(worst_error(grad_h.data(), want_gh) < 1e-6, "gate_residual backward n=%ld", long(n));
    NCPFAST_EXPECT(relative(sum_g, want_g) < 1e-6 && relative(sum_gc, want_gc) < 1e-6, "gate sums n=%ld", long(n));
  }
}

// The channels-last (NHWC) routines against the plane routines (tested above)
// on the same values: an image of `rows` pixels x C channels, each channel's
// plane gathered from it with stride C.
void test_channels_last_routines_equal_plane_routines() {
  const int64_t kImages[][2] = {{1, 1}, {1, 3}, {9, 5}, {7, 17}, {64, 32}, {5, 40}};
  for (const auto& shape : kImages) {
    const int64_t rows = shape[0], C = shape[1], n = rows * C;
    const auto x = random_values(n, 2.f), g = random_values(n), skip = random_values(n);
    const auto scale = random_values(C), shift = random_values(C), mean = random_values(C);
    const auto a = random_values(C, 0.1f), cc = random_values(C, 0.1f);
    const auto grad_sum = random_values(C), grad_sumsq = random_values(C);
    std::vector<double> r1(C), r2(C);
    std::vector<float> out1(n), out2(n);
    std::vector<float> plane_x(rows), plane_g(rows), plane_skip(rows), plane_out(rows);
    auto gather = [&](const std::vector<float>& from, int64_t c, std::vector<float>& to) {
      for (int64_t r = 0; r < rows; ++r) to[r] = from[r * C + c];
    };
    // Largest relative difference between channel c of an NHWC image and a plane.
    auto plane_error = [&](const std::vector<float>& image, int64_t c, const std::vector<float>& plane) {
      std::vector<double> want(plane.begin(), plane.end());
      std::vector<float> got(rows);
      gather(image, c, got);
      return worst_error(got.data(), want);
    };
    double worst = 0, worst_sum = 0;
    channel_moments(x.data(), rows, C, r1.data(), r2.data());
    channel_moments_backward(x.data(), rows, C, grad_sum.data(), grad_sumsq.data(), out1.data());
    bn_swish_channels(x.data(), rows, C, scale.data(), shift.data(), out2.data());
    for (int64_t c = 0; c < C; ++c) {
      gather(x, c, plane_x);
      double s, q;
      plane_moments(plane_x.data(), rows, s, q);
      worst_sum = std::max({worst_sum, relative(r1[c], s), relative(r2[c], q)});
      plane_moments_backward_plane(plane_x.data(), rows, grad_sum[c], grad_sumsq[c], plane_out.data());
      worst = std::max(worst, plane_error(out1, c, plane_out));
      bn_swish_plane(plane_x.data(), rows, scale[c], shift[c], plane_out.data());
      worst = std::max(worst, plane_error(out2, c, plane_out));
    }
    NCPFAST_EXPECT(worst < 1e-6 && worst_sum < 1e-12, "moments/bn_swish_given_stats channels %ldx%ld: %g %g",
                   long(rows), long(C), worst, worst_sum);

    worst = worst_sum = 0;
    bn_swish_backward_channels<false>(g.data(), x.data(), rows, C, scale.data(), shift.data(), mean.data(), kNoGrad,
                                      r1.data(), r2.data());
    bn_swish_grad_apply_channels(g.data(), x.data(), rows, C, scale.data(), shift.data(), grad_sum.data(),
                                 grad_sumsq.data(), out1.data());
    for (int64_t c = 0; c < C; ++c) {
      gather(x, c, plane_x);
      gather(g, c, plane_g);
      double s1, s2;
      bn_swish_backward_plane<false>(plane_g.data(), plane_x.data(), rows, scale[c], shift[c], mean[c], kNoGrad, s1,
                                     s2);
      worst_sum = std::max({worst_sum, relative(r1[c], s1), relative(r2[c], s2)});
      bn_swish_grad_apply_plane(plane_g.data(), plane_x.data(), rows, scale[c], shift[c], grad_sum[c], grad_sumsq[c],
                                plane_out.data());
      worst = std::max(worst, plane_error(out1, c, plane_out));
    }
    NCPFAST_EXPECT(worst < 1e-6 && worst_sum < 1e-6, "batch-norm grad passes channels %ldx%ld: %g %g", long(rows),
                   long(C), worst, worst_sum);

    worst = worst_sum = 0;
    bn_swish_backward_channels(g.data(), x.data(), rows, C, scale.data(), shift.data(), mean.data(), out1.data(),
                               r1.data(), r2.data());
    for (int64_t c = 0; c < C; ++c) {
      gather(x, c, plane_x);
      gather(g, c, plane_g);
      double s1, s2;
      bn_swish_backward_plane(plane_g.data(), plane_x.data(), rows, scale[c], shift[c], mean[c], plane_out.data(), s1,
                              s2);
      worst = std::max(worst, plane_error(out1, c, plane_out));
      worst_sum = std::max({worst_sum, relative(r1[c], s1), relative(r2[c], s2)});
    }
    NCPFAST_EXPECT(worst < 1e-6 && worst_sum < 1e-6, "bn_swish_given_stats backward channels %ldx%ld: %g %g",
                   long(rows), long(C), worst, worst_sum);

    worst = worst_sum = 0;
    gate_residual_channels(x.data(), skip.data(), rows, C, a.data(), cc.data(), out1.data());
    gate_residual_backward_channels(g.data(), x.data(), rows, C, a.data(), mean.data(), out2.data(), r1.data(),
                                    r2.data());
    for (int64_t c = 0; c < C; ++c) {
      gather(x, c, plane_x);
      gather(g, c, plane_g);
      gather(skip, c, plane_skip);
      gate_residual_plane(plane_x.data(), plane_skip.data(), rows, a[c], cc[c], plane_out.data());
      worst = std::max(worst, plane_error(out1, c, plane_out));
      double s1, s2;
      gate_residual_backward_plane(plane_g.data(), plane_x.data(), rows, a[c], mean[c], plane_out.data(), s1, s2);
      worst = std::max(worst, plane_error(out2, c, plane_out));
      worst_sum = std::max({worst_sum, relative(r1[c], s1), relative(r2[c], s2)});
    }
    NCPFAST_EXPECT(worst < 1e-6 && worst_sum < 1e-6, "gate_residual channels %ldx%ld: %g %g", long(rows), long(C),
                   worst, worst_sum);
  }
}

}  // namespace

int main() {
  test_moments_and_bn_swish();
  test_depthwise_forward_and_backward();
  test_gate_residual();
  test_channels_last_routines_equal_plane_routines();
  return finish("test_cell_core");
}
