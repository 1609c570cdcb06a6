// The fused residual-cell CUDA kernels (cell_fusion_kernels.cuh), run on the
// CPU emulation of the CUDA execution model (cuda_emulation.h), against the
// CPU cores (csrc/core/cell_fusion.h) that test_cell_core.cpp checks against
// the formulas. Per kernel: odd plane sizes, 1x1 planes, kernel sizes 1, 3, 5,
// and depthwise tiles of fewer rows than the plane (the per-tile partial sums
// and the halo rows between tiles). Storage in float and in float16
// (_Float16, the compiler's IEEE half, standing in for c10::Half; arithmetic
// stays float as in the extension): inputs are rounded to the storage type and
// the cores get the rounded values, outputs stored in half are compared to
// half precision, sums kept in float to float precision. Buffers are exactly
// the sizes the launchers allocate, so under ASan an out-of-range access fails
// here; under TSan an access no barrier orders does. And batch-norm moments of
// values with a large mean (the sums must be correctly rounded).
#include "cuda_emulation.h"

#include <cmath>
#include <random>
#include <vector>

#include "../ops/cell_fusion/cuda/cell_fusion_kernels.cuh"
#include "cell_fusion.h"
#include "check.h"

using namespace ncpfast;
using ops::cell_kernels::kThreads;

namespace {

// Largest |got - want| / (1 + |want|).
template <typename A, typename B>
double worst_error(const std::vector<A>& got, const std::vector<B>& want) {
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i)
    worst = std::max(worst, std::fabs(double(got[i]) - double(want[i])) / (1 + std::fabs(double(want[i]))));
  return worst;
}

// What a kernel with storage type T may differ from the float cores by:
// values it stores in T (one rounding to T), and sums it keeps in float
// (summation order only).
template <typename T>
struct Tolerance;
template <>
struct Tolerance<float> {
  static constexpr double stored = 2e-5, sums = 2e-5;
};
#if NCPFAST_HAVE_FLOAT16
template <>
struct Tolerance<_Float16> {
  static constexpr double stored = 2e-3, sums = 2e-5;  // half: 11-bit significand
};
#endif

// Values rounded to the storage type T, and the same values as float for the cores.
template <typename T>
struct Stored {
  std::vector<T> data;
  std::vector<float> as_float;
  explicit Stored(const std::vector<float>& values) : data(values.size()), as_float(values.size()) {
    for (size_t i = 0; i < values.size(); ++i) {
      data[i] = static_cast<T>(values[i]);
      as_float[i] = static_cast<float>(data[i]);
    }
  }
};

template <typename T>
std::vector<float> to_float(const std::vector<T>& v) {
  return std::vector<float>(v.begin(), v.end());
}

struct Shape {
  int64_t N, C, H, W;
  int64_t planes() const { return N * C; }
  int64_t plane_size() const { return H * W; }
  int64_t numel() const { return N * C * H * W; }
};

const Shape kShapes[] = {{1, 1, 1, 1}, {2, 3, 1, 1}, {2, 3, 7, 5}, {1, 2, 16, 16}, {3, 1, 5, 33}};

template <typename T>
void test_elementwise(const Shape& s) {
  using Tol = Tolerance<T>;
  const int64_t P = s.planes(), n = s.plane_size();
  const Stored<T> x(random_values(s.numel(), 2.f)), grad(random_values(s.numel())), skip(random_values(s.numel()));
  const auto scale = random_values(s.C), shift = random_values(s.C), mean = random_values(s.C);
  const auto per_plane_a = random_values(P), per_plane_c = random_values(P);
  const auto grad_sum = random_values(P), grad_sumsq = random_values(P, 0.1f);

  // plane_moments and its backward
  std::vector<float> sum(P), sumsq(P);
  std::vector<T> grad_x(s.numel());
  emu::launch(dim3(P), dim3(kThreads), 0, ops::cell_kernels::plane_moments_kernel<T, float>, x.data.data(), n,
              sum.data(), sumsq.data());
  emu::launch(dim3(P), dim3(kThreads), 0, ops::cell_kernels::plane_moments_backward_kernel<T, float>, x.data.data(), n,
              grad_sum.data(), grad_sumsq.data(), grad_x.data());
  std::vector<double> want_sum(P), want_sumsq(P);
  std::vector<float> want_grad_x(s.numel());
  for (int64_t p = 0; p < P; ++p) {
    core::plane_moments(x.as_float.data() + p * n, n, want_sum[p], want_sumsq[p]);
    core::plane_moments_backward_plane(x.as_float.data() + p * n, n, grad_sum[p], grad_sumsq[p],
                                       want_grad_x.data() + p * n);
  }
  NCPFAST_EXPECT(worst_error(sum, want_sum) < Tol::sums && worst_error(sumsq, want_sumsq) < Tol::sums,
                 "plane_moments %lldx%lldx%lldx%lld, %zu-byte storage", (long long)s.N, (long long)s.C, (long long)s.H,
                 (long long)s.W, sizeof(T));
  NCPFAST_EXPECT(worst_error(to_float(grad_x), want_grad_x) < Tol::stored, "plane_moments_backward");

  // bn_swish_given_stats and its backward
  std::vector<T> y(s.numel());
  std::vector<float> want_y(s.numel()), sum_g(P), sum_gc(P);
  emu::launch(dim3(P), dim3(kThreads), 0, ops::cell_kernels::bn_swish_kernel<T, float>, x.data.data(), s.C, n,
              scale.data(), shift.data(), y.data());
  emu::launch(dim3(P), dim3(kThreads), 0, ops::cell_kernels::bn_swish_backward_kernel<T, float>, grad.data.data(),
              x.data.data(), s.C, n, scale.data(), shift.data(), mean.data(), grad_x.data(), sum_g.data(),
              sum_gc.data());
  std::vector<double> want_sum_g(P), want_sum_gc(P);
  for (int64_t p = 0; p < P; ++p) {
    const int64_t c = p % s.C;
    core::bn_swish_plane(x.as_float.data() + p * n, n, scale[c], shift[c], want_y.data() + p * n);
    core::bn_swish_backward_plane(grad.as_float.data() + p * n, x.as_float.data() + p * n, n, scale[c], shift[c],
                                  mean[c], want_grad_x.data() + p * n, want_sum_g[p], want_sum_gc[p]);
  }
  NCPFAST_EXPECT(worst_error(to_float(y), want_y) < Tol::stored, "bn_swish_given_stats, %zu-byte storage", sizeof(T));
  NCPFAST_EXPECT(worst_error(to_float(grad_x), want_grad_x) < Tol::stored, "bn_swish_given_stats_backward grad_x");
  NCPFAST_EXPECT(worst_error(sum_g, want_sum_g) < Tol::sums && worst_error(sum_gc, want_sum_gc) < Tol::sums,
                 "bn_swish_given_stats_backward sums");

  // gate_residual and its backward
  std::vector<T> out(s.numel());
  std::vector<float> want_out(s.numel());
  emu::launch(dim3(P), dim3(kThreads), 0, ops::cell_kernels::gate_residual_kernel<T, float>, x.data.data(),
              skip.data.data(), n, per_plane_a.data(), per_plane_c.data(), out.data());
  emu::launch(dim3(P), dim3(kThreads), 0, ops::cell_kernels::gate_residual_backward_kernel<T, float>, grad.data.data(),
              x.data.data(), s.C, n, per_plane_a.data(), mean.data(), grad_x.data(), sum_g.data(), sum_gc.data());
  for (int64_t p = 0; p < P; ++p) {
    core::gate_residual_plane(x.as_float.data() + p * n, skip.as_float.data() + p * n, n, per_plane_a[p],
                              per_plane_c[p], want_out.data() + p * n);
    core::gate_residual_backward_plane(grad.as_float.data() + p * n, x.as_float.data() + p * n, n, per_plane_a[p],
                                       mean[p % s.C], want_grad_x.data() + p * n, want_sum_g[p], want_sum_gc[p]);
  }
  NCPFAST_EXPECT(worst_error(to_float(out), want_out) < Tol::stored, "gate_residual, %zu-byte storage", sizeof(T));
  NCPFAST_EXPECT(worst_error(to_float(grad_x), want_grad_x) < Tol::stored, "gate_residual_backward grad_h");
  NCPFAST_EXPECT(worst_error(sum_g, want_sum_g) < Tol::sums && worst_error(sum_gc, want_sum_gc) < Tol::sums,
                 "gate_residual_backward sums");
}

// Sums per-tile partials [P, tiles, width] over the tiles: [P, width].
std::vector<double> over_tiles(const std::vector<float>& partial, int64_t P, int64_t tiles, int64_t width = 1) {
  std::vector<double> total(P * width, 0.0);
  for (int64_t p = 0; p < P; ++p)
    for (int64_t t = 0; t < tiles; ++t)
      for (int64_t k = 0; k < width; ++k) total[p * width + k] += partial[(p * tiles + t) * width + k];
  return total;
}

// The forward with tiles of tile_rows rows and the backward with tiles of
// backward_tile_rows (0: the same).
template <typename T>
void test_depthwise(const Shape& s, int64_t K, int64_t tile_rows, int64_t backward_tile_rows = 0) {
  using Tol = Tolerance<T>;
  const int64_t P = s.planes(), n = s.plane_size(), KK = K * K;
  const int64_t tiles = (s.H + tile_rows - 1) / tile_rows;
  const int64_t rows_b = backward_tile_rows > 0 ? backward_tile_rows : tile_rows;
  const int64_t tiles_b = (s.H + rows_b - 1) / rows_b;
  const Stored<T> x(random_values(s.numel(), 2.f)), grad(random_values(s.numel()));
  const auto scale = random_values(s.C), shift = random_values(s.C), mean = random_values(s.C);
  const auto weight = random_values(s.C * KK, 0.3f), bias = random_values(s.C);
  const auto grad_sum = random_values(P), grad_sumsq = random_values(P, 0.1f);

  std::vector<T> y(s.numel());
  std::vector<float> tile_sum(P * tiles), tile_sumsq(P * tiles);
  emu::launch(dim3(P, tiles), dim3(kThreads), ops::cell_kernels::dwconv_shared_bytes(tile_rows, s.W, K, sizeof(float)),
              ops::cell_kernels::dwconv_kernel<T, float>, x.data.data(), s.C, s.H, s.W, K, tile_rows, scale.data(),
              shift.data(), weight.data(), bias.data(), y.data(), tile_sum.data(), tile_sumsq.data());

  std::vector<T> grad_x(s.numel());
  std::vector<float> tile_sum_g(P * tiles_b), tile_sum_gc(P * tiles_b), tile_grad_w(P * tiles_b * KK),
      tile_grad_b(P * tiles_b);
  emu::launch(dim3(P, tiles_b), dim3(kThreads),
              ops::cell_kernels::dwconv_backward_shared_bytes(rows_b, s.W, K, sizeof(float)),
              ops::cell_kernels::dwconv_backward_kernel<T, float>, grad.data.data(), grad_sum.data(), grad_sumsq.data(),
              y.data(), x.data.data(), s.C, s.H, s.W, K, rows_b, scale.data(), shift.data(), mean.data(), weight.data(),
              grad_x.data(), tile_sum_g.data(), tile_sum_gc.data(), tile_grad_w.data(), tile_grad_b.data());

  // The references: the forward from the rounded input; the moments of the y
  // the kernel stored (what the next op reads); the backward from that y.
  const std::vector<float> stored_y = to_float(y);
  const core::DepthwisePlane g{s.H, s.W, K};
  std::vector<float> padded_a(g.padded_size(), 0.f), padded_g(g.padded_size(), 0.f), grad_a(n), flipped(KK),
      tap_acc(KK * core::kDepthwiseBlock);
  std::vector<float> want_y(s.numel()), want_grad_x(s.numel()), want_grad_w(P * KK);
  std::vector<double> unused_sum(P), unused_sumsq(P), want_sum(P), want_sumsq(P), want_sum_g(P), want_sum_gc(P),
      want_grad_b(P);
  for (int64_t p = 0; p < P; ++p) {
    const int64_t c = p % s.C;
    core::bn_swish_dwconv_plane(g, x.as_float.data() + p * n, scale[c], shift[c], weight.data() + c * KK, bias[c],
                                padded_a.data(), want_y.data() + p * n, unused_sum[p], unused_sumsq[p]);
    core::plane_moments(stored_y.data() + p * n, n, want_sum[p], want_sumsq[p]);
    core::bn_swish_dwconv_backward_plane(g, grad.as_float.data() + p * n, grad_sum[p], grad_sumsq[p],
                                         stored_y.data() + p * n, x.as_float.data() + p * n, scale[c], shift[c],
                                         mean[c], weight.data() + c * KK, padded_a.data(), padded_g.data(),
                                         grad_a.data(), flipped.data(), tap_acc.data(), want_grad_x.data() + p * n,
                                         want_sum_g[p], want_sum_gc[p], want_grad_w.data() + p * KK, want_grad_b[p]);
  }
  const char* what = "depthwise %lldx%lldx%lldx%lld K=%lld tile_rows=%lld, %zu-byte storage: %s";
#define DEPTHWISE_EXPECT(cond, name)                                                                       \
  NCPFAST_EXPECT(cond, what, (long long)s.N, (long long)s.C, (long long)s.H, (long long)s.W, (long long)K, \
                 (long long)tile_rows, sizeof(T), name)
  DEPTHWISE_EXPECT(worst_error(stored_y, want_y) < Tol::stored, "y");
  DEPTHWISE_EXPECT(worst_error(over_tiles(tile_sum, P, tiles), want_sum) < Tol::sums &&
                       worst_error(over_tiles(tile_sumsq, P, tiles), want_sumsq) < Tol::sums,
                   "moments of y");
  DEPTHWISE_EXPECT(worst_error(to_float(grad_x), want_grad_x) < Tol::stored, "grad_x");
  DEPTHWISE_EXPECT(worst_error(over_tiles(tile_sum_g, P, tiles_b), want_sum_g) < Tol::sums &&
                       worst_error(over_tiles(tile_sum_gc, P, tiles_b), want_sum_gc) < Tol::sums,
                   "sums of the input gradient");
  DEPTHWISE_EXPECT(worst_error(over_tiles(tile_grad_w, P, tiles_b, KK), want_grad_w) < Tol::sums, "grad_w");
  DEPTHWISE_EXPECT(worst_error(over_tiles(tile_grad_b, P, tiles_b), want_grad_b) < Tol::sums, "grad_b");
#undef DEPTHWISE_EXPECT
}

// Whether `got` is `exact` rounded to float: within half an ulp (and a hair
// for the double sum's own rounding).
bool correctly_rounded(float got, double exact) {
  const double ulp = std::nextafter(std::fabs(got), INFINITY) - std::fabs(got);
  return std::fabs(got - exact) <= 0.5 * ulp * (1 + 1e-6);
}

// Batch-norm moments of values with a large mean and a small spread
// (x = 1000 + N(0, 0.01^2)): the variance lives in the last bits of the sum of
// squares, so each per-plane (and per-tile) sum must be the exact sum rounded
// once to float, as the CPU's double accumulation gives, not float
// accumulation's error of several ulps.
void test_moments_of_large_mean() {
  for (const Shape& s : {Shape{2, 2, 64, 64}, Shape{1, 3, 37, 29}}) {
    const int64_t P = s.planes(), n = s.plane_size();
    std::vector<float> x = random_values(s.numel(), 0.01f);
    for (float& v : x) v += 1000.f;
    std::vector<float> sum(P), sumsq(P);
    emu::launch(dim3(P), dim3(kThreads), 0, ops::cell_kernels::plane_moments_kernel<float, float>, x.data(), n,
                sum.data(), sumsq.data());
    int64_t wrong = 0;
    for (int64_t p = 0; p < P; ++p) {
      double exact_sum = 0, exact_sumsq = 0;
      for (int64_t i = 0; i < n; ++i) {
        exact_sum += x[p * n + i];
        exact_sumsq += double(x[p * n + i]) * x[p * n + i];
      }
      wrong += !correctly_rounded(sum[p], exact_sum) + !correctly_rounded(sumsq[p], exact_sumsq);
    }
    NCPFAST_EXPECT(wrong == 0,
                   "plane_moments of 1000 + N(0, 0.01^2), %lldx%lld planes: %lld of %lld sums not the "
                   "exact sum rounded to float",
                   (long long)s.H, (long long)s.W, (long long)wrong, (long long)(2 * P));

    // The depthwise conv's moments of its output: a bias of 1000, small weights.
    const int64_t K = 3, tile_rows = 16, tiles = (s.H + tile_rows - 1) / tile_rows;
    const std::vector<float> scale(s.C, 1.f), shift(s.C, 0.f), bias(s.C, 1000.f);
    const std::vector<float> input = random_values(s.numel()), weight = random_values(s.C * K * K, 1e-3f);
    std::vector<float> y(s.numel()), tile_sum(P * tiles), tile_sumsq(P * tiles);
    emu::launch(dim3(P, tiles), dim3(kThreads),
                ops::cell_kernels::dwconv_shared_bytes(tile_rows, s.W, K, sizeof(float)),
                ops::cell_kernels::dwconv_kernel<float, float>, input.data(), s.C, s.H, s.W, K, tile_rows, scale.data(),
                shift.data(), weight.data(), bias.data(), y.data(), tile_sum.data(), tile_sumsq.data());
    wrong = 0;
    for (int64_t p = 0; p < P; ++p)
      for (int64_t t = 0; t < tiles; ++t) {
        double exact_sum = 0, exact_sumsq = 0;
        for (int64_t i = t * tile_rows * s.W; i < std::min(s.H, (t + 1) * tile_rows) * s.W; ++i) {
          exact_sum += y[p * n + i];
          exact_sumsq += double(y[p * n + i]) * y[p * n + i];
        }
        wrong += !correctly_rounded(tile_sum[p * tiles + t], exact_sum) +
                 !correctly_rounded(tile_sumsq[p * tiles + t], exact_sumsq);
      }
    NCPFAST_EXPECT(wrong == 0,
                   "depthwise moments of 1000 + small, %lldx%lld planes: %lld of %lld tile sums not the "
                   "exact sum rounded to float",
                   (long long)s.H, (long long)s.W, (long long)wrong, (long long)(2 * P * tiles));
  }
}

// The tiles the extension launches with (dwconv_tile_rows, float arithmetic):
// planes wide enough that they are several tiles, a partial last one included,
// so the tile sums run as on the device; and the launch's shared memory (dynamic
// and block_sum's static array) within what a block may use without opting in.
template <typename T>
void test_depthwise_with_the_host_tiles() {
  using ops::cell_kernels::dwconv_tile_rows;
  for (const auto& [s, K] :
       {std::pair{Shape{1, 2, 40, 200}, int64_t{5}}, std::pair{Shape{1, 1, 20, 500}, int64_t{3}}}) {
    const int64_t forward_rows = dwconv_tile_rows(s.H, s.W, K, sizeof(float), 1);
    const int64_t backward_rows = dwconv_tile_rows(s.H, s.W, K, sizeof(float), 2);
    NCPFAST_EXPECT(forward_rows < s.H && backward_rows < s.H && s.H % backward_rows != 0,
                   "host tiles of %lldx%lld planes, K=%lld: %lld and %lld rows are not several, partial tiles",
                   (long long)s.H, (long long)s.W, (long long)K, (long long)forward_rows, (long long)backward_rows);
    NCPFAST_EXPECT(ops::cell_kernels::dwconv_backward_shared_bytes(backward_rows, s.W, K, sizeof(float)) <=
                       core::kDefaultSharedBytesPerBlock,
                   "host tiles of width %lld, K=%lld: the backward's shared memory exceeds 48 KiB", (long long)s.W,
                   (long long)K);
    test_depthwise<T>(s, K, forward_rows, backward_rows);
  }
  NCPFAST_EXPECT(dwconv_tile_rows(8, 5000, 5, sizeof(double), 2) == 0, "a plane too wide for one row: 0 rows");
}

template <typename T>
void test_storage_type() {
  for (const Shape& s : kShapes) test_elementwise<T>(s);
  for (const Shape& s : kShapes)
    for (int64_t K : {1, 3, 5}) {
      test_depthwise<T>(s, K, s.H);             // one tile per plane
      if (s.H > 2) test_depthwise<T>(s, K, 3);  // several tiles, the last one partial when H % 3 != 0
    }
  test_depthwise_with_the_host_tiles<T>();
}

}  // namespace

int main() {
  test_moments_of_large_mean();
  test_storage_type<float>();
#if NCPFAST_HAVE_FLOAT16
  test_storage_type<_Float16>();
#else
  std::printf("test_cell_cuda_emulated: this compiler has no _Float16; float16 storage not tested\n");
#endif
  return finish("test_cell_cuda_emulated");
}
