// Every hand-written CUDA kernel against a CPU reference (naive f64 loops in
// this file) on fresh random inputs at many shapes, including odd ones (N=1,
// C not a multiple of 8, H=W=1, 7, 33). Output buffers are poisoned with NaN
// before each launch, so an element the kernel never writes fails.
//
// Tolerances per dtype (|gpu - ref| <= atol + rtol * |ref|, inputs rounded to
// the dtype first so both sides see the same values):
//   f32: atol 1e-4, rtol 1e-4    f16: atol 2e-3, rtol 5e-3    bf16: atol 1.6e-2, rtol 2e-2
// Reductions (weight gradients, BN statistics) scale atol by sqrt(length).
// The squeeze-excite and coordinate-attention backward tests scale atol by
// the largest |ref| of each gradient instead (their sums nest: a channel sum
// over HW feeds a sum over samples).
//
// The f64 references of those two backwards are themselves proven against
// central finite differences of the f64 forwards by CPU-only tests
// (AttentionReferences.*), which run in every build, GPU or not.
//
// The seed is fresh each run and printed on failure; KESTREL_TEST_SEED=<n>
// reproduces a run. Without a GPU every CudaKernels test skips with the
// reason; in a build without CUDA only the CPU-only reference proofs run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "engine/ops/attention.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/reduce.h"

// ---- f64 reference loops for squeeze-excite and coordinate attention. They
// build in every configuration: the CPU-only tests right below prove each
// backward loop against central finite differences of its forward loop, and
// the GPU tests further down compare the kernels against them.
namespace kestrel {
namespace {

double act_ref(Activation a, double x) {
  switch (a) {
    case Activation::None: return x;
    case Activation::ReLU: return x > 0 ? x : 0;
    case Activation::ReLU6: return std::min(std::max(x, 0.0), 6.0);
    case Activation::Sigmoid: return 1 / (1 + std::exp(-x));
    case Activation::Tanh: return std::tanh(x);
    case Activation::SiLU: return x / (1 + std::exp(-x));
    case Activation::HardSwish: return x * std::min(std::max(x + 3, 0.0), 6.0) / 6;
    case Activation::HardSigmoid: return std::min(std::max(x + 3, 0.0), 6.0) / 6;
    case Activation::GELU: return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
  }
  return x;
}
double act_grad_ref(Activation a, double x) {
  switch (a) {
    case Activation::None: return 1;
    case Activation::ReLU: return x > 0 ? 1 : 0;
    case Activation::ReLU6: return (x > 0 && x < 6) ? 1 : 0;
    case Activation::Sigmoid: { const double s = 1 / (1 + std::exp(-x)); return s * (1 - s); }
    case Activation::Tanh: { const double t = std::tanh(x); return 1 - t * t; }
    case Activation::SiLU: { const double s = 1 / (1 + std::exp(-x)); return s * (1 + x * (1 - s)); }
    case Activation::HardSwish: return x < -3 ? 0 : (x > 3 ? 1 : (2 * x + 3) / 6);
    case Activation::HardSigmoid: return (x > -3 && x < 3) ? 1.0 / 6 : 0;
    case Activation::GELU: {
      const double cdf = 0.5 * (1 + std::erf(x / std::sqrt(2.0)));
      return cdf + x * std::exp(-0.5 * x * x) / std::sqrt(2 * M_PI);
    }
  }
  return 1;
}

// Points where act' jumps: tests keep pre-activations away from them, where
// f32 and f64 (or a finite difference) may see different sides.
std::vector<double> act_kinks(Activation a) {
  switch (a) {
    case Activation::ReLU: return {0.0};
    case Activation::ReLU6: return {0.0, 6.0};
    case Activation::HardSwish:
    case Activation::HardSigmoid: return {-3.0, 3.0};
    default: return {};
  }
}
bool near_kink(Activation a, double v, double margin) {
  for (double k : act_kinks(a))
    if (std::fabs(v - k) < margin) return true;
  return false;
}

using Vec = std::vector<double>;

// ---- squeeze-excite: x [N, HW, C], w1 [Cr, C], b1 [Cr], w2 [C, Cr], b2 [C]
struct SeDims {
  int N, HW, C, Cr;
};
struct SeParams {
  Vec w1, b1, w2, b2;
};
struct SeForward {
  Vec y, pooled, hidden, scale;  // hidden: before the inner activation
};
struct SeGrads {
  Vec dx, dw1, db1, dw2, db2;
};

double se_gate_input(const SeDims& d, const SeParams& p, Activation inner, const Vec& hidden, int n, int c) {
  double z = p.b2[c];
  for (int j = 0; j < d.Cr; ++j)
    z += p.w2[static_cast<size_t>(c) * d.Cr + j] * act_ref(inner, hidden[static_cast<size_t>(n) * d.Cr + j]);
  return z;
}

SeForward se_forward_ref(const SeDims& d, Activation inner, Activation gate, const Vec& x, const SeParams& p) {
  SeForward f;
  f.y.resize(x.size());
  f.pooled.assign(static_cast<size_t>(d.N) * d.C, 0.0);
  f.hidden.assign(static_cast<size_t>(d.N) * d.Cr, 0.0);
  f.scale.assign(static_cast<size_t>(d.N) * d.C, 0.0);
  for (int n = 0; n < d.N; ++n) {
    double* pooled = &f.pooled[static_cast<size_t>(n) * d.C];
    for (int q = 0; q < d.HW; ++q)
      for (int c = 0; c < d.C; ++c) pooled[c] += x[(static_cast<size_t>(n) * d.HW + q) * d.C + c] / d.HW;
    for (int j = 0; j < d.Cr; ++j) {
      double h = p.b1[j];
      for (int c = 0; c < d.C; ++c) h += p.w1[static_cast<size_t>(j) * d.C + c] * pooled[c];
      f.hidden[static_cast<size_t>(n) * d.Cr + j] = h;
    }
    for (int c = 0; c < d.C; ++c)
      f.scale[static_cast<size_t>(n) * d.C + c] = act_ref(gate, se_gate_input(d, p, inner, f.hidden, n, c));
    for (int q = 0; q < d.HW; ++q)
      for (int c = 0; c < d.C; ++c) {
        const size_t e = (static_cast<size_t>(n) * d.HW + q) * d.C + c;
        f.y[e] = x[e] * f.scale[static_cast<size_t>(n) * d.C + c];
      }
  }
  return f;
}

SeGrads se_backward_ref(const SeDims& d, Activation inner, Activation gate, const Vec& x, const SeParams& p,
                        const Vec& dy) {
  const SeForward f = se_forward_ref(d, inner, gate, x, p);
  SeGrads g;
  g.dx.resize(x.size());
  g.dw1.assign(p.w1.size(), 0.0);
  g.db1.assign(p.b1.size(), 0.0);
  g.dw2.assign(p.w2.size(), 0.0);
  g.db2.assign(p.b2.size(), 0.0);
  for (int n = 0; n < d.N; ++n) {
    Vec dz(d.C, 0.0), dh(d.Cr, 0.0), dpool(d.C, 0.0);
    for (int q = 0; q < d.HW; ++q)
      for (int c = 0; c < d.C; ++c) {
        const size_t e = (static_cast<size_t>(n) * d.HW + q) * d.C + c;
        dz[c] += dy[e] * x[e];
      }
    for (int c = 0; c < d.C; ++c) {
      dz[c] *= act_grad_ref(gate, se_gate_input(d, p, inner, f.hidden, n, c));
      g.db2[c] += dz[c];
      for (int j = 0; j < d.Cr; ++j) {
        const double h = f.hidden[static_cast<size_t>(n) * d.Cr + j];
        g.dw2[static_cast<size_t>(c) * d.Cr + j] += dz[c] * act_ref(inner, h);
        dh[j] += p.w2[static_cast<size_t>(c) * d.Cr + j] * dz[c];
      }
    }
    for (int j = 0; j < d.Cr; ++j) {
      dh[j] *= act_grad_ref(inner, f.hidden[static_cast<size_t>(n) * d.Cr + j]);
      g.db1[j] += dh[j];
      for (int c = 0; c < d.C; ++c) {
        g.dw1[static_cast<size_t>(j) * d.C + c] += dh[j] * f.pooled[static_cast<size_t>(n) * d.C + c];
        dpool[c] += p.w1[static_cast<size_t>(j) * d.C + c] * dh[j];
      }
    }
    for (int q = 0; q < d.HW; ++q)
      for (int c = 0; c < d.C; ++c) {
        const size_t e = (static_cast<size_t>(n) * d.HW + q) * d.C + c;
        g.dx[e] = dy[e] * f.scale[static_cast<size_t>(n) * d.C + c] + dpool[c] / d.HW;
      }
  }
  return g;
}

// ---- coordinate attention: x [N, H, W, C], w1 [mip, C], b1 [mip], wh/ww [C, mip],
// bh/bw [C]; positions p < H are rows, p = H + w columns (L = H + W per sample).
struct CaDims {
  int N, H, W, C, mip;
};
struct CaParams {
  Vec w1, b1, wh, bh, ww, bw;
};
struct CaForward {
  Vec y, pooled, hidden, gates;  // [N, L, C], [N, L, mip] before act, [N, L, C]
};
struct CaGrads {
  Vec dx, dw1, db1, dwh, dbh, dww, dbw;
};

CaForward ca_forward_ref(const CaDims& d, Activation act, const Vec& x, const CaParams& p) {
  const int L = d.H + d.W;
  CaForward f;
  f.y.resize(x.size());
  f.pooled.assign(static_cast<size_t>(d.N) * L * d.C, 0.0);
  f.hidden.assign(static_cast<size_t>(d.N) * L * d.mip, 0.0);
  f.gates.assign(static_cast<size_t>(d.N) * L * d.C, 0.0);
  for (int n = 0; n < d.N; ++n) {
    auto X = [&](int h, int w, int c) { return x[((static_cast<size_t>(n) * d.H + h) * d.W + w) * d.C + c]; };
    auto at = [&](Vec& v, int p, int i, int width) -> double& {
      return v[(static_cast<size_t>(n) * L + p) * width + i];
    };
    for (int h = 0; h < d.H; ++h)
      for (int w = 0; w < d.W; ++w)
        for (int c = 0; c < d.C; ++c) {
          at(f.pooled, h, c, d.C) += X(h, w, c) / d.W;
          at(f.pooled, d.H + w, c, d.C) += X(h, w, c) / d.H;
        }
    for (int q = 0; q < L; ++q) {
      for (int j = 0; j < d.mip; ++j) {
        double t = p.b1[j];
        for (int c = 0; c < d.C; ++c) t += p.w1[static_cast<size_t>(j) * d.C + c] * at(f.pooled, q, c, d.C);
        at(f.hidden, q, j, d.mip) = t;
      }
      const Vec& wg = q < d.H ? p.wh : p.ww;
      const Vec& bg = q < d.H ? p.bh : p.bw;
      for (int c = 0; c < d.C; ++c) {
        double z = bg[c];
        for (int j = 0; j < d.mip; ++j) z += wg[static_cast<size_t>(c) * d.mip + j] * act_ref(act, at(f.hidden, q, j, d.mip));
        at(f.gates, q, c, d.C) = act_ref(Activation::Sigmoid, z);
      }
    }
    for (int h = 0; h < d.H; ++h)
      for (int w = 0; w < d.W; ++w)
        for (int c = 0; c < d.C; ++c)
          f.y[((static_cast<size_t>(n) * d.H + h) * d.W + w) * d.C + c] =
              X(h, w, c) * at(f.gates, h, c, d.C) * at(f.gates, d.H + w, c, d.C);
  }
  return f;
}

CaGrads ca_backward_ref(const CaDims& d, Activation act, const Vec& x, const CaParams& p, const Vec& dy) {
  const int L = d.H + d.W;
  CaForward f = ca_forward_ref(d, act, x, p);
  CaGrads g;
  g.dx.resize(x.size());
  g.dw1.assign(p.w1.size(), 0.0);
  g.db1.assign(p.b1.size(), 0.0);
  g.dwh.assign(p.wh.size(), 0.0);
  g.dbh.assign(p.bh.size(), 0.0);
  g.dww.assign(p.ww.size(), 0.0);
  g.dbw.assign(p.bw.size(), 0.0);
  for (int n = 0; n < d.N; ++n) {
    auto at = [&](const Vec& v, int q, int i, int width) { return v[(static_cast<size_t>(n) * L + q) * width + i]; };
    auto e_of = [&](int h, int w, int c) { return ((static_cast<size_t>(n) * d.H + h) * d.W + w) * d.C + c; };
    Vec da(static_cast<size_t>(L) * d.C, 0.0), dpool(static_cast<size_t>(L) * d.C, 0.0);
    for (int h = 0; h < d.H; ++h)
      for (int w = 0; w < d.W; ++w)
        for (int c = 0; c < d.C; ++c) {
          const double v = dy[e_of(h, w, c)] * x[e_of(h, w, c)];
          da[static_cast<size_t>(h) * d.C + c] += v * at(f.gates, d.H + w, c, d.C);
          da[static_cast<size_t>(d.H + w) * d.C + c] += v * at(f.gates, h, c, d.C);
        }
    for (int q = 0; q < L; ++q) {
      const bool row = q < d.H;
      const Vec& wg = row ? p.wh : p.ww;
      Vec& dwg = row ? g.dwh : g.dww;
      Vec& dbg = row ? g.dbh : g.dbw;
      Vec dz(d.C), dt(d.mip, 0.0);
      for (int c = 0; c < d.C; ++c) {
        const double gt = at(f.gates, q, c, d.C);
        dz[c] = da[static_cast<size_t>(q) * d.C + c] * gt * (1 - gt);
        dbg[c] += dz[c];
        for (int j = 0; j < d.mip; ++j) {
          dwg[static_cast<size_t>(c) * d.mip + j] += dz[c] * act_ref(act, at(f.hidden, q, j, d.mip));
          dt[j] += wg[static_cast<size_t>(c) * d.mip + j] * dz[c];
        }
      }
      for (int j = 0; j < d.mip; ++j) {
        dt[j] *= act_grad_ref(act, at(f.hidden, q, j, d.mip));
        g.db1[j] += dt[j];
        for (int c = 0; c < d.C; ++c) {
          g.dw1[static_cast<size_t>(j) * d.C + c] += dt[j] * at(f.pooled, q, c, d.C);
          dpool[static_cast<size_t>(q) * d.C + c] += p.w1[static_cast<size_t>(j) * d.C + c] * dt[j] / (row ? d.W : d.H);
        }
      }
    }
    for (int h = 0; h < d.H; ++h)
      for (int w = 0; w < d.W; ++w)
        for (int c = 0; c < d.C; ++c) {
          const size_t e = e_of(h, w, c);
          g.dx[e] = dy[e] * at(f.gates, h, c, d.C) * at(f.gates, d.H + w, c, d.C) +
                    dpool[static_cast<size_t>(h) * d.C + c] + dpool[static_cast<size_t>(d.H + w) * d.C + c];
        }
  }
  return g;
}

// ---- finite-difference proof of the reference backwards (CPU only, fixed seeds)

Vec uniform_values(size_t n, std::mt19937_64& rng, double lo = -1.0, double hi = 1.0) {
  std::uniform_real_distribution<double> d(lo, hi);
  Vec v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Parameters as the reference tests draw them: the gate's weights and biases in [-2, 2].
SeParams random_se_params(const SeDims& d, std::mt19937_64& rng) {
  return {uniform_values(static_cast<size_t>(d.Cr) * d.C, rng), uniform_values(d.Cr, rng),
          uniform_values(static_cast<size_t>(d.C) * d.Cr, rng, -2, 2), uniform_values(d.C, rng, -2, 2)};
}

// The shared transform's weights and biases in [-2, 2], the gates' in [-1, 1].
CaParams random_ca_params(const CaDims& d, std::mt19937_64& rng) {
  const size_t nw = static_cast<size_t>(d.mip) * d.C;
  return {uniform_values(nw, rng, -2, 2), uniform_values(d.mip, rng, -2, 2), uniform_values(nw, rng),
          uniform_values(d.C, rng),       uniform_values(nw, rng),           uniform_values(d.C, rng)};
}

struct CaCase {
  CaDims d;
  Activation act;
};
const CaCase kCaCases[] = {{{2, 3, 4, 5, 3}, Activation::HardSwish},
                           {{1, 1, 1, 3, 2}, Activation::ReLU},
                           {{2, 4, 4, 6, 2}, Activation::SiLU},
                           {{1, 5, 2, 4, 5}, Activation::Tanh}};

std::string ca_label(const CaCase& k) {
  const CaDims& d = k.d;
  return "ca [" + std::to_string(d.N) + "," + std::to_string(d.H) + "," + std::to_string(d.W) + "," +
         std::to_string(d.C) + "] mip" + std::to_string(d.mip) + " " + activation_name(k.act);
}

// Every element of `v` perturbed by +-eps: (loss(+) - loss(-)) / 2eps must
// match the analytic gradient.
void expect_matches_finite_differences(Vec& v, const Vec& grad, const std::function<double()>& loss,
                                       const std::string& what) {
  ASSERT_EQ(v.size(), grad.size()) << what;
  const double eps = 1e-6;
  for (size_t i = 0; i < v.size(); ++i) {
    const double keep = v[i];
    v[i] = keep + eps;
    const double up = loss();
    v[i] = keep - eps;
    const double down = loss();
    v[i] = keep;
    const double fd = (up - down) / (2 * eps);
    EXPECT_NEAR(grad[i], fd, 1e-6 + 1e-6 * std::fabs(fd)) << what << " element " << i;
  }
}

TEST(AttentionReferences, SqueezeExciteBackwardMatchesFiniteDifferencesOfForward) {
  struct Case {
    SeDims d;
    Activation inner, gate;
  };
  const Case cases[] = {{{2, 5, 6, 3}, Activation::ReLU, Activation::Sigmoid},
                        {{1, 1, 4, 1}, Activation::SiLU, Activation::HardSigmoid},
                        {{3, 4, 7, 2}, Activation::HardSwish, Activation::Sigmoid},
                        {{2, 9, 5, 4}, Activation::GELU, Activation::HardSigmoid}};
  std::mt19937_64 rng(20240611);
  for (const Case& k : cases) {
    const SeDims& d = k.d;
    const std::string label = std::string("se [") + std::to_string(d.N) + "," + std::to_string(d.HW) + "," +
                              std::to_string(d.C) + "] r" + std::to_string(d.Cr) + " " +
                              activation_name(k.inner) + "/" + activation_name(k.gate);
    SCOPED_TRACE(label);
    Vec x = uniform_values(static_cast<size_t>(d.N) * d.HW * d.C, rng);
    const Vec dy = uniform_values(x.size(), rng);
    SeParams p = random_se_params(d, rng);
    // Keep every pre-activation 1e-3 away from a kink (re-draw the bias).
    for (int round = 0; round < 50; ++round) {
      const SeForward f = se_forward_ref(d, k.inner, k.gate, x, p);
      bool moved = false;
      for (int n = 0; n < d.N; ++n) {
        for (int j = 0; j < d.Cr; ++j)
          if (near_kink(k.inner, f.hidden[static_cast<size_t>(n) * d.Cr + j], 1e-3)) {
            p.b1[j] = uniform_values(1, rng)[0];
            moved = true;
          }
        for (int c = 0; c < d.C; ++c)
          if (near_kink(k.gate, se_gate_input(d, p, k.inner, f.hidden, n, c), 1e-3)) {
            p.b2[c] = uniform_values(1, rng, -2, 2)[0];
            moved = true;
          }
      }
      if (!moved) break;
    }
    const SeGrads g = se_backward_ref(d, k.inner, k.gate, x, p, dy);
    auto loss = [&] { return dot(se_forward_ref(d, k.inner, k.gate, x, p).y, dy); };
    expect_matches_finite_differences(x, g.dx, loss, "dx " + label);
    expect_matches_finite_differences(p.w1, g.dw1, loss, "dw1 " + label);
    expect_matches_finite_differences(p.b1, g.db1, loss, "db1 " + label);
    expect_matches_finite_differences(p.w2, g.dw2, loss, "dw2 " + label);
    expect_matches_finite_differences(p.b2, g.db2, loss, "db2 " + label);
  }
}

TEST(AttentionReferences, CoordAttentionBackwardMatchesFiniteDifferencesOfForward) {
  std::mt19937_64 rng(20240612);
  for (const CaCase& k : kCaCases) {
    const CaDims& d = k.d;
    const std::string label = ca_label(k);
    SCOPED_TRACE(label);
    Vec x = uniform_values(static_cast<size_t>(d.N) * d.H * d.W * d.C, rng);
    const Vec dy = uniform_values(x.size(), rng);
    CaParams p = random_ca_params(d, rng);
    for (int round = 0; round < 50; ++round) {
      const CaForward f = ca_forward_ref(d, k.act, x, p);
      bool moved = false;
      for (size_t i = 0; i < f.hidden.size(); ++i)
        if (near_kink(k.act, f.hidden[i], 1e-3)) {
          p.b1[i % d.mip] = uniform_values(1, rng, -2, 2)[0];
          moved = true;
        }
      if (!moved) break;
    }
    const CaGrads g = ca_backward_ref(d, k.act, x, p, dy);
    auto loss = [&] { return dot(ca_forward_ref(d, k.act, x, p).y, dy); };
    expect_matches_finite_differences(x, g.dx, loss, "dx " + label);
    expect_matches_finite_differences(p.w1, g.dw1, loss, "dw1 " + label);
    expect_matches_finite_differences(p.b1, g.db1, loss, "db1 " + label);
    expect_matches_finite_differences(p.wh, g.dwh, loss, "dwh " + label);
    expect_matches_finite_differences(p.bh, g.dbh, loss, "dbh " + label);
    expect_matches_finite_differences(p.ww, g.dww, loss, "dww " + label);
    expect_matches_finite_differences(p.bw, g.dbw, loss, "dbw " + label);
  }
}

// The CPU ops themselves, on f64 tensors, against the loops: the output and
// every gradient (the CUDA kernels are held to the CPU ops elsewhere).
void expect_loop_values(const Tensor& t, const Vec& ref, const std::string& what) {
  const Vec got = t.to_vector_f64();
  ASSERT_EQ(got.size(), ref.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], ref[i], 1e-10 * (1 + std::fabs(ref[i]))) << what << " element " << i;
}

Tensor leaf(const Vec& v, const Shape& shape) { return Tensor::from_vector_f64(v, shape).set_requires_grad(); }

TEST(AttentionReferences, CpuSqueezeExciteMatchesTheLoops) {
  struct Case {
    int N, H, W, C, Cr;
    Activation inner, gate;
  };
  const Case cases[] = {{2, 2, 3, 6, 3, Activation::ReLU, Activation::Sigmoid},
                        {1, 1, 1, 4, 1, Activation::SiLU, Activation::HardSigmoid},
                        {3, 3, 3, 7, 2, Activation::HardSwish, Activation::Sigmoid}};
  std::mt19937_64 rng(20261126);
  for (const Case& k : cases) {
    const SeDims d{k.N, k.H * k.W, k.C, k.Cr};
    SCOPED_TRACE("se [" + std::to_string(k.N) + "," + std::to_string(k.H) + "," + std::to_string(k.W) + "," +
                 std::to_string(k.C) + "] r" + std::to_string(k.Cr));
    const Vec x = uniform_values(static_cast<size_t>(d.N) * d.HW * d.C, rng), dy = uniform_values(x.size(), rng);
    const SeParams p = random_se_params(d, rng);
    Tensor tx = leaf(x, {k.N, k.H, k.W, k.C}), w1 = leaf(p.w1, {k.Cr, k.C}), b1 = leaf(p.b1, {k.Cr}),
           w2 = leaf(p.w2, {k.C, k.Cr}), b2 = leaf(p.b2, {k.C});
    const Tensor y = squeeze_excite(tx, w1, b1, w2, b2, k.inner, k.gate);
    expect_loop_values(y, se_forward_ref(d, k.inner, k.gate, x, p).y, "output");
    sum(mul(y, Tensor::from_vector_f64(dy, y.shape()))).backward();
    const SeGrads g = se_backward_ref(d, k.inner, k.gate, x, p, dy);
    expect_loop_values(tx.grad(), g.dx, "dx");
    expect_loop_values(w1.grad(), g.dw1, "dw1");
    expect_loop_values(b1.grad(), g.db1, "db1");
    expect_loop_values(w2.grad(), g.dw2, "dw2");
    expect_loop_values(b2.grad(), g.db2, "db2");
  }
}

TEST(AttentionReferences, CpuCoordAttentionMatchesTheLoops) {
  std::mt19937_64 rng(20261127);
  for (const CaCase& k : kCaCases) {
    const CaDims& d = k.d;
    SCOPED_TRACE(ca_label(k));
    const Vec x = uniform_values(static_cast<size_t>(d.N) * d.H * d.W * d.C, rng), dy = uniform_values(x.size(), rng);
    const CaParams p = random_ca_params(d, rng);
    Tensor tx = leaf(x, {d.N, d.H, d.W, d.C}), w1 = leaf(p.w1, {d.mip, d.C}), b1 = leaf(p.b1, {d.mip}),
           wh = leaf(p.wh, {d.C, d.mip}), bh = leaf(p.bh, {d.C}), ww = leaf(p.ww, {d.C, d.mip}),
           bw = leaf(p.bw, {d.C});
    const Tensor y = coord_attention(tx, w1, b1, wh, bh, ww, bw, k.act);
    expect_loop_values(y, ca_forward_ref(d, k.act, x, p).y, "output");
    sum(mul(y, Tensor::from_vector_f64(dy, y.shape()))).backward();
    const CaGrads g = ca_backward_ref(d, k.act, x, p, dy);
    expect_loop_values(tx.grad(), g.dx, "dx");
    expect_loop_values(w1.grad(), g.dw1, "dw1");
    expect_loop_values(b1.grad(), g.db1, "db1");
    expect_loop_values(wh.grad(), g.dwh, "dwh");
    expect_loop_values(bh.grad(), g.dbh, "dbh");
    expect_loop_values(ww.grad(), g.dww, "dww");
    expect_loop_values(bw.grad(), g.dbw, "dbw");
  }
}

}  // namespace
}  // namespace kestrel

#if !defined(KESTREL_HAVE_CUDA)

TEST(CudaKernels, SkippedBecauseThisBuildHasNoCuda) {
  GTEST_SKIP() << "Kestrel was built without CUDA (nvcc not found or KESTREL_CUDA=OFF)";
}

#else

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/cuda/runtime.h"
#include "engine/half.h"
#include "engine/ops/elementwise.h"
#include "engine/tensor.h"
#include "kernels/batch_norm_act.h"
#include "kernels/coord_attention.h"
#include "kernels/depthwise_conv.h"
#include "kernels/elementwise.h"
#include "kernels/fused_optim.h"
#include "kernels/ghost.h"
#include "kernels/softmax_xent.h"
#include "kernels/squeeze_excite.h"

namespace kestrel {
namespace {

using kernels::KAct;
using kernels::KDType;

// The engine converts Activation to KAct with a static_cast.
static_assert(static_cast<int>(Activation::None) == static_cast<int>(KAct::None));
static_assert(static_cast<int>(Activation::ReLU6) == static_cast<int>(KAct::ReLU6));
static_assert(static_cast<int>(Activation::HardSwish) == static_cast<int>(KAct::HardSwish));
static_assert(static_cast<int>(Activation::GELU) == static_cast<int>(KAct::GELU));

const KDType kAllTypes[] = {KDType::F32, KDType::F16, KDType::BF16};

struct Tol {
  double atol, rtol;
};
Tol tol_for(KDType t, double reduction_len = 1.0) {
  const double s = std::sqrt(std::max(1.0, reduction_len));
  switch (t) {
    case KDType::F32: return {1e-4 * s, 1e-4};
    case KDType::F16: return {2e-3 * s, 5e-3};
    case KDType::BF16: return {1.6e-2 * s, 2e-2};
  }
  return {0, 0};
}

uint64_t test_seed() {
  static const uint64_t seed = [] {
    const char* env = std::getenv("KESTREL_TEST_SEED");
    if (env != nullptr && *env != '\0') return static_cast<uint64_t>(std::strtoull(env, nullptr, 10));
    return static_cast<uint64_t>(std::random_device{}());
  }();
  return seed;
}

// Rounds through the dtype so the reference sees the values the GPU sees.
double round_to(KDType t, double v) {
  const float f = static_cast<float>(v);
  if (t == KDType::F16) return static_cast<float>(Half(f));
  if (t == KDType::BF16) return static_cast<float>(BFloat16(f));
  return f;
}

std::vector<double> random_values(size_t n, KDType t, std::mt19937_64& rng, double lo = -1.0, double hi = 1.0) {
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<double> v(n);
  for (auto& x : v) x = round_to(t, d(rng));
  return v;
}

double act_ref(KAct a, double x) { return act_ref(static_cast<Activation>(a), x); }
double act_grad_ref(KAct a, double x) { return act_grad_ref(static_cast<Activation>(a), x); }
const char* act_label(KAct a) {
  static const char* names[] = {"none", "relu", "relu6", "sigmoid", "tanh", "silu", "hswish", "hsigmoid", "gelu"};
  return names[static_cast<int>(a)];
}

// ---- device buffers (through the caching allocator, so it is exercised too)
class Buf {
 public:
  Buf() = default;
  Buf(size_t elems, KDType t) : Buf(elems * static_cast<size_t>(kernels::kdtype_size(t))) { type_ = t; count_ = elems; }
  explicit Buf(size_t bytes) : bytes_(bytes) {
    if (bytes_ > 0) ptr_ = cuda::device_allocate(bytes_);
  }
  ~Buf() { if (ptr_ != nullptr) cuda::device_free(ptr_); }
  Buf(Buf&& o) noexcept { *this = std::move(o); }
  Buf& operator=(Buf&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    std::swap(type_, o.type_);
    std::swap(count_, o.count_);
    return *this;
  }
  void* get() const { return ptr_; }
  float* f32() const { return static_cast<float*>(ptr_); }
  size_t bytes() const { return bytes_; }

  void poison() const { KESTREL_CUDA_CHECK(cudaMemset(ptr_, 0xff, bytes_)); }  // NaN in f32, f16, bf16
  void upload(const std::vector<double>& v) const {
    EXPECT_LE(v.size(), count_);
    std::vector<uint8_t> host(v.size() * kernels::kdtype_size(type_));
    for (size_t i = 0; i < v.size(); ++i) {
      const float f = static_cast<float>(v[i]);
      if (type_ == KDType::F32) {
        std::memcpy(host.data() + 4 * i, &f, 4);
      } else {
        const uint16_t b = type_ == KDType::F16 ? Half(f).bits : BFloat16(f).bits;
        std::memcpy(host.data() + 2 * i, &b, 2);
      }
    }
    KESTREL_CUDA_CHECK(cudaMemcpy(ptr_, host.data(), host.size(), cudaMemcpyHostToDevice));
  }
  std::vector<double> download() const { return download(count_); }
  std::vector<double> download(size_t n) const {
    KESTREL_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<uint8_t> host(n * kernels::kdtype_size(type_));
    KESTREL_CUDA_CHECK(cudaMemcpy(host.data(), ptr_, host.size(), cudaMemcpyDeviceToHost));
    std::vector<double> v(n);
    for (size_t i = 0; i < n; ++i) {
      if (type_ == KDType::F32) {
        float f;
        std::memcpy(&f, host.data() + 4 * i, 4);
        v[i] = f;
      } else {
        uint16_t b;
        std::memcpy(&b, host.data() + 2 * i, 2);
        v[i] = type_ == KDType::F16 ? Half::to_float(b) : BFloat16::to_float(b);
      }
    }
    return v;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  KDType type_ = KDType::F32;
  size_t count_ = 0;
};

Buf upload(const std::vector<double>& v, KDType t) {
  Buf b(v.size(), t);
  b.upload(v);
  return b;
}

// Fails with the worst element, where it was, and the tolerance.
void expect_near_all(const std::vector<double>& got, const std::vector<double>& want, Tol tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double worst = -1;
  size_t worst_i = 0;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(got[i] - want[i]);
    const double lim = tol.atol + tol.rtol * std::fabs(want[i]);
    const bool fail = !(err <= lim);  // NaN fails
    if (fail) ++bad;
    const double excess = std::isnan(err) ? 1e300 : err - lim;
    if (excess > worst || worst < 0) {
      worst = excess;
      worst_i = i;
    }
  }
  if (bad > 0) {
    ADD_FAILURE() << what << ": " << bad << " of " << got.size() << " elements out of tolerance; worst at index "
                  << worst_i << ": got " << got[worst_i] << ", want " << want[worst_i] << " (atol " << tol.atol
                  << ", rtol " << tol.rtol << "); seed " << test_seed();
  }
}

void check_launch(cudaError_t e, const std::string& what) {
  ASSERT_EQ(e, cudaSuccess) << what << ": " << cudaGetErrorString(e);
  const cudaError_t s = cudaDeviceSynchronize();
  ASSERT_EQ(s, cudaSuccess) << what << " (at synchronize): " << cudaGetErrorString(s);
}

class CudaKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda::cuda_available()) GTEST_SKIP() << "no usable CUDA device: " << cuda::unavailable_reason();
    rng_.seed(test_seed() + std::hash<std::string>()(
                                ::testing::UnitTest::GetInstance()->current_test_info()->name()));
  }
  std::mt19937_64 rng_;
};

// ================================================================ runtime

TEST(CudaRuntime, AllocationBucketsWasteAtMostAQuarterAbove4KiB) {
  for (size_t n : {size_t{1}, size_t{511}, size_t{513}, size_t{4097}, size_t{1} << 20, (size_t{1} << 20) + 1,
                   size_t{123456789}}) {
    const size_t b = cuda::allocation_bucket(n);
    EXPECT_GE(b, n);
    EXPECT_LE(b, n <= 4096 ? n + 511 : n + n / 4 + 1) << n;
    EXPECT_EQ(cuda::allocation_bucket(b), b) << "bucket sizes must be fixed points, n=" << n;
  }
}

TEST(CudaRuntime, FailedCallRaisesDeviceErrorNamingTheCallAndContext) {
  try {
    KESTREL_CUDA_CHECK_CTX(static_cast<cudaError_t>(cudaErrorInvalidValue), "depthwise_conv2d x [8,32,32,96]");
    FAIL() << "no exception";
  } catch (const DeviceError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("cudaErrorInvalidValue"), std::string::npos) << msg;
    EXPECT_NE(msg.find("static_cast<cudaError_t>"), std::string::npos) << msg;
    EXPECT_NE(msg.find("depthwise_conv2d x [8,32,32,96]"), std::string::npos) << msg;
  }
}

TEST(CudaRuntime, AvailabilityQueryNeverThrows) {
  EXPECT_NO_THROW((void)cuda::cuda_available());
  EXPECT_EQ(cuda::cuda_available(), cuda::device_count() > 0);
  if (!cuda::cuda_available()) {
    EXPECT_FALSE(cuda::unavailable_reason().empty());
  }
}

TEST_F(CudaKernels, SmallUploadsAreStagedSoTheHostBufferIsFreeAtOnce) {
  // 300 uploads (more than the 256 kept in flight) of sizes on both sides of
  // the 1 MiB staging limit, each host buffer overwritten right after its
  // copy returns: every device tensor still holds what was copied.
  std::vector<Tensor> on_device;
  std::vector<std::vector<float>> expected;
  for (int i = 0; i < 300; ++i) {
    const int64_t n = i % 50 == 0 ? (int64_t{1} << 18) + 3 : 1 + i % 37;  // 1 MiB + 12 bytes, or a few floats
    std::vector<float> values(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) values[static_cast<size_t>(k)] = static_cast<float>(i * 1000 + k % 1000);
    Tensor host = Tensor::from_vector(values, {n});
    on_device.push_back(host.to(Device::cuda()));
    std::fill(host.data<float>(), host.data<float>() + n, -1.0f);  // the source may be reused at once
    expected.push_back(std::move(values));
  }
  for (size_t i = 0; i < on_device.size(); ++i)
    ASSERT_EQ(on_device[i].cpu().to_vector(), expected[i]) << "upload " << i;
}

TEST_F(CudaKernels, CachingAllocatorReusesFreedBlocksAndTracksStats) {
  cuda::empty_cache();
  const cuda::AllocatorStats s0 = cuda::allocator_stats();
  void* a = cuda::device_allocate(1000000);
  const cuda::AllocatorStats s1 = cuda::allocator_stats();
  // Caching rounds to a size class; KESTREL_CUDA_NO_CACHE=1 allocates exactly.
  EXPECT_EQ(s1.allocated - s0.allocated, cuda::caching_enabled() ? cuda::allocation_bucket(1000000) : 1000000);
  EXPECT_GE(s1.peak_allocated, s1.allocated);
  cuda::device_free(a);
  void* b = cuda::device_allocate(999999);  // same bucket, same stream
  if (cuda::caching_enabled()) {
    EXPECT_EQ(a, b) << "a freed block of the same size class should be reused";
    EXPECT_GT(cuda::allocator_stats().cache_hits, s1.cache_hits);
  }
  cuda::device_free(b);
  EXPECT_EQ(cuda::allocator_stats().allocated, s0.allocated);
  cuda::empty_cache();
  EXPECT_EQ(cuda::allocator_stats().reserved, s0.reserved);
}

// The side stream is held busy by a host function waiting on `gate`: a block
// it used must not be handed out again until the gate opens and it passes.
TEST_F(CudaKernels, BlockUsedOnAnotherStreamIsNotReusedBeforeThatStreamPasses) {
  if (!cuda::caching_enabled()) GTEST_SKIP() << "KESTREL_CUDA_NO_CACHE: blocks go back to cudaFree, none is reused";
  cuda::Stream side = cuda::Stream::create();
  std::promise<void> gate;
  std::shared_future<void> opened = gate.get_future().share();
  ASSERT_EQ(cudaLaunchHostFunc(
                side.handle(), [](void* f) { static_cast<std::shared_future<void>*>(f)->wait(); }, &opened),
            cudaSuccess);
  struct OpenOnExit {  // a failed assertion must not leave the stream blocked for good
    std::promise<void>& gate;
    bool open = false;
    void release() {
      if (!open) gate.set_value();
      open = true;
    }
    ~OpenOnExit() { release(); }
  } opener{gate};

  void* a = cuda::device_allocate(1 << 20);
  cuda::record_stream(a, side.handle());
  cuda::device_free(a);
  EXPECT_FALSE(side.query()) << "the host function holds the side stream";
  void* b = cuda::device_allocate(1 << 20);
  EXPECT_NE(a, b) << "a block was reused while a stream it was recorded on had not reached its free";
  opener.release();
  side.synchronize();
  void* c = cuda::device_allocate(1 << 20);  // the pending free has completed: the block is reused
  EXPECT_EQ(a, c) << "a block whose streams have all passed goes back to the cache";
  cuda::device_free(b);
  cuda::device_free(c);
}

TEST_F(CudaKernels, TensorsRoundTripThroughTheRegisteredAllocator) {
  Tensor t = Tensor::from_vector({1.f, -2.f, 3.5f, 7.f, 0.25f}, {5});
  Tensor g = t.to(Device::cuda(0));
  EXPECT_TRUE(g.device().is_cuda());
  EXPECT_EQ(g.cpu().to_vector(), t.to_vector());
}

TEST_F(CudaKernels, PinnedBuffersCopyAsynchronously) {
  const size_t n = 4097;
  cuda::PinnedBuffer host(n * 4), back(n * 4);
  for (size_t i = 0; i < n; ++i) static_cast<float*>(host.data())[i] = static_cast<float>(i) * 0.5f;
  Buf dev(n, KDType::F32);
  cuda::Stream s = cuda::Stream::create();
  cuda::copy_async(dev.get(), Device::cuda(0), host.data(), Device::cpu(), n * 4, s.handle());
  cuda::copy_async(back.data(), Device::cpu(), dev.get(), Device::cuda(0), n * 4, s.handle());
  s.synchronize();
  EXPECT_EQ(std::memcmp(host.data(), back.data(), n * 4), 0);
}

// ================================================================ depthwise

struct DwCase {
  int N, H, W, C, KH, KW, stride, dil;
};
const DwCase kDwCases[] = {
    {1, 7, 7, 8, 3, 3, 1, 1},    {2, 33, 33, 13, 3, 3, 2, 1}, {1, 1, 1, 16, 3, 3, 1, 1},
    {3, 7, 9, 24, 5, 5, 1, 2},   {2, 14, 14, 32, 7, 7, 2, 1}, {1, 33, 33, 6, 5, 5, 2, 3},
    {2, 8, 8, 64, 3, 3, 1, 1},   {1, 9, 7, 40, 3, 5, 1, 1},   {2, 16, 16, 96, 3, 3, 1, 3},
};

kernels::DepthwiseConvShape dw_shape(const DwCase& c) {
  kernels::DepthwiseConvShape s;
  s.N = c.N; s.H = c.H; s.W = c.W; s.C = c.C;
  s.KH = c.KH; s.KW = c.KW;
  s.stride_h = s.stride_w = c.stride;
  s.dil_h = s.dil_w = c.dil;
  s.pad_h = c.dil * (c.KH - 1) / 2;
  s.pad_w = c.dil * (c.KW - 1) / 2;
  return s;
}

std::string dw_label(const DwCase& c, KDType t) {
  std::ostringstream o;
  o << kernels::kdtype_name(t) << " x [" << c.N << "," << c.H << "," << c.W << "," << c.C << "] k" << c.KH << "x"
    << c.KW << " s" << c.stride << " d" << c.dil;
  return o.str();
}

// Reference on pitched buffers: y[p*yp + c] = sum x[q*xp + c] * w[c][kh][kw] (+ bias).
std::vector<double> dw_forward_ref(const kernels::DepthwiseConvShape& s, const std::vector<double>& x,
                                   const std::vector<double>& w, const std::vector<double>* bias,
                                   std::vector<double> y) {
  const int OH = s.OH(), OW = s.OW();
  for (int n = 0; n < s.N; ++n)
    for (int oh = 0; oh < OH; ++oh)
      for (int ow = 0; ow < OW; ++ow)
        for (int c = 0; c < s.C; ++c) {
          double acc = bias != nullptr ? (*bias)[c] : 0.0;
          for (int kh = 0; kh < s.KH; ++kh)
            for (int kw = 0; kw < s.KW; ++kw) {
              const int ih = oh * s.stride_h - s.pad_h + kh * s.dil_h, iw = ow * s.stride_w - s.pad_w + kw * s.dil_w;
              if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
              acc += x[((static_cast<size_t>(n) * s.H + ih) * s.W + iw) * s.xp() + c] *
                     w[(static_cast<size_t>(c) * s.KH + kh) * s.KW + kw];
            }
          y[((static_cast<size_t>(n) * OH + oh) * OW + ow) * s.yp() + c] = acc;
        }
  return y;
}

// dx (pitched, accumulated onto dx_init) and dw, db from dy.
void dw_backward_ref(const kernels::DepthwiseConvShape& s, const std::vector<double>& x, const std::vector<double>& w,
                     const std::vector<double>& dy, std::vector<double>& dx, std::vector<double>& dw,
                     std::vector<double>& db) {
  const int OH = s.OH(), OW = s.OW();
  dw.assign(static_cast<size_t>(s.C) * s.KH * s.KW, 0.0);
  db.assign(s.C, 0.0);
  for (int n = 0; n < s.N; ++n)
    for (int oh = 0; oh < OH; ++oh)
      for (int ow = 0; ow < OW; ++ow)
        for (int c = 0; c < s.C; ++c) {
          const double g = dy[((static_cast<size_t>(n) * OH + oh) * OW + ow) * s.yp() + c];
          db[c] += g;
          for (int kh = 0; kh < s.KH; ++kh)
            for (int kw = 0; kw < s.KW; ++kw) {
              const int ih = oh * s.stride_h - s.pad_h + kh * s.dil_h, iw = ow * s.stride_w - s.pad_w + kw * s.dil_w;
              if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
              const size_t xi = ((static_cast<size_t>(n) * s.H + ih) * s.W + iw) * s.xp() + c;
              const size_t wi = (static_cast<size_t>(c) * s.KH + kh) * s.KW + kw;
              dx[xi] += g * w[wi];
              dw[wi] += g * x[xi];
            }
        }
}

// Without and with bias, and with the activation epilogue (after the bias).
TEST_F(CudaKernels, DepthwiseForwardMatchesCpuLoop) {
  struct Epilogue {
    bool bias;
    KAct act;
  };
  const Epilogue epilogues[] = {{false, KAct::None},
                                {true, KAct::None},
                                {true, KAct::ReLU6},
                                {true, KAct::HardSwish},
                                {true, KAct::SiLU}};
  for (const DwCase& c : kDwCases)
    for (KDType t : kAllTypes)
      for (const Epilogue& ep : epilogues) {
        auto s = dw_shape(c);
        s.act = ep.act;
        std::string label = dw_label(c, t) + (ep.bias ? " +bias" : "");
        if (ep.act != KAct::None) label += std::string(" ") + act_label(ep.act);
        SCOPED_TRACE(label);
        const size_t nx = static_cast<size_t>(s.N) * s.H * s.W * s.C, ny = static_cast<size_t>(s.N) * s.OH() * s.OW() * s.C;
        const auto x = random_values(nx, t, rng_), w = random_values(static_cast<size_t>(s.C) * s.KH * s.KW, t, rng_),
                   b = random_values(s.C, t, rng_);
        Buf dx = upload(x, t), dwt = upload(w, t), db = upload(b, t), dy(ny, t);
        dy.poison();
        check_launch(kernels::depthwise_conv2d_forward(t, s, dx.get(), dwt.get(), ep.bias ? db.get() : nullptr,
                                                       dy.get(), nullptr),
                     label);
        std::vector<double> want = dw_forward_ref(s, x, w, ep.bias ? &b : nullptr, std::vector<double>(ny));
        for (double& v : want) v = act_ref(ep.act, v);
        expect_near_all(dy.download(), want, tol_for(t, s.KH * s.KW), "forward " + label);
      }
}

TEST_F(CudaKernels, DepthwiseBackwardRefusesAnActivationEpilogue) {
  // The backward launchers do not see the pre-activation: they refuse an epilogue.
  auto s = dw_shape(kDwCases[0]);
  s.act = KAct::ReLU;
  Buf any(size_t{1} << 16);
  EXPECT_EQ(kernels::depthwise_conv2d_backward_data(KDType::F32, s, any.get(), any.get(), any.get(), false, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(kernels::depthwise_conv2d_backward_weight(KDType::F32, s, any.get(), any.get(), any.get(), nullptr,
                                                      any.get(), nullptr),
            cudaErrorInvalidValue);
}

TEST_F(CudaKernels, DepthwiseBackwardDataAndWeightMatchCpuLoop) {
  for (const DwCase& c : kDwCases)
    for (KDType t : kAllTypes) {
      const auto s = dw_shape(c);
      const std::string label = dw_label(c, t);
      SCOPED_TRACE(label);
      const size_t nx = static_cast<size_t>(s.N) * s.H * s.W * s.C, ny = static_cast<size_t>(s.N) * s.OH() * s.OW() * s.C;
      const size_t nw = static_cast<size_t>(s.C) * s.KH * s.KW;
      const auto x = random_values(nx, t, rng_), w = random_values(nw, t, rng_), g = random_values(ny, t, rng_);
      std::vector<double> want_dx(nx, 0.0), want_dw, want_db;
      dw_backward_ref(s, x, w, g, want_dx, want_dw, want_db);

      Buf bx = upload(x, t), bw = upload(w, t), bg = upload(g, t), bdx(nx, t), bdw(nw, t), bdb(s.C, t);
      Buf ws(kernels::depthwise_conv2d_backward_weight_workspace_bytes(s));
      bdx.poison();
      bdw.poison();
      bdb.poison();
      ws.poison();
      check_launch(kernels::depthwise_conv2d_backward_data(t, s, bg.get(), bw.get(), bdx.get(), false, nullptr), label);
      expect_near_all(bdx.download(), want_dx, tol_for(t, s.KH * s.KW), "backward data " + label);
      check_launch(kernels::depthwise_conv2d_backward_weight(t, s, bx.get(), bg.get(), bdw.get(), bdb.get(), ws.get(),
                                                             nullptr),
                   label);
      const double len = static_cast<double>(s.N) * s.OH() * s.OW();
      expect_near_all(bdw.download(), want_dw, tol_for(t, len), "backward weight " + label);
      expect_near_all(bdb.download(), want_db, tol_for(t, len), "backward bias " + label);

      // accumulate mode adds onto what is there
      const auto base = random_values(nx, t, rng_);
      bdx.upload(base);
      check_launch(kernels::depthwise_conv2d_backward_data(t, s, bg.get(), bw.get(), bdx.get(), true, nullptr), label);
      std::vector<double> want_acc(nx);
      for (size_t i = 0; i < nx; ++i) want_acc[i] = base[i] + want_dx[i];
      expect_near_all(bdx.download(), want_acc, tol_for(t, s.KH * s.KW + 1), "backward data accumulate " + label);
    }
}

// ================================================================ ghost

TEST_F(CudaKernels, GhostCheapOpWritesSecondHalfInPlaceAndBackwardAccumulatesIntoFirst) {
  struct G { int N, H, W, Cp, Cout, K; };
  for (const G& gc : {G{1, 7, 7, 8, 16, 3}, G{2, 33, 33, 13, 24, 3}, G{1, 1, 1, 16, 32, 5}, G{2, 9, 9, 40, 80, 3}})
    for (KDType t : kAllTypes) {
      kernels::GhostShape g{gc.N, gc.H, gc.W, gc.Cp, gc.Cout, gc.K};
      const auto s = kernels::ghost_depthwise_shape(g);
      std::ostringstream lab;
      lab << kernels::kdtype_name(t) << " ghost [" << gc.N << "," << gc.H << "," << gc.W << "] " << gc.Cp << "->"
          << gc.Cout << " k" << gc.K;
      SCOPED_TRACE(lab.str());
      const size_t pix = static_cast<size_t>(g.N) * g.H * g.W, n = pix * g.C_out;
      const size_t nw = static_cast<size_t>(g.C_cheap()) * g.K * g.K;
      auto out = random_values(n, t, rng_);
      for (size_t p = 0; p < pix; ++p)
        for (int c = g.C_primary; c < g.C_out; ++c) out[p * g.C_out + c] = std::nan("");
      const auto w = random_values(nw, t, rng_);
      Buf bo = upload(out, t), bw = upload(w, t);
      check_launch(kernels::ghost_cheap_forward(t, g, bo.get(), bw.get(), nullptr, nullptr), lab.str());
      // expected: primary half untouched, cheap half = depthwise of first C_cheap primary channels
      const auto want = dw_forward_ref(s, out, w, nullptr, out);
      std::vector<double> shifted(want);  // dw_forward_ref wrote at channel offset 0; move to C_primary
      for (size_t p = 0; p < pix; ++p)
        for (int c = 0; c < g.C_out; ++c)
          shifted[p * g.C_out + c] =
              c < g.C_primary ? out[p * g.C_out + c] : want[p * g.C_out + (c - g.C_primary)];
      const auto got_out = bo.download();
      expect_near_all(got_out, shifted, tol_for(t, g.K * g.K), "ghost forward " + lab.str());

      // backward, in place on dout
      const auto dout = random_values(n, t, rng_);
      std::vector<double> cheap_dy(n, 0.0);
      for (size_t p = 0; p < pix; ++p)
        for (int c = 0; c < g.C_cheap(); ++c) cheap_dy[p * g.C_out + c] = dout[p * g.C_out + g.C_primary + c];
      std::vector<double> dx(n, 0.0), dw, db;
      dw_backward_ref(s, shifted, w, cheap_dy, dx, dw, db);
      std::vector<double> want_dout(dout);
      for (size_t p = 0; p < pix; ++p)
        for (int c = 0; c < g.C_cheap(); ++c) want_dout[p * g.C_out + c] += dx[p * g.C_out + c];
      Buf bd = upload(dout, t), bdw(nw, t), ws(kernels::ghost_cheap_backward_workspace_bytes(g));
      bdw.poison();
      check_launch(kernels::ghost_cheap_backward(t, g, bo.get(), bd.get(), bw.get(), bdw.get(), nullptr, ws.get(),
                                                 nullptr),
                   lab.str());
      expect_near_all(bd.download(), want_dout, tol_for(t, g.K * g.K + 1), "ghost backward dout " + lab.str());
      expect_near_all(bdw.download(), dw, tol_for(t, static_cast<double>(pix)), "ghost backward dw " + lab.str());
    }
}

// ================================================================ batch norm + act

struct BnRef {
  std::vector<double> y, mean, invstd, rmean, rvar;
};
BnRef bn_forward_ref(int64_t M, int C, const std::vector<double>& x, const std::vector<double>* res,
                     const std::vector<double>& gamma, const std::vector<double>& beta, std::vector<double> rmean,
                     std::vector<double> rvar, double eps, double mom, KAct act) {
  BnRef r;
  r.y.resize(x.size());
  r.mean.assign(C, 0.0);
  r.invstd.assign(C, 0.0);
  for (int c = 0; c < C; ++c) {
    double m = 0, v = 0;
    for (int64_t i = 0; i < M; ++i) m += x[i * C + c];
    m /= M;
    for (int64_t i = 0; i < M; ++i) v += (x[i * C + c] - m) * (x[i * C + c] - m);
    const double var = v / M;
    r.mean[c] = m;
    r.invstd[c] = 1 / std::sqrt(var + eps);
    rmean[c] = (1 - mom) * rmean[c] + mom * m;
    rvar[c] = (1 - mom) * rvar[c] + mom * v / (M - 1);
    for (int64_t i = 0; i < M; ++i) {
      const double z = gamma[c] * (x[i * C + c] - m) * r.invstd[c] + beta[c] + (res != nullptr ? (*res)[i * C + c] : 0);
      r.y[i * C + c] = act_ref(act, z);
    }
  }
  r.rmean = rmean;
  r.rvar = rvar;
  return r;
}

// Re-draws inputs whose pre-activation lies within 1e-3 of a kink of `act`
// (relu at 0, hardswish at +-3): there the f32 GPU and the f64 reference may
// take different branches and the comparison would measure rounding, not bugs.
void avoid_kinks(int64_t M, int C, std::vector<double>& x, const std::vector<double>* res,
                 const std::vector<double>& gamma, const std::vector<double>& beta, double eps, KAct act, KDType t,
                 std::mt19937_64& rng) {
  std::vector<double> kinks;
  if (act == KAct::ReLU) kinks = {0.0};
  if (act == KAct::HardSwish) kinks = {-3.0, 3.0};
  if (kinks.empty()) return;
  std::uniform_real_distribution<double> d(-2.0, 3.0);
  for (int round = 0; round < 20; ++round) {
    bool changed = false;
    for (int c = 0; c < C; ++c) {
      double m = 0, v = 0;
      for (int64_t i = 0; i < M; ++i) m += x[i * C + c];
      m /= M;
      for (int64_t i = 0; i < M; ++i) v += (x[i * C + c] - m) * (x[i * C + c] - m);
      const double invstd = 1 / std::sqrt(v / M + eps);
      for (int64_t i = 0; i < M; ++i) {
        const size_t e = static_cast<size_t>(i) * C + c;
        const double z = gamma[c] * (x[e] - m) * invstd + beta[c] + (res != nullptr ? (*res)[e] : 0);
        for (double k : kinks)
          if (std::fabs(z - k) < 1e-3) {
            x[e] = round_to(t, d(rng));
            changed = true;
          }
      }
    }
    if (!changed) return;
  }
}

TEST_F(CudaKernels, BatchNormActTrainingForwardAndBackwardMatchCpuLoop) {
  struct B { int64_t M; int C; };
  for (const B& bc : {B{2, 8}, B{7, 3}, B{98, 13}, B{2 * 33 * 33, 24}, B{49, 64}, B{4096, 1}})
    for (KDType t : kAllTypes)
      for (KAct act : {KAct::None, KAct::ReLU, KAct::SiLU, KAct::HardSwish})
        for (bool with_res : {false, true}) {
          std::ostringstream lab;
          lab << kernels::kdtype_name(t) << " bn [" << bc.M << "," << bc.C << "] " << act_label(act)
              << (with_res ? " +residual" : "");
          SCOPED_TRACE(lab.str());
          const int64_t M = bc.M;
          const int C = bc.C;
          const size_t n = static_cast<size_t>(M) * C;
          auto x = random_values(n, t, rng_, -2.0, 3.0);
          const auto res = random_values(n, t, rng_);
          const auto gamma = random_values(C, KDType::F32, rng_, 0.5, 1.5), beta = random_values(C, KDType::F32, rng_);
          const auto rm0 = random_values(C, KDType::F32, rng_), rv0 = random_values(C, KDType::F32, rng_, 0.5, 2.0);
          const double eps = 1e-5, mom = 0.1;
          avoid_kinks(M, C, x, with_res ? &res : nullptr, gamma, beta, eps, act, t, rng_);
          const BnRef ref = bn_forward_ref(M, C, x, with_res ? &res : nullptr, gamma, beta, rm0, rv0, eps, mom, act);

          kernels::BatchNormShape s{M, C};
          kernels::BatchNormActArgs a{static_cast<float>(eps), static_cast<float>(mom), act};
          Buf bx = upload(x, t), bres = upload(res, t), by(n, t), bg = upload(gamma, KDType::F32),
              bb = upload(beta, KDType::F32), brm = upload(rm0, KDType::F32), brv = upload(rv0, KDType::F32),
              bsm(C, KDType::F32), bsi(C, KDType::F32), ws(kernels::batch_norm_act_workspace_bytes(s));
          by.poison();
          bsm.poison();
          bsi.poison();
          ws.poison();
          check_launch(kernels::batch_norm_act_forward_training(t, s, a, bx.get(), with_res ? bres.get() : nullptr,
                                                                bg.f32(), bb.f32(), brm.f32(), brv.f32(), bsm.f32(),
                                                                bsi.f32(), by.get(), ws.get(), nullptr),
                       lab.str());
          const Tol ft = tol_for(KDType::F32, static_cast<double>(M));
          expect_near_all(bsm.download(), ref.mean, ft, "saved mean " + lab.str());
          expect_near_all(bsi.download(), ref.invstd, {ft.atol * 10, 1e-3}, "saved invstd " + lab.str());
          expect_near_all(brm.download(), ref.rmean, ft, "running mean " + lab.str());
          expect_near_all(brv.download(), ref.rvar, {ft.atol, 1e-3}, "running var " + lab.str());
          const Tol yt = tol_for(t, 4);
          expect_near_all(by.download(), ref.y, {yt.atol, yt.rtol + 1e-3}, "y " + lab.str());

          // backward (f64 reference on the same inputs)
          const auto dy = random_values(n, t, rng_);
          std::vector<double> dz(n), dx(n), dgamma(C, 0.0), dbeta(C, 0.0);
          for (int c = 0; c < C; ++c) {
            for (int64_t i = 0; i < M; ++i) {
              const size_t e = static_cast<size_t>(i) * C + c;
              const double xhat = (x[e] - ref.mean[c]) * ref.invstd[c];
              const double z = gamma[c] * xhat + beta[c] + (with_res ? res[e] : 0);
              dz[e] = dy[e] * act_grad_ref(act, z);
              dbeta[c] += dz[e];
              dgamma[c] += dz[e] * xhat;
            }
            for (int64_t i = 0; i < M; ++i) {
              const size_t e = static_cast<size_t>(i) * C + c;
              const double xhat = (x[e] - ref.mean[c]) * ref.invstd[c];
              dx[e] = gamma[c] * ref.invstd[c] * (dz[e] - dbeta[c] / M - xhat * dgamma[c] / M);
            }
          }
          Buf bdy = upload(dy, t), bdx(n, t), bdres(n, t), bdg(C, KDType::F32), bdb(C, KDType::F32);
          bdx.poison();
          bdres.poison();
          bdg.poison();
          bdb.poison();
          check_launch(kernels::batch_norm_act_backward(t, s, a, bdy.get(), bx.get(), with_res ? bres.get() : nullptr,
                                                        bg.f32(), bb.f32(), bsm.f32(), bsi.f32(), bdx.get(),
                                                        with_res ? bdres.get() : nullptr, bdg.f32(), bdb.f32(),
                                                        ws.get(), nullptr),
                       lab.str());
          const Tol rt = tol_for(t, static_cast<double>(M));
          expect_near_all(bdb.download(), dbeta, {rt.atol, 1e-3}, "dbeta " + lab.str());
          expect_near_all(bdg.download(), dgamma, {rt.atol, 1e-3}, "dgamma " + lab.str());
          expect_near_all(bdx.download(), dx, {tol_for(t, 16).atol, 1e-2}, "dx " + lab.str());
          if (with_res) expect_near_all(bdres.download(), dz, tol_for(t, 4), "dresidual " + lab.str());
        }
}

TEST_F(CudaKernels, BatchNormActInferenceUsesRunningStatistics) {
  for (KDType t : kAllTypes) {
    const int64_t M = 5 * 7 * 7;
    const int C = 19;
    const size_t n = static_cast<size_t>(M) * C;
    const auto x = random_values(n, t, rng_, -2, 2);
    const auto gamma = random_values(C, KDType::F32, rng_), beta = random_values(C, KDType::F32, rng_);
    const auto rm = random_values(C, KDType::F32, rng_), rv = random_values(C, KDType::F32, rng_, 0.2, 2);
    std::vector<double> want(n);
    for (int64_t i = 0; i < M; ++i)
      for (int c = 0; c < C; ++c)
        want[i * C + c] = act_ref(KAct::ReLU6, gamma[c] * (x[i * C + c] - rm[c]) / std::sqrt(rv[c] + 1e-5) + beta[c]);
    kernels::BatchNormShape s{M, C};
    kernels::BatchNormActArgs a{1e-5f, 0.1f, KAct::ReLU6};
    Buf bx = upload(x, t), by(n, t), bg = upload(gamma, KDType::F32), bb = upload(beta, KDType::F32),
        brm = upload(rm, KDType::F32), brv = upload(rv, KDType::F32), ws(kernels::batch_norm_act_workspace_bytes(s));
    by.poison();
    check_launch(kernels::batch_norm_act_forward_inference(t, s, a, bx.get(), nullptr, bg.f32(), bb.f32(), brm.f32(),
                                                           brv.f32(), by.get(), ws.get(), nullptr),
                 kernels::kdtype_name(t));
    expect_near_all(by.download(), want, tol_for(t, 4), std::string("bn inference ") + kernels::kdtype_name(t));
  }
}

// ================================================================ squeeze-excite, coordinate attention

TEST_F(CudaKernels, SqueezeExciteForwardMatchesCpuLoop) {
  struct S { int N, HW, C, Cr; KAct inner, gate; };
  for (const S& sc : {S{1, 1, 8, 2, KAct::ReLU, KAct::Sigmoid}, S{2, 49, 13, 4, KAct::SiLU, KAct::Sigmoid},
                      S{3, 1089, 40, 10, KAct::ReLU, KAct::HardSigmoid}, S{2, 7, 100, 25, KAct::SiLU, KAct::Sigmoid},
                      S{1, 4096, 16, 4, KAct::ReLU, KAct::HardSigmoid}})
    for (KDType t : kAllTypes) {
      std::ostringstream lab;
      lab << kernels::kdtype_name(t) << " se [" << sc.N << "," << sc.HW << "," << sc.C << "] r" << sc.Cr;
      SCOPED_TRACE(lab.str());
      const size_t n = static_cast<size_t>(sc.N) * sc.HW * sc.C;
      const auto x = random_values(n, t, rng_);
      const auto w1 = random_values(static_cast<size_t>(sc.Cr) * sc.C, t, rng_), b1 = random_values(sc.Cr, t, rng_);
      const auto w2 = random_values(static_cast<size_t>(sc.C) * sc.Cr, t, rng_), b2 = random_values(sc.C, t, rng_);
      std::vector<double> want(n);
      for (int b = 0; b < sc.N; ++b) {
        std::vector<double> pooled(sc.C, 0.0), hid(sc.Cr), scale(sc.C);
        for (int p = 0; p < sc.HW; ++p)
          for (int c = 0; c < sc.C; ++c) pooled[c] += x[(static_cast<size_t>(b) * sc.HW + p) * sc.C + c] / sc.HW;
        for (int j = 0; j < sc.Cr; ++j) {
          double a = b1[j];
          for (int c = 0; c < sc.C; ++c) a += w1[static_cast<size_t>(j) * sc.C + c] * pooled[c];
          hid[j] = act_ref(sc.inner, a);
        }
        for (int c = 0; c < sc.C; ++c) {
          double a = b2[c];
          for (int j = 0; j < sc.Cr; ++j) a += w2[static_cast<size_t>(c) * sc.Cr + j] * hid[j];
          scale[c] = act_ref(sc.gate, a);
        }
        for (int p = 0; p < sc.HW; ++p)
          for (int c = 0; c < sc.C; ++c) {
            const size_t e = (static_cast<size_t>(b) * sc.HW + p) * sc.C + c;
            want[e] = x[e] * scale[c];
          }
      }
      kernels::SqueezeExciteShape s{sc.N, sc.HW, sc.C, sc.Cr};
      Buf bx = upload(x, t), bw1 = upload(w1, t), bb1 = upload(b1, t), bw2 = upload(w2, t), bb2 = upload(b2, t),
          by(n, t), ws(kernels::squeeze_excite_workspace_bytes(s));
      by.poison();
      ws.poison();
      check_launch(kernels::squeeze_excite_forward(t, s, sc.inner, sc.gate, bx.get(), bw1.get(), bb1.get(), bw2.get(),
                                                   bb2.get(), by.get(), ws.get(), nullptr),
                   lab.str());
      expect_near_all(by.download(), want, {tol_for(t, sc.C).atol, tol_for(t).rtol + 1e-3}, "se " + lab.str());
    }
}

TEST_F(CudaKernels, CoordAttentionForwardMatchesCpuLoop) {
  struct S { int N, H, W, C, mip; };
  for (const S& sc : {S{1, 1, 1, 8, 8}, S{2, 7, 7, 16, 8}, S{1, 33, 33, 13, 8}, S{2, 5, 9, 24, 12}, S{1, 14, 14, 64, 16}})
    for (KDType t : kAllTypes) {
      std::ostringstream lab;
      lab << kernels::kdtype_name(t) << " ca [" << sc.N << "," << sc.H << "," << sc.W << "," << sc.C << "] mip"
          << sc.mip;
      SCOPED_TRACE(lab.str());
      const int N = sc.N, H = sc.H, W = sc.W, C = sc.C, mip = sc.mip, L = H + W;
      const size_t n = static_cast<size_t>(N) * H * W * C;
      const auto x = random_values(n, t, rng_);
      const auto w1 = random_values(static_cast<size_t>(mip) * C, t, rng_), b1 = random_values(mip, t, rng_);
      const auto wh = random_values(static_cast<size_t>(C) * mip, t, rng_), bh = random_values(C, t, rng_);
      const auto ww = random_values(static_cast<size_t>(C) * mip, t, rng_), bw = random_values(C, t, rng_);
      std::vector<double> want(n);
      for (int b = 0; b < N; ++b) {
        std::vector<double> pooled(static_cast<size_t>(L) * C, 0.0), gates(static_cast<size_t>(L) * C);
        auto X = [&](int h, int w, int c) { return x[((static_cast<size_t>(b) * H + h) * W + w) * C + c]; };
        for (int h = 0; h < H; ++h)
          for (int w = 0; w < W; ++w)
            for (int c = 0; c < C; ++c) {
              pooled[static_cast<size_t>(h) * C + c] += X(h, w, c) / W;
              pooled[static_cast<size_t>(H + w) * C + c] += X(h, w, c) / H;
            }
        for (int p = 0; p < L; ++p) {
          std::vector<double> tv(mip);
          for (int j = 0; j < mip; ++j) {
            double a = b1[j];
            for (int c = 0; c < C; ++c) a += w1[static_cast<size_t>(j) * C + c] * pooled[static_cast<size_t>(p) * C + c];
            tv[j] = act_ref(KAct::HardSwish, a);
          }
          const auto& wg = p < H ? wh : ww;
          const auto& bg = p < H ? bh : bw;
          for (int c = 0; c < C; ++c) {
            double a = bg[c];
            for (int j = 0; j < mip; ++j) a += wg[static_cast<size_t>(c) * mip + j] * tv[j];
            gates[static_cast<size_t>(p) * C + c] = act_ref(KAct::Sigmoid, a);
          }
        }
        for (int h = 0; h < H; ++h)
          for (int w = 0; w < W; ++w)
            for (int c = 0; c < C; ++c)
              want[((static_cast<size_t>(b) * H + h) * W + w) * C + c] =
                  X(h, w, c) * gates[static_cast<size_t>(h) * C + c] * gates[static_cast<size_t>(H + w) * C + c];
      }
      kernels::CoordAttentionShape s{N, H, W, C, mip};
      Buf bx = upload(x, t), bw1 = upload(w1, t), bb1 = upload(b1, t), bwh = upload(wh, t), bbh = upload(bh, t),
          bww = upload(ww, t), bbw = upload(bw, t), by(n, t), ws(kernels::coord_attention_workspace_bytes(s));
      by.poison();
      ws.poison();
      check_launch(kernels::coord_attention_forward(t, s, KAct::HardSwish, bx.get(), bw1.get(), bb1.get(), bwh.get(),
                                                    bbh.get(), bww.get(), bbw.get(), by.get(), ws.get(), nullptr),
                   lab.str());
      expect_near_all(by.download(), want, {tol_for(t, C).atol, tol_for(t).rtol + 1e-3}, "ca " + lab.str());
    }
}

// ---- backward passes (references: se_backward_ref / ca_backward_ref above,
// proven against finite differences by AttentionReferences.*)

// Parameter types each activation type is tested with: its own and f32.
std::vector<KDType> param_types(KDType t) {
  if (t == KDType::F32) return {KDType::F32};
  return {t, KDType::F32};
}

// atol scaled by the largest |ref| of the tensor (see the file header).
Tol scaled_tol(KDType t, const std::vector<double>& ref) {
  double m = 1e-3;
  for (double v : ref) m = std::max(m, std::fabs(v));
  const Tol b = tol_for(t);
  return {b.atol * m, b.rtol};
}

std::vector<double> download_f32(const float* p, size_t n) {
  KESTREL_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> h(n);
  KESTREL_CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(float), cudaMemcpyDeviceToHost));
  return std::vector<double>(h.begin(), h.end());
}

// Re-draws biases until no pre-activation lies within 1e-3 of a kink of its
// activation (there f32 and f64 may take different branches of act').
void se_avoid_kinks(const SeDims& d, Activation inner, Activation gate, const Vec& x, SeParams& p, KDType pt,
                    std::mt19937_64& rng) {
  for (int round = 0; round < 50; ++round) {
    const SeForward f = se_forward_ref(d, inner, gate, x, p);
    bool moved = false;
    for (int n = 0; n < d.N; ++n) {
      for (int j = 0; j < d.Cr; ++j)
        if (near_kink(inner, f.hidden[static_cast<size_t>(n) * d.Cr + j], 1e-3)) {
          p.b1[j] = random_values(1, pt, rng)[0];
          moved = true;
        }
      for (int c = 0; c < d.C; ++c)
        if (near_kink(gate, se_gate_input(d, p, inner, f.hidden, n, c), 1e-3)) {
          p.b2[c] = random_values(1, pt, rng, -2, 2)[0];
          moved = true;
        }
    }
    if (!moved) return;
  }
}

TEST_F(CudaKernels, SqueezeExciteBackwardMatchesCpuLoopAndIsReproducible) {
  const KAct inners[] = {KAct::ReLU, KAct::SiLU, KAct::HardSwish};
  const KAct gates[] = {KAct::Sigmoid, KAct::HardSigmoid};
  int variant = 0;
  for (int N : {1, 3})
    for (int C : {7, 16, 96})
      for (int HW : {1, 49, 1089})
        for (int ratio : {4, 16}) {
          const int Cr = std::max(1, C / ratio);
          const KAct inner = inners[variant % 3], gate = gates[variant % 2];
          ++variant;
          const Activation ai = static_cast<Activation>(inner), ag = static_cast<Activation>(gate);
          for (KDType t : kAllTypes)
            for (KDType pt : param_types(t)) {
              std::ostringstream lab;
              lab << kernels::kdtype_name(t) << " (params " << kernels::kdtype_name(pt) << ") se [" << N << "," << HW
                  << "," << C << "] r" << Cr << " " << act_label(inner) << "/" << act_label(gate);
              SCOPED_TRACE(lab.str());
              const SeDims d{N, HW, C, Cr};
              const size_t n = static_cast<size_t>(N) * HW * C, nw = static_cast<size_t>(C) * Cr;
              const auto x = random_values(n, t, rng_), dy = random_values(n, t, rng_);
              SeParams p{random_values(nw, pt, rng_), random_values(Cr, pt, rng_), random_values(nw, pt, rng_, -2, 2),
                         random_values(C, pt, rng_, -2, 2)};
              se_avoid_kinks(d, ai, ag, x, p, pt, rng_);
              const SeForward f = se_forward_ref(d, ai, ag, x, p);
              const SeGrads g = se_backward_ref(d, ai, ag, x, p, dy);

              const kernels::SqueezeExciteShape s{N, HW, C, Cr};
              Buf bx = upload(x, t), bdy = upload(dy, t), bw1 = upload(p.w1, pt), bb1 = upload(p.b1, pt),
                  bw2 = upload(p.w2, pt), bb2 = upload(p.b2, pt), by(n, t),
                  fws(kernels::squeeze_excite_workspace_bytes(s));
              by.poison();
              fws.poison();
              check_launch(kernels::squeeze_excite_forward(t, pt, s, inner, gate, bx.get(), bw1.get(), bb1.get(),
                                                           bw2.get(), bb2.get(), by.get(), fws.get(), nullptr),
                           lab.str());
              expect_near_all(by.download(), f.y, {tol_for(t, C).atol, tol_for(t).rtol + 1e-3}, "y " + lab.str());
              const kernels::SqueezeExciteSaved sv = kernels::squeeze_excite_saved(s, fws.get());
              expect_near_all(download_f32(sv.pooled, f.pooled.size()), f.pooled, scaled_tol(KDType::F32, f.pooled),
                              "saved pooled " + lab.str());
              expect_near_all(download_f32(sv.hidden, f.hidden.size()), f.hidden, scaled_tol(KDType::F32, f.hidden),
                              "saved hidden " + lab.str());
              expect_near_all(download_f32(sv.scale, f.scale.size()), f.scale, scaled_tol(KDType::F32, f.scale),
                              "saved scale " + lab.str());

              Buf bdx(n, t), bdw1(nw, pt), bdb1(Cr, pt), bdw2(nw, pt), bdb2(C, pt),
                  bws(kernels::squeeze_excite_backward_workspace_bytes(s));
              auto run_backward = [&](const Buf& grad_in, const Buf& grad_out) {
                for (const Buf* b : std::initializer_list<const Buf*>{&grad_out, &bdw1, &bdb1, &bdw2, &bdb2, &bws})
                  if (b != &grad_in) b->poison();
                check_launch(kernels::squeeze_excite_backward(t, pt, s, inner, gate, grad_in.get(), bx.get(), bw1.get(),
                                                              bw2.get(), bb2.get(), fws.get(), grad_out.get(),
                                                              bdw1.get(), bdb1.get(), bdw2.get(), bdb2.get(), bws.get(),
                                                              nullptr),
                             lab.str());
                return std::vector<std::vector<double>>{grad_out.download(), bdw1.download(), bdb1.download(),
                                                        bdw2.download(), bdb2.download()};
              };
              const auto got = run_backward(bdy, bdx);
              expect_near_all(got[0], g.dx, scaled_tol(t, g.dx), "dx " + lab.str());
              expect_near_all(got[1], g.dw1, scaled_tol(pt, g.dw1), "dw1 " + lab.str());
              expect_near_all(got[2], g.db1, scaled_tol(pt, g.db1), "db1 " + lab.str());
              expect_near_all(got[3], g.dw2, scaled_tol(pt, g.dw2), "dw2 " + lab.str());
              expect_near_all(got[4], g.db2, scaled_tol(pt, g.db2), "db2 " + lab.str());
              // Again with dx written over dy: bit-identical results.
              Buf bdy_in_place = upload(dy, t);
              EXPECT_EQ(run_backward(bdy_in_place, bdy_in_place), got) << "second backward (in place) differs";
            }
        }
}

void ca_avoid_kinks(const CaDims& d, Activation act, const Vec& x, CaParams& p, KDType pt, std::mt19937_64& rng) {
  for (int round = 0; round < 50; ++round) {
    const CaForward f = ca_forward_ref(d, act, x, p);
    bool moved = false;
    for (size_t i = 0; i < f.hidden.size(); ++i)
      if (near_kink(act, f.hidden[i], 1e-3)) {
        p.b1[i % d.mip] = random_values(1, pt, rng)[0];
        moved = true;
      }
    if (!moved) return;
  }
}

TEST_F(CudaKernels, CoordAttentionBackwardMatchesCpuLoopAndIsReproducible) {
  struct Spatial { int H, W; };
  const KAct acts[] = {KAct::HardSwish, KAct::ReLU, KAct::SiLU};
  int variant = 0;
  for (int N : {1, 3})
    for (int C : {7, 16, 96})
      for (const Spatial& hw : {Spatial{1, 1}, Spatial{7, 7}, Spatial{33, 33}, Spatial{5, 9}})
        for (int mip : {std::max(8, C / 32), std::max(1, C / 4)}) {
          const KAct act = acts[variant++ % 3];
          const Activation aa = static_cast<Activation>(act);
          const int H = hw.H, W = hw.W;
          for (KDType t : kAllTypes)
            for (KDType pt : param_types(t)) {
              std::ostringstream lab;
              lab << kernels::kdtype_name(t) << " (params " << kernels::kdtype_name(pt) << ") ca [" << N << "," << H
                  << "," << W << "," << C << "] mip" << mip << " " << act_label(act);
              SCOPED_TRACE(lab.str());
              const CaDims d{N, H, W, C, mip};
              const size_t n = static_cast<size_t>(N) * H * W * C, nw = static_cast<size_t>(C) * mip;
              const auto x = random_values(n, t, rng_), dy = random_values(n, t, rng_);
              CaParams p{random_values(nw, pt, rng_, -2, 2), random_values(mip, pt, rng_, -2, 2),
                         random_values(nw, pt, rng_), random_values(C, pt, rng_), random_values(nw, pt, rng_),
                         random_values(C, pt, rng_)};
              ca_avoid_kinks(d, aa, x, p, pt, rng_);
              const CaForward f = ca_forward_ref(d, aa, x, p);
              const CaGrads g = ca_backward_ref(d, aa, x, p, dy);

              const kernels::CoordAttentionShape s{N, H, W, C, mip};
              Buf bx = upload(x, t), bw1 = upload(p.w1, pt), bb1 = upload(p.b1, pt), bwh = upload(p.wh, pt),
                  bbh = upload(p.bh, pt), bww = upload(p.ww, pt), bbw = upload(p.bw, pt), by(n, t),
                  fws(kernels::coord_attention_workspace_bytes(s));
              by.poison();
              fws.poison();
              check_launch(kernels::coord_attention_forward(t, pt, s, act, bx.get(), bw1.get(), bb1.get(), bwh.get(),
                                                            bbh.get(), bww.get(), bbw.get(), by.get(), fws.get(),
                                                            nullptr),
                           lab.str());
              expect_near_all(by.download(), f.y, {tol_for(t, C).atol, tol_for(t).rtol + 1e-3}, "y " + lab.str());
              const kernels::CoordAttentionSaved sv = kernels::coord_attention_saved(s, fws.get());
              expect_near_all(download_f32(sv.pooled, f.pooled.size()), f.pooled, scaled_tol(KDType::F32, f.pooled),
                              "saved pooled " + lab.str());
              expect_near_all(download_f32(sv.hidden, f.hidden.size()), f.hidden, scaled_tol(KDType::F32, f.hidden),
                              "saved hidden " + lab.str());
              expect_near_all(download_f32(sv.gates, f.gates.size()), f.gates, scaled_tol(KDType::F32, f.gates),
                              "saved gates " + lab.str());

              Buf bdx(n, t), bdw1(nw, pt), bdb1(mip, pt), bdwh(nw, pt), bdbh(C, pt), bdww(nw, pt), bdbw(C, pt),
                  bws(kernels::coord_attention_backward_workspace_bytes(s));
              auto run_backward = [&](const Buf& grad_in, const Buf& grad_out) {
                for (const Buf* b : std::initializer_list<const Buf*>{&grad_out, &bdw1, &bdb1, &bdwh, &bdbh, &bdww, &bdbw, &bws})
                  if (b != &grad_in) b->poison();
                check_launch(kernels::coord_attention_backward(t, pt, s, act, grad_in.get(), bx.get(), bw1.get(),
                                                               bwh.get(), bww.get(), fws.get(), grad_out.get(),
                                                               bdw1.get(), bdb1.get(), bdwh.get(), bdbh.get(),
                                                               bdww.get(), bdbw.get(), bws.get(), nullptr),
                             lab.str());
                return std::vector<std::vector<double>>{grad_out.download(), bdw1.download(), bdb1.download(),
                                                        bdwh.download(), bdbh.download(), bdww.download(),
                                                        bdbw.download()};
              };
              const Buf bdy = upload(dy, t);
              const auto got = run_backward(bdy, bdx);
              expect_near_all(got[0], g.dx, scaled_tol(t, g.dx), "dx " + lab.str());
              expect_near_all(got[1], g.dw1, scaled_tol(pt, g.dw1), "dw1 " + lab.str());
              expect_near_all(got[2], g.db1, scaled_tol(pt, g.db1), "db1 " + lab.str());
              expect_near_all(got[3], g.dwh, scaled_tol(pt, g.dwh), "dwh " + lab.str());
              expect_near_all(got[4], g.dbh, scaled_tol(pt, g.dbh), "dbh " + lab.str());
              expect_near_all(got[5], g.dww, scaled_tol(pt, g.dww), "dww " + lab.str());
              expect_near_all(got[6], g.dbw, scaled_tol(pt, g.dbw), "dbw " + lab.str());
              Buf bdy_in_place = upload(dy, t);
              EXPECT_EQ(run_backward(bdy_in_place, bdy_in_place), got) << "second backward (in place) differs";
            }
        }
}

TEST_F(CudaKernels, AttentionLaunchersRejectBadArguments) {
  kernels::SqueezeExciteShape se{2, 4, 8, 0};
  Buf ws(1024);
  EXPECT_EQ(kernels::squeeze_excite_forward(KDType::F32, se, KAct::ReLU, KAct::Sigmoid, ws.get(), ws.get(), nullptr,
                                            ws.get(), nullptr, ws.get(), ws.get(), nullptr),
            cudaErrorInvalidValue);
  se.Cr = 2;
  EXPECT_EQ(kernels::squeeze_excite_forward(KDType::F16, KDType::BF16, se, KAct::ReLU, KAct::Sigmoid, ws.get(),
                                            ws.get(), nullptr, ws.get(), nullptr, ws.get(), ws.get(), nullptr),
            cudaErrorInvalidValue)
      << "parameters must be the activation type or f32";
  EXPECT_EQ(kernels::squeeze_excite_backward(KDType::F32, KDType::F32, se, KAct::ReLU, KAct::Sigmoid, ws.get(),
                                             ws.get(), ws.get(), ws.get(), nullptr, nullptr, ws.get(), nullptr,
                                             nullptr, nullptr, nullptr, ws.get(), nullptr),
            cudaErrorInvalidValue)
      << "missing forward workspace";
  kernels::CoordAttentionShape ca{1, 0, 3, 8, 8};
  EXPECT_EQ(kernels::coord_attention_backward(KDType::F32, KDType::F32, ca, KAct::ReLU, ws.get(), ws.get(), ws.get(),
                                              ws.get(), ws.get(), ws.get(), ws.get(), nullptr, nullptr, nullptr,
                                              nullptr, nullptr, nullptr, ws.get(), nullptr),
            cudaErrorInvalidValue);
}

// ================================================================ softmax cross-entropy

TEST_F(CudaKernels, SoftmaxCrossEntropyLossAndGradientMatchCpuLoop) {
  struct S { int B, K; };
  for (const S& sc : {S{1, 1}, S{4, 10}, S{3, 1000}, S{2, 1001}, S{33, 7}})
    for (KDType t : kAllTypes)
      for (int mode = 0; mode < 3; ++mode) {  // 0 hard, 1 hard + smoothing, 2 soft targets
        std::ostringstream lab;
        lab << kernels::kdtype_name(t) << " xent [" << sc.B << "," << sc.K << "] mode " << mode;
        SCOPED_TRACE(lab.str());
        const int B = sc.B, K = sc.K;
        const auto z = random_values(static_cast<size_t>(B) * K, t, rng_, -4, 4);
        std::vector<int32_t> labels(B);
        std::uniform_int_distribution<int> ld(0, K - 1);
        for (auto& l : labels) l = ld(rng_);
        auto soft = random_values(static_cast<size_t>(B) * K, KDType::F32, rng_, 0, 1);
        for (int b = 0; b < B; ++b) {
          double s = 0;
          for (int k = 0; k < K; ++k) s += soft[static_cast<size_t>(b) * K + k];
          for (int k = 0; k < K; ++k) soft[static_cast<size_t>(b) * K + k] = static_cast<float>(soft[static_cast<size_t>(b) * K + k] / s);
        }
        const double eps = mode == 1 ? 0.1 : 0.0, scale = 1.0 / B;
        std::vector<double> want_loss(B), want_grad(static_cast<size_t>(B) * K);
        for (int b = 0; b < B; ++b) {
          double m = -1e300, se = 0;
          for (int k = 0; k < K; ++k) m = std::max(m, z[static_cast<size_t>(b) * K + k]);
          for (int k = 0; k < K; ++k) se += std::exp(z[static_cast<size_t>(b) * K + k] - m);
          const double lse = m + std::log(se);
          double loss = 0;
          for (int k = 0; k < K; ++k) {
            const size_t e = static_cast<size_t>(b) * K + k;
            const double tk = mode == 2 ? soft[e] : eps / K + (k == labels[b] ? 1 - eps : 0);
            loss += tk * (lse - z[e]);
            want_grad[e] = (std::exp(z[e] - lse) - tk) * scale;
          }
          want_loss[b] = loss;
        }
        kernels::SoftmaxXentShape s{B, K};
        Buf bz = upload(z, t), bl(static_cast<size_t>(B) * 4), bs = upload(soft, KDType::F32), bloss(B, KDType::F32),
            bg(static_cast<size_t>(B) * K, t);
        KESTREL_CUDA_CHECK(cudaMemcpy(bl.get(), labels.data(), B * 4, cudaMemcpyHostToDevice));
        bloss.poison();
        bg.poison();
        check_launch(kernels::softmax_cross_entropy(t, s, bz.get(), mode == 2 ? nullptr : static_cast<int32_t*>(bl.get()),
                                                    mode == 2 ? bs.f32() : nullptr, static_cast<float>(eps),
                                                    static_cast<float>(scale), bloss.f32(), bg.get(), nullptr),
                     lab.str());
        expect_near_all(bloss.download(), want_loss, {1e-4 * std::sqrt(K) + 1e-4, 1e-4}, "loss " + lab.str());
        expect_near_all(bg.download(), want_grad, {tol_for(t).atol * scale, tol_for(t).rtol}, "dlogits " + lab.str());
      }
}

// ================================================================ fused optimizers

TEST_F(CudaKernels, MultiTensorSgdAndAdamWMatchTorchFormulasOverManyTensors) {
  std::vector<int64_t> sizes;
  for (int i = 0; i < 40; ++i) sizes.push_back(i % 4 == 0 ? 1 : (i % 4 == 1 ? 7 : (i % 4 == 2 ? 33 : 5000 + i)));
  sizes.push_back(70001);
  sizes.push_back(3 * 8192 * 120 + 5);  // one tensor spanning more than one launch table
  for (KDType gt : kAllTypes)
    for (int opt = 0; opt < 3; ++opt) {  // 0 sgd, 1 sgd nesterov + wd, 2 adamw
      std::ostringstream lab;
      lab << "grads " << kernels::kdtype_name(gt) << (opt == 0 ? " sgd" : opt == 1 ? " sgd-nesterov-wd" : " adamw");
      SCOPED_TRACE(lab.str());
      const int T = static_cast<int>(sizes.size());
      std::vector<std::vector<double>> p(T), m(T, std::vector<double>()), v(T);
      std::vector<Buf> bp, bg, bm, bv;
      std::vector<float*> pp, mp, vp;
      std::vector<const void*> gp;
      for (int i = 0; i < T; ++i) {
        p[i] = random_values(sizes[i], KDType::F32, rng_);
        m[i].assign(sizes[i], 0.0);
        v[i].assign(sizes[i], 0.0);
        bp.push_back(upload(p[i], KDType::F32));
        bm.push_back(upload(m[i], KDType::F32));
        bv.push_back(upload(v[i], KDType::F32));
        bg.emplace_back(sizes[i], gt);
        pp.push_back(bp.back().f32());
        mp.push_back(bm.back().f32());
        vp.push_back(bv.back().f32());
        gp.push_back(bg.back().get());
      }
      const double lr = 0.05, mom = 0.9, wd = opt == 1 ? 1e-2 : 0.0, gscale = 0.5;
      for (int step = 1; step <= 3; ++step) {
        for (int i = 0; i < T; ++i) {
          const auto g = random_values(sizes[i], gt, rng_);
          bg[i].upload(g);
          for (int64_t k = 0; k < sizes[i]; ++k) {
            const double gv = g[k] * gscale;
            if (opt < 2) {
              const double d = gv + wd * p[i][k];
              const double b = step == 1 ? d : mom * m[i][k] + d;
              m[i][k] = b;
              p[i][k] -= lr * (opt == 1 ? d + mom * b : b);
            } else {
              const double b1 = 0.9, b2 = 0.999, e = 1e-8, awd = 0.01;
              p[i][k] *= 1 - lr * awd;
              m[i][k] = b1 * m[i][k] + (1 - b1) * gv;
              v[i][k] = b2 * v[i][k] + (1 - b2) * gv * gv;
              const double mh = m[i][k] / (1 - std::pow(b1, step)), vh = v[i][k] / (1 - std::pow(b2, step));
              p[i][k] -= lr * mh / (std::sqrt(vh) + e);
            }
          }
        }
        if (opt < 2) {
          kernels::SgdArgs a;
          a.lr = static_cast<float>(lr);
          a.momentum = static_cast<float>(mom);
          a.weight_decay = static_cast<float>(wd);
          a.nesterov = opt == 1;
          a.first_step = step == 1;
          a.grad_scale = static_cast<float>(gscale);
          check_launch(kernels::sgd_momentum_multi(gt, T, pp.data(), gp.data(), mp.data(), sizes.data(), a, nullptr,
                                                   nullptr),
                       lab.str());
        } else {
          kernels::AdamWArgs a;
          a.lr = static_cast<float>(lr);
          a.weight_decay = 0.01f;
          a.step = step;
          a.grad_scale = static_cast<float>(gscale);
          check_launch(kernels::adamw_multi(gt, T, pp.data(), gp.data(), mp.data(), vp.data(), sizes.data(), a,
                                            nullptr, nullptr),
                       lab.str());
        }
      }
      for (int i = 0; i < T; ++i) expect_near_all(bp[i].download(), p[i], {2e-5, 1e-4}, lab.str() + " param " + std::to_string(i));
    }
}

TEST_F(CudaKernels, OptimizerSkipsTheStepWhenTheOverflowFlagIsSet) {
  std::vector<double> p0 = random_values(100, KDType::F32, rng_);
  Buf p = upload(p0, KDType::F32), g = upload(random_values(100, KDType::F32, rng_), KDType::F32),
      m = upload(std::vector<double>(100, 0.0), KDType::F32), flag(4);
  const int one = 1;
  KESTREL_CUDA_CHECK(cudaMemcpy(flag.get(), &one, 4, cudaMemcpyHostToDevice));
  float* pp[] = {p.f32()};
  const void* gp[] = {g.get()};
  float* mp[] = {m.f32()};
  const int64_t n[] = {100};
  check_launch(kernels::sgd_momentum_multi(KDType::F32, 1, pp, gp, mp, n, kernels::SgdArgs{}, static_cast<int*>(flag.get()),
                                           nullptr),
               "sgd skip");
  expect_near_all(p.download(), p0, {0, 0}, "parameters after a skipped step");
}

// ================================================================ elementwise

// No GPU needed: the checks come before any CUDA call.
TEST(CudaKernelArguments, UnknownTypeTagsAndMissingBuffersAreRejectedBeforeAnyLaunch) {
  const KDType bogus = static_cast<KDType>(7);
  float dummy = 0.f;
  EXPECT_EQ(kernels::reduce_sum(bogus, 10, &dummy, &dummy, &dummy, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(kernels::find_nonfinite(KDType::F32, 10, &dummy, nullptr, nullptr), cudaErrorInvalidValue);
  float* params[] = {&dummy};
  const void* grads[] = {&dummy};
  float* state[] = {&dummy};
  const int64_t sizes[] = {1};
  EXPECT_EQ(kernels::sgd_momentum_multi(bogus, 1, params, grads, state, sizes, kernels::SgdArgs{}, nullptr, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(kernels::adamw_multi(bogus, 1, params, grads, state, state, sizes, kernels::AdamWArgs{}, nullptr, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(
      kernels::rmsprop_multi(bogus, 1, params, grads, state, state, sizes, kernels::RMSpropArgs{}, nullptr, nullptr),
      cudaErrorInvalidValue);
}


TEST_F(CudaKernels, ElementwiseKernelsMatchCpuLoopsIncludingTailsAndMisalignedPointers) {
  for (KDType t : kAllTypes)
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{1000003}})
      for (int offset : {0, 1}) {
        std::ostringstream lab;
        lab << kernels::kdtype_name(t) << " n=" << n << " offset=" << offset;
        SCOPED_TRACE(lab.str());
        const size_t es = kernels::kdtype_size(t);
        auto at = [&](const Buf& b) { return static_cast<void*>(static_cast<char*>(b.get()) + offset * es); };
        const auto x = random_values(static_cast<size_t>(n + offset), t, rng_, -5, 5);
        const auto dy = random_values(static_cast<size_t>(n + offset), t, rng_);
        Buf bx = upload(x, t), bdy = upload(dy, t), by(n + offset, t);
        for (int ai = 0; ai <= static_cast<int>(KAct::GELU); ++ai) {
          const KAct act = static_cast<KAct>(ai);
          std::vector<double> want(n + offset), wantg(n + offset);
          for (int64_t i = 0; i < n; ++i) {
            want[i + offset] = act_ref(act, x[i + offset]);
            wantg[i + offset] = dy[i + offset] * act_grad_ref(act, x[i + offset]);
          }
          by.poison();
          check_launch(kernels::activation_forward(t, n, act, at(bx), at(by), nullptr), lab.str());
          auto got = by.download();
          got.erase(got.begin(), got.begin() + offset);
          want.erase(want.begin(), want.begin() + offset);
          expect_near_all(got, want, tol_for(t, 2), std::string("act forward ") + act_label(act) + " " + lab.str());
          by.poison();
          check_launch(kernels::activation_backward(t, n, act, at(bdy), at(bx), at(by), nullptr), lab.str());
          got = by.download();
          got.erase(got.begin(), got.begin() + offset);
          wantg.erase(wantg.begin(), wantg.begin() + offset);
          expect_near_all(got, wantg, tol_for(t, 2), std::string("act backward ") + act_label(act) + " " + lab.str());
        }
        // axpby with beta = 0 must ignore a NaN-poisoned y
        by.poison();
        check_launch(kernels::axpby(t, n, 2.0f, at(bx), 0.0f, at(by), nullptr), lab.str());
        auto got = by.download();
        std::vector<double> want;
        for (int64_t i = 0; i < n; ++i) want.push_back(2.0 * x[i + offset]);
        got.erase(got.begin(), got.begin() + offset);
        expect_near_all(got, want, tol_for(t), "axpby " + lab.str());
        // cast to every type
        for (KDType dt : kAllTypes) {
          Buf out(n + offset, dt);
          out.poison();
          check_launch(kernels::cast(t, at(bx), dt, static_cast<char*>(out.get()) + offset * kernels::kdtype_size(dt),
                                     n, nullptr),
                       lab.str());
          auto g2 = out.download();
          g2.erase(g2.begin(), g2.begin() + offset);
          std::vector<double> w2;
          for (int64_t i = 0; i < n; ++i) w2.push_back(round_to(dt, x[i + offset]));
          expect_near_all(g2, w2, {0, 0}, std::string("cast to ") + kernels::kdtype_name(dt) + " " + lab.str());
        }
        // sum and non-finite detection
        Buf sum(1, KDType::F32), ws(kernels::reduce_sum_workspace_bytes(n)), flag(4);
        sum.poison();
        check_launch(kernels::reduce_sum(t, n, at(bx), sum.f32(), ws.get(), nullptr), lab.str());
        double want_sum = 0;
        for (int64_t i = 0; i < n; ++i) want_sum += x[i + offset];
        expect_near_all(sum.download(), {want_sum}, {1e-5 * std::sqrt(static_cast<double>(n)) * 5, 1e-5}, "sum " + lab.str());
        KESTREL_CUDA_CHECK(cudaMemset(flag.get(), 0, 4));
        check_launch(kernels::find_nonfinite(t, n, at(bx), static_cast<int*>(flag.get()), nullptr), lab.str());
        int host_flag = -1;
        KESTREL_CUDA_CHECK(cudaMemcpy(&host_flag, flag.get(), 4, cudaMemcpyDeviceToHost));
        EXPECT_EQ(host_flag, 0) << "finite input flagged";
        auto with_inf = x;
        with_inf[offset + n / 2] = INFINITY;
        bx.upload(with_inf);
        check_launch(kernels::find_nonfinite(t, n, at(bx), static_cast<int*>(flag.get()), nullptr), lab.str());
        KESTREL_CUDA_CHECK(cudaMemcpy(&host_flag, flag.get(), 4, cudaMemcpyDeviceToHost));
        EXPECT_EQ(host_flag, 1) << "inf not found";
      }
}

}  // namespace
}  // namespace kestrel

#endif  // KESTREL_HAVE_CUDA
