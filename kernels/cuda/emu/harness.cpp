// harness.cpp: runs every kernel of kernels/cuda under the CPU emulator (emu.h), with the launch
// shapes of kernels/src/cuda/backend.rs, against naive double-precision references written here
// (independent of the kernels), for both the f32 and the bf16 stamps. Prints one line per check and
// exits non-zero if any check fails. Built and run by kernels/tests/cuda_emu.rs:
//   c++ -std=c++20 -O1 -pthread kernels/cuda/emu/harness.cpp -o harness && ./harness
#include "emu.h"

#include "../common.cuh"
#include "../embedding.cu"
#include "../rmsnorm.cu"
#include "../rope.cu"
#include "../attention.cu"
#include "../swiglu.cu"
#include "../cross_entropy.cu"
#include "../adamw.cu"
#include "../global_norm.cu"
#include "../cast.cu"
#include "../residual.cu"
#include "../lora.cu"

#include <cstdio>
#include <string>

// ---- host helpers ---------------------------------------------------------------------------------
static int failures = 0, checks = 0;

static uint16_t h_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static float h_from_bf16(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
static float round_bf16(float f) { return h_from_bf16(h_to_bf16(f)); }

struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
    double next() {  // [0, 1)
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        return (s >> 11) * (1.0 / 9007199254740992.0);
    }
    // bf16-representable values in [-scale, scale), so both stamps see identical inputs
    std::vector<float> uniform(size_t n, float scale) {
        std::vector<float> v(n);
        for (auto& x : v) x = round_bf16((float)((next() * 2 - 1) * scale));
        return v;
    }
    std::vector<unsigned int> ids(size_t n, unsigned int limit) {
        std::vector<unsigned int> v(n);
        for (auto& x : v) x = (unsigned int)(next() * limit) % limit;
        return v;
    }
};

// Device-typed copy of host data.
template <typename T> std::vector<T> dev(const std::vector<float>& h);
template <> std::vector<float> dev<float>(const std::vector<float>& h) { return h; }
template <> std::vector<bf16_t> dev<bf16_t>(const std::vector<float>& h) {
    std::vector<bf16_t> v(h.size());
    for (size_t i = 0; i < h.size(); ++i) v[i] = h_to_bf16(h[i]);
    return v;
}
static std::vector<float> host(const std::vector<float>& d) { return d; }
static std::vector<float> host(const std::vector<bf16_t>& d) {
    std::vector<float> v(d.size());
    for (size_t i = 0; i < d.size(); ++i) v[i] = h_from_bf16(d[i]);
    return v;
}

template <typename T> const char* tname();
template <> const char* tname<float>() { return "f32"; }
template <> const char* tname<bf16_t>() { return "bf16"; }
template <typename T> double tol() { return sizeof(T) == 4 ? 2e-4 : 2e-2; }

static void check(const std::string& name, const std::vector<float>& got, const std::vector<double>& want,
                  double atol, double rtol) {
    ++checks;
    int bad = 0;
    size_t worst_i = 0;
    double worst = 0;
    if (got.size() != want.size()) {
        std::printf("FAIL %s: length %zu vs %zu\n", name.c_str(), got.size(), want.size());
        ++failures;
        return;
    }
    for (size_t i = 0; i < got.size(); ++i) {
        double d = std::fabs((double)got[i] - want[i]);
        if (!(d <= atol + rtol * std::fabs(want[i]))) {
            if (bad < 4) std::printf("    %s[%zu]: got %.7g want %.7g\n", name.c_str(), i, got[i], want[i]);
            ++bad;
        }
        if (!(d <= worst)) { worst = d; worst_i = i; }
    }
    std::printf("%s %s: %zu values, worst |diff| %.3g at %zu\n", bad ? "FAIL" : "ok  ", name.c_str(), got.size(),
                worst, worst_i);
    if (bad) ++failures;
}

static dim3 d3(unsigned x, unsigned y = 1, unsigned z = 1) { return dim3{x, y, z}; }
static unsigned cdiv(size_t a, size_t b) { return (unsigned)((a + b - 1) / b); }
static dim3 grid_stride(size_t len) {
    size_t b = cdiv(len, 256);
    return d3((unsigned)(b < 1 ? 1 : (b > 65535 ? 65535 : b)));
}

// ---- kernel entry points by dtype ------------------------------------------------------------------
#define PICK(NAME) \
    template <typename T> struct NAME##_k; \
    template <> struct NAME##_k<float> { static constexpr auto f = NAME##_f32; }; \
    template <> struct NAME##_k<bf16_t> { static constexpr auto f = NAME##_bf16; };
PICK(embedding_fwd) PICK(embedding_bwd) PICK(rmsnorm_fwd) PICK(rmsnorm_bwd) PICK(rmsnorm_bwd_dw)
PICK(rope_fwd) PICK(rope_bwd) PICK(attention_fwd) PICK(attention_bwd_delta) PICK(attention_bwd_dq)
PICK(attention_bwd_dkv) PICK(swiglu_fwd) PICK(swiglu_bwd) PICK(cross_entropy_fwdbwd)
PICK(global_norm_fwd) PICK(add_fwd) PICK(scale_inplace) PICK(lora_dropout) PICK(lora_dropout_add)

// ---- tests ---------------------------------------------------------------------------------------
template <typename T>
void test_embedding(uint64_t seed) {
    Rng r(seed);
    int n = 37, c = 300, vocab = 20;
    auto table = r.uniform((size_t)vocab * c, 1.0f);
    auto ids = r.ids(n, vocab);
    auto dout = r.uniform((size_t)n * c, 1.0f);
    auto dt0 = r.uniform((size_t)vocab * c, 0.5f);
    auto dtable_d = dev<T>(table);
    std::vector<T> out(n * c);
    emu::launch(d3(n, cdiv(c, 256)), d3(256), 0, [&] { embedding_fwd_k<T>::f(out.data(), ids.data(), dtable_d.data(), n, c); });
    std::vector<double> want(n * c);
    for (int i = 0; i < n; ++i) for (int j = 0; j < c; ++j) want[i * c + j] = table[ids[i] * c + j];
    check(std::string("embedding_fwd_") + tname<T>(), host(out), want, 0, 0);
    auto dout_d = dev<T>(dout);
    std::vector<float> dtable = dt0;
    emu::launch(d3(cdiv(c, 256)), d3(256), 0, [&] { embedding_bwd_k<T>::f(dtable.data(), dout_d.data(), ids.data(), n, c); });
    std::vector<double> wd(dt0.begin(), dt0.end());
    for (int i = 0; i < n; ++i) for (int j = 0; j < c; ++j) wd[ids[i] * c + j] += dout[i * c + j];
    check(std::string("embedding_bwd_") + tname<T>(), dtable, wd, 1e-5, 1e-5);
}

template <typename T>
void test_rmsnorm(uint64_t seed) {
    Rng r(seed);
    int n = 150, c = 200;  // 64 chunks of 3 rows (the last ones shorter or empty)
    float eps = 1e-5f;
    auto x = r.uniform((size_t)n * c, 2.0f), w = r.uniform(c, 1.0f), dout = r.uniform((size_t)n * c, 1.0f);
    auto dw0 = r.uniform(c, 0.5f);
    auto xd = dev<T>(x), wd = dev<T>(w), dd = dev<T>(dout);
    std::vector<T> out(n * c), dx(n * c);
    std::vector<float> rstd(n), dw = dw0;
    emu::launch(d3(cdiv(n, 8)), d3(256), 0, [&] { rmsnorm_fwd_k<T>::f(out.data(), rstd.data(), xd.data(), wd.data(), n, c, eps); });
    emu::launch(d3(cdiv(n, 8)), d3(256), 0, [&] { rmsnorm_bwd_k<T>::f(dx.data(), dd.data(), xd.data(), wd.data(), rstd.data(), n, c); });
    const int chunks = n < 64 ? n : 64;  // as the launcher: min(n, RMS_DW_CHUNKS)
    std::vector<float> partial((size_t)chunks * c, 12345.0f);
    emu::launch(d3(cdiv(c, 256), chunks), d3(256), 0, [&] { rmsnorm_bwd_dw_k<T>::f(partial.data(), dd.data(), xd.data(), rstd.data(), n, c); });
    emu::launch(d3(cdiv(c, 256)), d3(256), 0, [&] { rmsnorm_bwd_dwsum_f32(dw.data(), partial.data(), chunks, c); });
    std::vector<double> wo(n * c), wr(n), wdx(n * c), wdw(dw0.begin(), dw0.end());
    for (int i = 0; i < n; ++i) {
        double ss = 0;
        for (int j = 0; j < c; ++j) ss += (double)x[i * c + j] * x[i * c + j];
        double rs = 1.0 / std::sqrt(ss / c + eps);
        wr[i] = rs;
        double dot = 0;
        for (int j = 0; j < c; ++j) {
            wo[i * c + j] = x[i * c + j] * rs * w[j];
            dot += (double)dout[i * c + j] * w[j] * x[i * c + j];
            wdw[j] += (double)dout[i * c + j] * x[i * c + j] * rs;
        }
        for (int j = 0; j < c; ++j)
            wdx[i * c + j] = rs * (dout[i * c + j] * w[j] - x[i * c + j] * rs * rs * dot / c);
    }
    double t = tol<T>();
    check(std::string("rmsnorm_fwd_") + tname<T>() + "/out", host(out), wo, t, t);
    check(std::string("rmsnorm_fwd_") + tname<T>() + "/rstd", rstd, wr, 1e-5, 1e-5);
    check(std::string("rmsnorm_bwd_") + tname<T>() + "/dx", host(dx), wdx, t, t);
    check(std::string("rmsnorm_bwd_dw_") + tname<T>(), dw, wdw, 1e-4, 1e-4);
}

template <typename T>
void test_rope(uint64_t seed) {
    Rng r(seed);
    int n = 13, heads = 3, hd = 16;
    float theta = 10000.0f;
    auto x = r.uniform((size_t)n * heads * hd, 1.0f);
    auto pos = r.ids(n, 50);
    for (int dir = 0; dir < 2; ++dir) {
        auto xd = dev<T>(x);
        size_t total = (size_t)n * heads * hd / 2;
        emu::launch(d3(cdiv(total, 256)), d3(256), 0, [&] {
            if (dir == 0) rope_fwd_k<T>::f(xd.data(), pos.data(), n, heads, hd, theta);
            else rope_bwd_k<T>::f(xd.data(), pos.data(), n, heads, hd, theta);
        });
        std::vector<double> want(x.size());
        double sign = dir == 0 ? 1 : -1;
        for (int i = 0; i < n; ++i)
            for (int h = 0; h < heads; ++h)
                for (int j = 0; j < hd / 2; ++j) {
                    double a = pos[i] * std::pow((double)theta, -2.0 * j / hd);
                    size_t b = ((size_t)i * heads + h) * hd;
                    double x1 = x[b + j], x2 = x[b + j + hd / 2], s = sign * std::sin(a), co = std::cos(a);
                    want[b + j] = x1 * co - x2 * s;
                    want[b + j + hd / 2] = x2 * co + x1 * s;
                }
        double t = tol<T>();
        check(std::string(dir == 0 ? "rope_fwd_" : "rope_bwd_") + tname<T>(), host(xd), want, std::max(t, 1e-4), t);
    }
}

// Naive attention (double): forward (out, lse) and backward (dq, dk, dv).
static void attention_ref(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                          const std::vector<float>& dout, const std::vector<unsigned int>& seg, int B, int T_, int NH,
                          int NKV, int HD, std::vector<double>& out, std::vector<double>& lse, std::vector<double>& dq,
                          std::vector<double>& dk, std::vector<double>& dv) {
    int G = NH / NKV;
    double scale = 1.0 / std::sqrt((double)HD);
    out.assign(q.size(), 0); dq.assign(q.size(), 0); dk.assign(k.size(), 0); dv.assign(v.size(), 0);
    lse.assign((size_t)B * NH * T_, 0);
    auto Q = [&](int b, int i, int h, int d) { return (double)q[(((size_t)b * T_ + i) * NH + h) * HD + d]; };
    auto KV = [&](int b, int j, int h, int d) { return (((size_t)b * T_ + j) * NKV + h) * HD + d; };
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < NH; ++h) {
            int kh = h / G;
            for (int i = 0; i < T_; ++i) {
                std::vector<double> p(T_, 0.0);
                double mx = -INFINITY;
                for (int j = 0; j <= i; ++j) {
                    if (seg[b * T_ + j] != seg[b * T_ + i]) continue;
                    double s = 0;
                    for (int d = 0; d < HD; ++d) s += Q(b, i, h, d) * k[KV(b, j, kh, d)];
                    p[j] = s * scale;
                    mx = std::max(mx, p[j]);
                }
                double sum = 0;
                for (int j = 0; j <= i; ++j)
                    if (seg[b * T_ + j] == seg[b * T_ + i]) sum += std::exp(p[j] - mx);
                double l = mx + std::log(sum);
                lse[((size_t)b * NH + h) * T_ + i] = l;
                for (int j = 0; j < T_; ++j)
                    p[j] = (j <= i && seg[b * T_ + j] == seg[b * T_ + i]) ? std::exp(p[j] - l) : 0.0;
                size_t oo = (((size_t)b * T_ + i) * NH + h) * HD;
                for (int d = 0; d < HD; ++d) {
                    double a = 0;
                    for (int j = 0; j < T_; ++j) a += p[j] * v[KV(b, j, kh, d)];
                    out[oo + d] = a;
                }
                // backward of this row
                double delta = 0;
                for (int d = 0; d < HD; ++d) delta += (double)dout[oo + d] * out[oo + d];
                for (int j = 0; j < T_; ++j) {
                    if (p[j] == 0) continue;
                    double dp = 0;
                    for (int d = 0; d < HD; ++d) dp += (double)dout[oo + d] * v[KV(b, j, kh, d)];
                    double ds = p[j] * (dp - delta);
                    for (int d = 0; d < HD; ++d) {
                        dq[oo + d] += ds * k[KV(b, j, kh, d)] * scale;
                        dk[KV(b, j, kh, d)] += ds * Q(b, i, h, d) * scale;
                        dv[KV(b, j, kh, d)] += p[j] * dout[oo + d];
                    }
                }
            }
        }
}

template <typename T>
void test_attention(uint64_t seed, int B, int T_, int NH, int NKV, int HD) {
    Rng r(seed);
    size_t ql = (size_t)B * T_ * NH * HD, kvl = (size_t)B * T_ * NKV * HD;
    auto q = r.uniform(ql, 1.0f), k = r.uniform(kvl, 1.0f), v = r.uniform(kvl, 1.0f), dout = r.uniform(ql, 1.0f);
    std::vector<unsigned int> seg(B * T_);
    for (int b = 0; b < B; ++b)
        for (int i = 0; i < T_; ++i) seg[b * T_ + i] = (i >= T_ / 3 + b) + (i >= 2 * T_ / 3);
    auto qd = dev<T>(q), kd = dev<T>(k), vd = dev<T>(v), dd = dev<T>(dout);
    std::vector<T> out(ql), dq(ql), dk(kvl), dv(kvl);
    std::vector<float> lse((size_t)B * NH * T_), delta((size_t)B * NH * T_);
    const size_t tile = 32, warps = 4;
    auto smem = [&](size_t rows, size_t extra) { return (2 * tile * (HD + 1) + rows * warps * HD + extra) * 4; };
    emu::launch(d3(cdiv(T_, warps), B * NH), d3(32 * warps), smem(1, 0), [&] {
        attention_fwd_k<T>::f(out.data(), lse.data(), qd.data(), kd.data(), vd.data(), seg.data(), B, T_, NH, NKV, HD);
    });
    emu::launch(d3(cdiv((size_t)B * T_ * NH, warps)), d3(32 * warps), 0, [&] {
        attention_bwd_delta_k<T>::f(delta.data(), dd.data(), out.data(), B, T_, NH, HD);
    });
    emu::launch(d3(cdiv(T_, warps), B * NH), d3(32 * warps), smem(2, 0), [&] {
        attention_bwd_dq_k<T>::f(dq.data(), dd.data(), qd.data(), kd.data(), vd.data(), lse.data(), delta.data(),
                                 seg.data(), B, T_, NH, NKV, HD);
    });
    emu::launch(d3(cdiv(T_, warps), B * NKV), d3(32 * warps), smem(2, 2 * tile), [&] {
        attention_bwd_dkv_k<T>::f(dk.data(), dv.data(), dd.data(), qd.data(), kd.data(), vd.data(), lse.data(),
                                  delta.data(), seg.data(), B, T_, NH, NKV, HD);
    });
    std::vector<double> wo, wl, wdq, wdk, wdv;
    attention_ref(q, k, v, dout, seg, B, T_, NH, NKV, HD, wo, wl, wdq, wdk, wdv);
    std::string s = std::string("attention_") + tname<T>() + " b" + std::to_string(B) + " t" + std::to_string(T_) +
                    " h" + std::to_string(NH) + "/" + std::to_string(NKV) + " hd" + std::to_string(HD);
    double t = tol<T>();
    check(s + " out", host(out), wo, t, t);
    check(s + " lse", lse, wl, 1e-4, 1e-4);
    check(s + " dq", host(dq), wdq, 2 * t, 2 * t);
    check(s + " dk", host(dk), wdk, 2 * t, 2 * t);
    check(s + " dv", host(dv), wdv, 2 * t, 2 * t);
}

template <typename T>
void test_swiglu(uint64_t seed) {
    Rng r(seed);
    size_t len = 1000;
    auto g = r.uniform(len, 4.0f), u = r.uniform(len, 2.0f), d = r.uniform(len, 1.0f);
    auto gd = dev<T>(g), ud = dev<T>(u), dd = dev<T>(d);
    std::vector<T> out(len), dg(len), du(len);
    emu::launch(grid_stride(len), d3(256), 0, [&] { swiglu_fwd_k<T>::f(out.data(), gd.data(), ud.data(), (long long)len); });
    emu::launch(grid_stride(len), d3(256), 0, [&] { swiglu_bwd_k<T>::f(dg.data(), du.data(), dd.data(), gd.data(), ud.data(), (long long)len); });
    std::vector<double> wo(len), wg(len), wu(len);
    for (size_t i = 0; i < len; ++i) {
        double sg = 1 / (1 + std::exp(-(double)g[i])), silu = g[i] * sg;
        wo[i] = silu * u[i];
        wu[i] = d[i] * silu;
        wg[i] = d[i] * u[i] * (sg + g[i] * sg * (1 - sg));
    }
    double t = tol<T>();
    check(std::string("swiglu_fwd_") + tname<T>(), host(out), wo, t, t);
    check(std::string("swiglu_bwd_") + tname<T>() + "/dgate", host(dg), wg, t, t);
    check(std::string("swiglu_bwd_") + tname<T>() + "/dup", host(du), wu, t, t);
}

template <typename T>
void test_cross_entropy(uint64_t seed) {
    Rng r(seed);
    int n = 7, v = 3001;
    auto logits = r.uniform((size_t)n * v, 8.0f);
    auto tg = r.ids(n, v);
    std::vector<float> w(n);
    for (int i = 0; i < n; ++i) w[i] = (i % 3 == 2) ? 0.0f : 0.25f;
    auto ld = dev<T>(logits);
    std::vector<float> losses(n);
    emu::launch(d3(n), d3(1024), 0, [&] { cross_entropy_fwdbwd_k<T>::f(ld.data(), losses.data(), tg.data(), w.data(), n, v); });
    std::vector<double> wl(n), wd((size_t)n * v);
    for (int i = 0; i < n; ++i) {
        double mx = -INFINITY, s = 0;
        for (int j = 0; j < v; ++j) mx = std::max(mx, (double)logits[(size_t)i * v + j]);
        for (int j = 0; j < v; ++j) s += std::exp(logits[(size_t)i * v + j] - mx);
        double lse = mx + std::log(s);
        wl[i] = lse - logits[(size_t)i * v + tg[i]];
        for (int j = 0; j < v; ++j)
            wd[(size_t)i * v + j] = w[i] * (std::exp(logits[(size_t)i * v + j] - lse) - (j == (int)tg[i] ? 1 : 0));
    }
    check(std::string("cross_entropy_") + tname<T>() + "/losses", losses, wl, 1e-4, 1e-5);
    check(std::string("cross_entropy_") + tname<T>() + "/dlogits", host(ld), wd, sizeof(T) == 4 ? 1e-6 : 1e-3, tol<T>());
}

void test_adamw(uint64_t seed) {
    Rng r(seed);
    size_t len = 700;
    auto p0 = r.uniform(len, 1.0f), g = r.uniform(len, 1.0f);
    float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.1f, gs = 0.5f;
    std::vector<double> wp(p0.begin(), p0.end()), wm(len, 0), wv(len, 0);
    std::vector<float> p = p0, m(len, 0), v(len, 0), master = p0, m2(len, 0), v2(len, 0);
    auto pb = dev<bf16_t>(p0);
    for (int step = 1; step <= 3; ++step) {
        float bc1 = (float)(1 - std::pow((double)b1, step)), bc2 = (float)(1 - std::pow((double)b2, step));
        emu::launch(grid_stride(len), d3(256), 0, [&] {
            adamw_step_f32(p.data(), g.data(), m.data(), v.data(), (long long)len, lr, b1, b2, eps, wd, bc1, bc2, gs);
        });
        emu::launch(grid_stride(len), d3(256), 0, [&] {
            adamw_step_bf16(pb.data(), master.data(), g.data(), m2.data(), v2.data(), (long long)len, lr, b1, b2, eps, wd,
                            bc1, bc2, gs);
        });
        for (size_t i = 0; i < len; ++i) {
            double gi = (double)g[i] * gs;
            wm[i] = b1 * wm[i] + (1 - b1) * gi;
            wv[i] = b2 * wv[i] + (1 - b2) * gi * gi;
            wp[i] -= lr * wd * wp[i];
            wp[i] -= lr * (wm[i] / (1 - std::pow((double)b1, step))) / (std::sqrt(wv[i] / (1 - std::pow((double)b2, step))) + eps);
        }
    }
    check("adamw_step_f32/params", p, wp, 1e-6, 1e-5);
    check("adamw_step_f32/m", m, wm, 1e-7, 1e-5);
    check("adamw_step_f32/v", v, wv, 1e-7, 1e-5);
    check("adamw_step_bf16/master", master, wp, 1e-6, 1e-5);
    std::vector<double> rounded(len);
    for (size_t i = 0; i < len; ++i) rounded[i] = round_bf16(master[i]);
    check("adamw_step_bf16/params==bf16(master)", host(pb), rounded, 0, 0);
}

template <typename T>
void test_global_norm(uint64_t seed) {
    Rng r(seed);
    size_t len = 100003;
    auto x = r.uniform(len, 1.0f);
    auto xd = dev<T>(x);
    const int blocks = 256;
    std::vector<double> partials(blocks, -1.0);
    emu::launch(d3(blocks), d3(256), 0, [&] { global_norm_fwd_k<T>::f(partials.data(), xd.data(), (long long)len); });
    double got = 0, want = 0;
    for (double p : partials) got += p;
    for (float v : x) want += (double)v * v;
    check(std::string("global_norm_fwd_") + tname<T>(), {(float)(got / want)}, {1.0}, 1e-12, 0);
}

void test_casts_and_residual(uint64_t seed) {
    Rng r(seed);
    size_t len = 5000;
    auto a = r.uniform(len, 3.0f), b = r.uniform(len, 3.0f);
    std::vector<float> raw(len);
    for (size_t i = 0; i < len; ++i) raw[i] = (float)((r.next() * 2 - 1) * 1e3);
    raw[0] = 1.00390625f;    // exactly halfway between two bf16 values: rounds to even (1.0)
    raw[1] = 1.01171875f;    // halfway, rounds up to even (1.015625)
    raw[2] = -0.0f;
    std::vector<bf16_t> cb(len);
    emu::launch(grid_stride(len), d3(256), 0, [&] { cast_f32_to_bf16(cb.data(), raw.data(), (long long)len); });
    std::vector<float> back(len);
    emu::launch(grid_stride(len), d3(256), 0, [&] { cast_bf16_to_f32(back.data(), cb.data(), (long long)len); });
    std::vector<double> want(len);
    for (size_t i = 0; i < len; ++i) want[i] = round_bf16(raw[i]);
    check("cast_f32_to_bf16+cast_bf16_to_f32", back, want, 0, 0);
    check("bf16 ties to even", {back[0], back[1]}, {1.0, 1.015625}, 0, 0);

    std::vector<float> out(len), acc = a;
    emu::launch(grid_stride(len), d3(256), 0, [&] { add_fwd_f32(out.data(), a.data(), b.data(), (long long)len); });
    emu::launch(grid_stride(len), d3(256), 0, [&] { add_inplace_f32_f32(acc.data(), out.data(), (long long)len); });
    emu::launch(grid_stride(len), d3(256), 0, [&] { scale_inplace_f32(acc.data(), 0.5f, (long long)len); });
    auto bb = dev<bf16_t>(b);
    std::vector<float> acc2 = a;
    emu::launch(grid_stride(len), d3(256), 0, [&] { add_inplace_f32_bf16(acc2.data(), bb.data(), (long long)len); });
    auto ab = dev<bf16_t>(a);
    std::vector<bf16_t> ob(len);
    emu::launch(grid_stride(len), d3(256), 0, [&] { add_fwd_bf16(ob.data(), ab.data(), bb.data(), (long long)len); });
    std::vector<double> wout(len), wacc(len), wacc2(len), wob(len);
    for (size_t i = 0; i < len; ++i) {
        wout[i] = (double)a[i] + b[i];
        wacc[i] = ((double)a[i] + wout[i]) * 0.5;
        wacc2[i] = (double)a[i] + b[i];
        wob[i] = round_bf16(a[i] + b[i]);
    }
    check("add_fwd_f32", out, wout, 1e-6, 0);
    check("add_inplace_f32_f32+scale_inplace_f32", acc, wacc, 1e-6, 1e-6);
    check("add_inplace_f32_bf16", acc2, wacc2, 1e-6, 0);
    check("add_fwd_bf16", host(ob), wob, 0, 0);
}

// The n-th output (1-based) of the standard SplitMix64 generator seeded with `seed` (Vigna's
// splitmix64.c: state += golden gamma, then the finaliser): the definition lora_keep follows.
static uint64_t splitmix64_nth(uint64_t seed, uint64_t n) {
    uint64_t state = seed;
    uint64_t z = 0;
    for (uint64_t k = 0; k < n; ++k) {
        state += 0x9E3779B97F4A7C15ull;
        z = state;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z = z ^ (z >> 31);
    }
    return z;
}

template <typename T>
void test_lora_dropout(uint64_t seed) {
    Rng r(seed);
    size_t len = 700;
    float p = 0.3f, inv = 1.0f / (1.0f - p);
    unsigned long long mseed = 0x1234567ull + seed;
    auto x = r.uniform(len, 2.0f), g = r.uniform(len, 1.0f), acc0 = r.uniform(len, 1.0f);
    auto xd = dev<T>(x), gd = dev<T>(g), accd = dev<T>(acc0);
    std::vector<T> out(len);
    emu::launch(grid_stride(len), d3(256), 0, [&] { lora_dropout_k<T>::f(out.data(), xd.data(), p, inv, mseed, (long long)len); });
    emu::launch(grid_stride(len), d3(256), 0, [&] { lora_dropout_add_k<T>::f(accd.data(), gd.data(), p, inv, mseed, (long long)len); });
    std::vector<double> wout(len), wacc(len);
    size_t kept = 0;
    for (size_t i = 0; i < len; ++i) {
        bool keep = (double)(splitmix64_nth(mseed, i + 1) >> 40) / 16777216.0 >= p;
        kept += keep;
        float xv = (float)host(xd)[i], gv = (float)host(gd)[i], av = (float)host(dev<T>(acc0))[i];
        wout[i] = keep ? (double)(xv * inv) : 0.0;
        wacc[i] = keep ? (double)(av + gv * inv) : (double)av;
    }
    double tol = sizeof(T) == 4 ? 0 : 8e-3;
    check(std::string("lora_dropout_") + tname<T>(), host(out), wout, tol, tol);
    check(std::string("lora_dropout_add_") + tname<T>(), host(accd), wacc, tol, tol);
    check("lora mask keeps about 1-p", {(float)kept / (float)len}, {0.7}, 0.06, 0);
}

int main() {
    // SplitMix64 seeded with 0 starts 0xe220a8397b1dcdaf (Vigna's reference output).
    check("splitmix64 reference output", {(float)(splitmix64_nth(0, 1) == 0xe220a8397b1dcdafull)}, {1.0}, 0, 0);
    test_lora_dropout<float>(8); test_lora_dropout<bf16_t>(8);
    for (uint64_t seed : {1, 2}) {
        test_embedding<float>(seed); test_embedding<bf16_t>(seed);
        test_rmsnorm<float>(seed); test_rmsnorm<bf16_t>(seed);
        test_rope<float>(seed); test_rope<bf16_t>(seed);
        test_swiglu<float>(seed); test_swiglu<bf16_t>(seed);
        test_cross_entropy<float>(seed); test_cross_entropy<bf16_t>(seed);
        test_global_norm<float>(seed); test_global_norm<bf16_t>(seed);
    }
    test_adamw(3);
    test_casts_and_residual(4);
    // attention: tile edges (t = 45 and 70 with 32-row tiles), GQA 6:2 and MHA, head_dim 64 and 128 (max)
    test_attention<float>(5, 2, 45, 6, 2, 64);
    test_attention<bf16_t>(5, 2, 45, 6, 2, 64);
    test_attention<float>(6, 1, 70, 2, 2, 128);
    test_attention<float>(7, 1, 9, 4, 1, 32);
    std::printf("%d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
