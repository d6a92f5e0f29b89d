// Helpers for topk_divergence.body, written once against a few macros that each backend
// prelude (prelude_metal.h, prelude_cuda.h, and the CPU emulation used by the tests)
// defines:
//   TG_SHARED(type, name, n)  threadgroup / __shared__ array declaration
//   TG_PTR                    pointer-to-threadgroup-memory qualifier
//   GLOBAL, GLOBAL_CONST      device-memory pointer qualifiers
//   BARRIER()                 threadgroup barrier (threadgroup memory)
//   DEVICE_BARRIER()          threadgroup barrier that also orders device-memory writes
//   LANE_SUM(x), LANE_MAX(x)  reductions over the 32 lanes of a SIMD group / warp
//   EXPF, LOGF, MAXF          float math
//   INLINE                    function qualifier
// A threadgroup is a whole number of 32-lane SIMD groups.


// Fold logit x into a running (max m, sum s) with sum s = sum exp(x_i - m).
INLINE void online_lse(float x, thread_ptr(float) m, thread_ptr(float) s) {
  if (x > *m) {
    *s = *s * EXPF(*m - x) + 1.0f;
    *m = x;
  } else if (x > -INFINITY) {
    *s += EXPF(x - *m);
  }
}

// log(sum exp) of per-thread (max m, sum s) pairs over the threadgroup. Every thread
// returns the same value; the scratch buffers are free again on return.
INLINE float tg_lse(float m, float s, TG_PTR float* buf_m, TG_PTR float* buf_s,
                    unsigned lane, unsigned warp, unsigned nwarps) {
  float wm = LANE_MAX(m);
  float ws = LANE_SUM(m > -INFINITY ? s * EXPF(m - wm) : 0.0f);
  if (lane == 0) { buf_m[warp] = wm; buf_s[warp] = ws; }
  BARRIER();
  float gm = -INFINITY;
  for (unsigned w = 0; w < nwarps; ++w) gm = MAXF(gm, buf_m[w]);
  float gs = 0.0f;
  for (unsigned w = 0; w < nwarps; ++w) gs += buf_m[w] > -INFINITY ? buf_s[w] * EXPF(buf_m[w] - gm) : 0.0f;
  BARRIER();
  return gm + LOGF(gs);
}

// Max over the threadgroup; every thread returns the same value.
INLINE float tg_max(float x, TG_PTR float* buf, unsigned lane, unsigned warp, unsigned nwarps) {
  float w = LANE_MAX(x);
  if (lane == 0) buf[warp] = w;
  BARRIER();
  float total = -INFINITY;
  for (unsigned i = 0; i < nwarps; ++i) total = MAXF(total, buf[i]);
  BARRIER();
  return total;
}

// Sum over the threadgroup; every thread returns the same value.
INLINE float tg_sum(float x, TG_PTR float* buf, unsigned lane, unsigned warp, unsigned nwarps) {
  float w = LANE_SUM(x);
  if (lane == 0) buf[warp] = w;
  BARRIER();
  float total = 0.0f;
  for (unsigned i = 0; i < nwarps; ++i) total += buf[i];
  BARRIER();
  return total;
}

// Per-bucket divergence d and g = dD / d(student log-prob) (see mlx_opd/loss.py).
INLINE void bucket_terms(float ls, float lt, float beta, int direction, thread_ptr(float) d,
                         thread_ptr(float) g) {
  if (direction == 0) {            // forward KL(T || S)
    float pt = EXPF(lt);
    *d = pt > 0.0f ? pt * (lt - ls) : 0.0f;
    *g = -pt;
  } else if (direction == 1) {     // reverse KL(S || T)
    float ps = EXPF(ls);
    *d = ps > 0.0f ? ps * (ls - lt) : 0.0f;
    *g = ps > 0.0f ? ps * (ls - lt + 1.0f) : 0.0f;
  } else {                         // generalized JSD with mixture M = beta T + (1 - beta) S
    float ps = EXPF(ls), pt = EXPF(lt);
    float a = lt + LOGF(beta), b = ls + LOGF(1.0f - beta);
    float hi = MAXF(a, b);
    float lm = hi + LOGF(EXPF(a - hi) + EXPF(b - hi));
    float dt = pt > 0.0f ? beta * pt * (lt - lm) : 0.0f;
    float ds = ps > 0.0f ? (1.0f - beta) * ps * (ls - lm) : 0.0f;
    *d = dt + ds;
    *g = ds;
  }
}
