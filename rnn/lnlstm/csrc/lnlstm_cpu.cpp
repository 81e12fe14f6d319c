// Layer-norm LSTM recurrence on the CPU: the whole time loop of one layer, forward and backward.
//
// Why C++: at the small batches a CPU trains with (B 8-64), the PyTorch loop spends most of its
// time dispatching ~20 small ops per step, each allocating its output. Here each step is one
// matmul (R.h on oneDNN, see RowLinear) and one pass over each batch row that does LN_h, the
// bias, the gates, the cell, LN_c and the output together; the backward is one pass per row
// and one matmul per step.
//
// Layout: the input xgb [B, T, 4H] (LN_x(W_x x); the gate bias b is folded into LN_h's bias by the
// caller), dout and dz are batch-first like the module's tensors, so no transposed copy is
// needed; the saved states and per-step gradients are time-major, so each step's rows are one
// [B, .] matrix for the matmul. Gate order (i, f, g, o).
// The backward returns the per-step gradient da (dL/d(W_h h)); the recurrent weight gradient is
// one GEMM over all T after the loop, done by the caller (rnn/lnlstm/fused.py). The LayerNorm
// affine gradients are summed inside the loop while each row is in cache.
//
// The order of the tensors forward returns (and backward takes back) and of those backward
// returns is owned by the NamedTuples SavedTensors and KernelGrads in rnn/lnlstm/kernels.py;
// rnn/lnlstm/cpu.py (CppKernels) names them there. Change the order there and here together.
#include <torch/extension.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <mutex>
#include <tuple>
#include <cstdint>
#include <optional>
#include <vector>

namespace {

// exp for float32 that the compiler vectorises (no libm call in the loop): Cephes' expf,
// x = n ln2 + r with |r| <= ln2/2, a degree-6 polynomial for e^r, 2^n put into the exponent
// bits. Relative error about 2 ulp. Clamped to the finite range; NaN propagates through r.
inline float vexp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}
inline double vexp(double x) { return std::exp(x); }  // float64 is the checking path: libm

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + vexp(-x));
}
// tanh(x) = 1 - 2 / (1 + e^{2x}); float64 keeps libm's tanh.
inline float vtanh(float x) { return 1.0f - 2.0f / (1.0f + vexp(2.0f * x)); }
inline double vtanh(double x) { return std::tanh(x); }

// Sums with 16 independent accumulators, so the compiler vectorises them without reassociating.
constexpr int64_t kLanes = 16;
template <typename T>
inline double row_sum(const T* x, int64_t n) {
  T acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += x[k + l];
  double s = 0.0;
  for (; k < n; ++k) s += x[k];
  for (int64_t l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}
template <typename T>
inline double row_sq_dev(const T* x, T m, int64_t n) {
  T acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) {
      const T d = x[k + l] - m;
      acc[l] += d * d;
    }
  double s = 0.0;
  for (; k < n; ++k) s += double(x[k] - m) * double(x[k] - m);
  for (int64_t l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}
template <typename T>
inline double row_dot(const T* x, const T* y, int64_t n) {
  T acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += x[k + l] * y[k + l];
  double s = 0.0;
  for (; k < n; ++k) s += double(x[k]) * double(y[k]);
  for (int64_t l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

// x [M, K] @ w[N, K]^T -> [M, N]. Through oneDNN (mkldnn::_linear_pointwise, the op Inductor's
// CPU freezing uses) where the build has it: on the dev VM's AMD EPYC, MKL's sgemm took
// 745 us for [64, 384] x [384, 1536] and oneDNN 352 us (its own nn.LSTM runs on oneDNN too).
// Falls back to at::mm (MKL or OpenBLAS) when the op is missing or refuses the call.
struct RowLinear {
  using Fn = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                        c10::string_view, c10::List<std::optional<at::Scalar>>, std::optional<c10::string_view>);
  using PackFn = at::Tensor(const at::Tensor&, std::optional<int64_t>);
  std::optional<c10::TypedOperatorHandle<Fn>> op;
  std::optional<c10::TypedOperatorHandle<PackFn>> pack_op;
  RowLinear() {
    try {
      auto handle = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
      auto pack_handle = c10::Dispatcher::singleton().findSchema({"mkldnn::_reorder_linear_weight", ""});
      if (handle) op = handle->typed<Fn>();
      if (op && pack_handle) pack_op = pack_handle->typed<PackFn>();
    } catch (const std::exception&) {
      op.reset();
      pack_op.reset();
    }
  }
  // w [N, K] reordered once per call of the loop into oneDNN's blocked layout for `rows` rows:
  // at B 8 a step's matmul then took 94 us instead of 167 us (the reorder: ~0.4 ms, once per T steps).
  at::Tensor pack(const at::Tensor& w, int64_t rows) const {
    if (pack_op && w.scalar_type() == at::kFloat) {
      try {
        return pack_op->call(w, rows);
      } catch (const std::exception&) {
      }
    }
    return w;
  }
  at::Tensor operator()(const at::Tensor& x, const at::Tensor& w) const {
    if (w.is_mkldnn()) return op->call(x, w, std::nullopt, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
    if (op && x.scalar_type() == at::kFloat) {
      try {
        return op->call(x, w, std::nullopt, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
      } catch (const std::exception&) {
      }
    }
    return at::mm(x, w.t());
  }
};
const RowLinear& row_linear() {
  static const RowLinear instance;
  return instance;
}

// The per-step GEMM y = x W^T (x [B, K], W [N, K]) of a time loop, on whichever of three ways this
// machine runs fastest for the shape: oneDNN with W reordered once per loop, or MKL's sgemm
// (at::mm) reading W as [N, K] transposed or as a [K, N] copy. Neither library wins everywhere:
// on an AMD EPYC oneDNN was about 2x MKL here; on an Intel Xeon (Sapphire Rapids, 1 thread) MKL with
// the [K, N] copy took 183 us for [8, 512] x [512, 2048] against oneDNN's 236 us, while at
// [64, 384] x [384, 1536] oneDNN won (497 against 570 and 717 us). So the choice is timed once per
// (B, K, N, threads) in a process (a few dozen small GEMMs) and kept.
class StepGemm {
 public:
  StepGemm(const at::Tensor& w, int64_t rows) : w_(w), rows_(rows) {
    const auto key = std::make_tuple(rows, w.size(1), w.size(0), int64_t(at::get_num_threads()),
                                     int(w.scalar_type()));
    {
      std::lock_guard<std::mutex> guard(mutex());
      auto it = choices().find(key);
      if (it != choices().end()) kind_ = it->second;
    }
    if (w.scalar_type() != at::kFloat || !row_linear().op) {
      kind_ = kMm;  // float64 (the checking dtype), or no oneDNN: aten::mm
    } else if (kind_ < 0) {
      kind_ = time_choice(rows);
      std::lock_guard<std::mutex> guard(mutex());
      choices()[key] = kind_;
    }
    prepare();
  }
  at::Tensor operator()(const at::Tensor& x) const {
    switch (kind_) {
      case kOnednn: return row_linear()(x, packed_);
      case kMmCopy: return at::mm(x, wk_);
      default: return at::mm(x, w_.t());
    }
  }

 private:
  static constexpr int kOnednn = 0, kMm = 1, kMmCopy = 2;
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int>;
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static std::map<Key, int>& choices() {
    static std::map<Key, int> m;
    return m;
  }
  void prepare() {
    if (kind_ == kOnednn) packed_ = row_linear().pack(w_, rows_);
    if (kind_ == kMmCopy) wk_ = w_.t().contiguous();
  }
  int time_choice(int64_t rows) {
    packed_ = row_linear().pack(w_, rows);
    wk_ = w_.t().contiguous();
    const at::Tensor x = at::randn({rows, w_.size(1)}, w_.options());
    double best[3] = {1e30, 1e30, 1e30};
    for (int rep = 0; rep < 6; ++rep) {
      for (int kind = 0; kind < 3; ++kind) {
        kind_ = kind;
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < 3; ++i) (*this)(x);
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (rep > 0) best[kind] = std::min(best[kind], s);  // the first round warms all three up
      }
    }
    packed_ = at::Tensor();
    wk_ = at::Tensor();
    return int(std::min_element(best, best + 3) - best);
  }
  at::Tensor w_;
  int64_t rows_;
  at::Tensor packed_, wk_;
  int kind_ = -1;
};

// Normalise n values of x into xhat (xhat may alias x); returns 1/sqrt(var + eps). Two passes
// (mean, then squared deviations), as PyTorch's LayerNorm, so large means do not cancel.
template <typename T>
inline T normalize(const T* x, T* xhat, int64_t n, double eps) {
  const T m = T(row_sum(x, n) / double(n));
  const double var = row_sq_dev(x, m, n) / double(n);
  const T rstd = T(1.0 / std::sqrt(var + eps));
  for (int64_t k = 0; k < n; ++k) xhat[k] = (x[k] - m) * rstd;
  return rstd;
}

// LayerNorm backward for one row: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
template <typename T>
inline void ln_backward(const T* dxhat, const T* xhat, T rstd, int64_t n, T* dx) {
  const T a = T(row_sum(dxhat, n) / double(n)), b = T(row_dot(dxhat, xhat, n) / double(n));
  for (int64_t k = 0; k < n; ++k) dx[k] = rstd * (dxhat[k] - a - xhat[k] * b);
}

// One batch row of one step of the forward (__restrict__: see backward_row).
template <typename T>
inline void forward_row(int64_t H, const T* __restrict__ raw, const T* __restrict__ xr, const T* __restrict__ gh,
                        const T* __restrict__ bh, const T* __restrict__ gc, const T* __restrict__ bc, double eps,
                        const T* __restrict__ c_prev, T* __restrict__ a, T* __restrict__ g, T* __restrict__ c,
                        T* __restrict__ ch, T* __restrict__ tcr, T* __restrict__ h, T* __restrict__ rstd_a,
                        T* __restrict__ rstd_c) {
  const int64_t G = 4 * H;
  *rstd_a = normalize(raw, a, G, eps);
  for (int64_t k = 0; k < G; ++k) g[k] = xr[k] + a[k] * gh[k] + bh[k];  // pre-activations
  // One simple loop per activation, so each vectorises.
  for (int64_t k = 0; k < 2 * H; ++k) g[k] = sigmoid(g[k]);  // i, f
  for (int64_t k = 2 * H; k < 3 * H; ++k) g[k] = vtanh(g[k]);  // g
  for (int64_t k = 3 * H; k < G; ++k) g[k] = sigmoid(g[k]);  // o
  for (int64_t j = 0; j < H; ++j) c[j] = g[H + j] * c_prev[j] + g[j] * g[2 * H + j];
  *rstd_c = normalize(c, ch, H, eps);
  for (int64_t j = 0; j < H; ++j) {
    tcr[j] = vtanh(ch[j] * gc[j] + bc[j]);
    h[j] = g[3 * H + j] * tcr[j];
  }
}

template <typename T>
void forward_loop(const at::Tensor& xgb, const at::Tensor& w, const T* gh, const T* bh, const T* gc,
                  const T* bc, double eps, at::Tensor& hs, at::Tensor& cs, at::Tensor& gates,
                  at::Tensor& ahat, at::Tensor& rstd_a, at::Tensor& chat, at::Tensor& rstd_c,
                  at::Tensor& tc) {
  const int64_t B = xgb.size(0), T_ = xgb.size(1), G = xgb.size(2), H = G / 4;
  const T* x = xgb.data_ptr<T>();
  T* hp = hs.data_ptr<T>();
  T* cp = cs.data_ptr<T>();
  T* gp = gates.data_ptr<T>();
  T* ap = ahat.data_ptr<T>();
  T* rap = rstd_a.data_ptr<T>();
  T* chp = chat.data_ptr<T>();
  T* rcp = rstd_c.data_ptr<T>();
  T* tcp = tc.data_ptr<T>();
  const StepGemm gemm(w, B);
  for (int64_t t = 0; t < T_; ++t) {
    const at::Tensor raw = gemm(hs.select(0, t)).contiguous();  // [B, 4H]: W_h h_{t-1}
    const T* rawp = raw.data_ptr<T>();
    for (int64_t b = 0; b < B; ++b) {
      const int64_t rg = (t * B + b) * G, rh = (t * B + b) * H;
      forward_row<T>(H, rawp + b * G, x + (b * T_ + t) * G, gh, bh, gc, bc, eps, cp + rh, ap + rg, gp + rg, cp + rh + B * H,
                     chp + rh, tcp + rh, hp + rh + B * H, rap + t * B + b, rcp + t * B + b);
    }
  }
}

// One batch row of one step of the backward. __restrict__: every pointer is a different buffer,
// which lets GCC vectorise the loops without runtime alias checks (it gave up on them before).
template <typename T>
inline void backward_row(int64_t H, const T* __restrict__ g, const T* __restrict__ tcr, const T* __restrict__ ch,
                         T rstd_c, const T* __restrict__ dor, T* __restrict__ dhr, T* __restrict__ dcr,
                         T* __restrict__ dcnr, T* __restrict__ dzr, const T* __restrict__ c_prev,
                         const T* __restrict__ gc, const T* __restrict__ gh, const T* __restrict__ ahat, T rstd_a,
                         T* __restrict__ dar, T* __restrict__ dchat, T* __restrict__ dc_ln, T* __restrict__ dahat,
                         T* __restrict__ dgh, T* __restrict__ dbh, T* __restrict__ dgc, T* __restrict__ dbc) {
  // h = o * tanh(cn): d(cn), and d(chat) = d(cn) * gamma_c. dhr becomes dL/dh_t. The LayerNorm
  // affine gradients are summed here, while the row is in cache, instead of in a pass after the loop.
  for (int64_t j = 0; j < H; ++j) {
    const T dht = dor[j] + dhr[j];
    dhr[j] = dht;
    const T tv = tcr[j];
    dcnr[j] = dht * g[3 * H + j] * (T(1) - tv * tv);
    dchat[j] = dcnr[j] * gc[j];
    dgc[j] += dcnr[j] * ch[j];
    dbc[j] += dcnr[j];
  }
  ln_backward(dchat, ch, rstd_c, H, dc_ln);
  for (int64_t j = 0; j < H; ++j) {
    const T i = g[j], f = g[H + j], gg = g[2 * H + j], o = g[3 * H + j];
    const T dct = dcr[j] + dc_ln[j];
    dzr[j] = dct * gg * i * (T(1) - i);
    dzr[H + j] = dct * c_prev[j] * f * (T(1) - f);
    dzr[2 * H + j] = dct * i * (T(1) - gg * gg);
    dzr[3 * H + j] = dhr[j] * tcr[j] * o * (T(1) - o);
    dcr[j] = dct * f;  // dL/dc_{t-1}
  }
  // z = xgb + LN_h(a): d(ahat) = dz * gamma_h, then LN_h backward into da.
  for (int64_t k = 0; k < 4 * H; ++k) {
    dahat[k] = dzr[k] * gh[k];
    dgh[k] += dzr[k] * ahat[k];
    dbh[k] += dzr[k];
  }
  ln_backward(dahat, ahat, rstd_a, 4 * H, dar);
}

template <typename T>
void backward_loop(const at::Tensor& dout, const at::Tensor& w_t, const T* gh, const T* gc,
                   const at::Tensor& cs, const at::Tensor& gates, const at::Tensor& ahat,
                   const at::Tensor& rstd_a, const at::Tensor& chat, const at::Tensor& rstd_c,
                   const at::Tensor& tc, at::Tensor& dz, at::Tensor& da, at::Tensor& dh, at::Tensor& dc,
                   at::Tensor& dgh, at::Tensor& dbh, at::Tensor& dgc, at::Tensor& dbc) {
  const int64_t T_ = gates.size(0), B = gates.size(1), G = gates.size(2), H = G / 4;
  const T* dop = dout.data_ptr<T>();
  const T* cp = cs.data_ptr<T>();
  const T* gp = gates.data_ptr<T>();
  const T* ap = ahat.data_ptr<T>();
  const T* rap = rstd_a.data_ptr<T>();
  const T* chp = chat.data_ptr<T>();
  const T* rcp = rstd_c.data_ptr<T>();
  const T* tcp = tc.data_ptr<T>();
  T* dzp = dz.data_ptr<T>();
  T* dap = da.data_ptr<T>();
  T* dghp = dgh.data_ptr<T>();
  T* dbhp = dbh.data_ptr<T>();
  T* dgcp = dgc.data_ptr<T>();
  T* dbcp = dbc.data_ptr<T>();
  // dh [B, H]: dL/dh_t from later steps (replaced by a new tensor each step).
  T* dcp = dc.data_ptr<T>();  // [B, H]: dL/dc_t from later steps, then dL/dc_{t-1}
  std::vector<T> t1(H), t2(H), t3(G), dcn(H);
  const StepGemm gemm(w_t, B);
  for (int64_t t = T_ - 1; t >= 0; --t) {
    dh = dh.contiguous();
    T* dhp = dh.data_ptr<T>();
    for (int64_t b = 0; b < B; ++b) {
      const int64_t rg = (t * B + b) * G, rh = (t * B + b) * H;
      backward_row<T>(H, gp + rg, tcp + rh, chp + rh, rcp[t * B + b], dop + (b * T_ + t) * H, dhp + b * H,
                      dcp + b * H, dcn.data(), dzp + (b * T_ + t) * G, cp + rh, gc, gh, ap + rg, rap[t * B + b],
                      dap + rg, t1.data(), t2.data(), t3.data(), dghp, dbhp, dgcp, dbcp);
    }
    dh = gemm(da.select(0, t));  // dL/dh_{t-1} = da_t W_h
  }
}

void check(const at::Tensor& x, const char* name, const at::Tensor& like) {
  TORCH_CHECK(x.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(x.scalar_type() == like.scalar_type(), name, " must have dtype ", like.scalar_type());
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
}

}  // namespace

// xgb [B, T, 4H]. Returns, in SavedTensors' order: hs [T+1, B, H] (hs[0] = h0), cs [T+1, B, H],
// gates [T, B, 4H] (activated), ahat [T, B, 4H], rstd_a [T, B], chat [T, B, H], rstd_c [T, B],
// tc [T, B, H] (tanh(LN_c(c))).
std::vector<at::Tensor> lnlstm_forward(const at::Tensor& xgb, const at::Tensor& h0, const at::Tensor& c0,
                                       const at::Tensor& w, const at::Tensor& gh, const at::Tensor& bh,
                                       const at::Tensor& gc, const at::Tensor& bc, double eps) {
  for (auto& [x, n] : std::vector<std::pair<at::Tensor, const char*>>{
           {xgb, "xgb"}, {h0, "h0"}, {c0, "c0"}, {w, "w_hh"}, {gh, "ln_h.weight"}, {bh, "ln_h.bias"},
           {gc, "ln_c.weight"}, {bc, "ln_c.bias"}})
    check(x, n, xgb);
  at::NoGradGuard no_grad;
  const int64_t B = xgb.size(0), T_ = xgb.size(1), G = xgb.size(2), H = G / 4;
  auto opts = xgb.options();
  at::Tensor hs = at::empty({T_ + 1, B, H}, opts), cs = at::empty({T_ + 1, B, H}, opts);
  hs.select(0, 0).copy_(h0);
  cs.select(0, 0).copy_(c0);
  at::Tensor gates = at::empty({T_, B, G}, opts), ahat = at::empty({T_, B, G}, opts);
  at::Tensor rstd_a = at::empty({T_, B}, opts), rstd_c = at::empty({T_, B}, opts);
  at::Tensor chat = at::empty({T_, B, H}, opts), tc = at::empty({T_, B, H}, opts);
  AT_DISPATCH_FLOATING_TYPES(xgb.scalar_type(), "lnlstm_forward", [&] {
    forward_loop<scalar_t>(xgb, w, gh.data_ptr<scalar_t>(), bh.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(),
                           bc.data_ptr<scalar_t>(), eps, hs, cs, gates, ahat, rstd_a, chat, rstd_c, tc);
  });
  return {hs, cs, gates, ahat, rstd_a, chat, rstd_c, tc};
}

// dout [B, T, H], dhT/dcT [B, H], w, gh, gc, then SavedTensors' fields after hs, in their order.
// Returns, in KernelGrads' order: dz [B, T, 4H] (= dL/dxgb), da [T, B, 4H] (dL/d(W_h h)), dh0, dc0,
// and the gradients of LN_h's gain and bias and LN_c's gain and bias.
std::vector<at::Tensor> lnlstm_backward(const at::Tensor& dout, const at::Tensor& dhT, const at::Tensor& dcT,
                                        const at::Tensor& w, const at::Tensor& gh, const at::Tensor& gc,
                                        const at::Tensor& cs, const at::Tensor& gates, const at::Tensor& ahat,
                                        const at::Tensor& rstd_a, const at::Tensor& chat, const at::Tensor& rstd_c,
                                        const at::Tensor& tc) {
  for (auto& [x, n] : std::vector<std::pair<at::Tensor, const char*>>{
           {dout, "dout"}, {dhT, "dhT"}, {dcT, "dcT"}, {w, "w_hh"}, {gh, "ln_h.weight"}, {gc, "ln_c.weight"},
           {cs, "cs"}, {gates, "gates"}, {ahat, "ahat"}, {chat, "chat"}, {tc, "tc"}})
    check(x, n, gates);
  at::NoGradGuard no_grad;
  const int64_t T_ = gates.size(0), B = gates.size(1), G = gates.size(2), H = G / 4;
  at::Tensor dz = at::empty({B, T_, G}, gates.options()), da = at::empty_like(gates);
  at::Tensor dh = dhT.clone(), dc = dcT.clone();
  at::Tensor dgh = at::zeros({G}, gates.options()), dbh = at::zeros({G}, gates.options());
  at::Tensor dgc = at::zeros({H}, gates.options()), dbc = at::zeros({H}, gates.options());
  const at::Tensor w_t = w.t().contiguous();  // [H, 4H]: dh = da W_h is a linear with weight W_h^T
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lnlstm_backward", [&] {
    backward_loop<scalar_t>(dout, w_t, gh.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(), cs, gates, ahat, rstd_a,
                            chat, rstd_c, tc, dz, da, dh, dc, dgh, dbh, dgc, dbc);
  });
  return {dz, da, dh, dc, dgh, dbh, dgc, dbc};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &lnlstm_forward, "layer-norm LSTM recurrence, forward (CPU)");
  m.def("backward", &lnlstm_backward, "layer-norm LSTM recurrence, backward (CPU)");
  m.def("gemm_backend", [] { return row_linear().op ? std::string("onednn") : std::string("mm"); },
        "what the per-step matmuls run on for float32: onednn or mm");
}
