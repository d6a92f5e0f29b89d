// CPU emulation of the GPU built-ins used by mlx_opd/metal/*.body and topk_divergence.h.
//
// Each thread of a threadgroup runs as a std::thread; threadgroups run one after the
// other, so `static` storage stands in for threadgroup memory. Barriers are
// std::barrier over the whole group; SIMD-group reductions exchange values through a
// per-SIMD-group slot array between two barriers over its 32 lanes, so every lane gets
// the same result, as on the GPU. Memory is shared and coherent, so the device barrier
// is the plain barrier.
#pragma once
#include <barrier>
#include <cmath>
#include <memory>
#include <vector>

struct uint3 { unsigned x, y, z; };

namespace emu {
struct Group {
  std::unique_ptr<std::barrier<>> all;
  std::vector<std::unique_ptr<std::barrier<>>> simd;
  std::vector<float> slots;
};
inline thread_local Group* group = nullptr;
inline thread_local unsigned lane_id = 0, warp_id = 0;

inline float simd_reduce(float x, bool is_max) {
  float* s = group->slots.data() + warp_id * 32;
  s[lane_id] = x;
  group->simd[warp_id]->arrive_and_wait();
  float r = s[0];
  for (int i = 1; i < 32; ++i) r = is_max ? std::fmax(r, s[i]) : r + s[i];
  group->simd[warp_id]->arrive_and_wait();
  return r;
}
}  // namespace emu

#define TG_SHARED(type, name, n) static type name[n]
#define TG_PTR
#define GLOBAL
#define GLOBAL_CONST const
#define BARRIER() emu::group->all->arrive_and_wait()
#define DEVICE_BARRIER() emu::group->all->arrive_and_wait()
#define LANE_SUM(x) emu::simd_reduce((x), false)
#define LANE_MAX(x) emu::simd_reduce((x), true)
#define EXPF(x) std::exp(x)
#define LOGF(x) std::log(x)
#define MAXF(a, b) std::fmax((a), (b))
#define INLINE inline
#define thread_ptr(t) t*
