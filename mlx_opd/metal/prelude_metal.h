// Metal backend for the portable kernel sources (see topk_divergence.h for the macros).
#define TG_SHARED(type, name, n) threadgroup type name[n]
#define TG_PTR threadgroup
#define GLOBAL device
#define GLOBAL_CONST const device
#define BARRIER() threadgroup_barrier(mem_flags::mem_threadgroup)
#define DEVICE_BARRIER() threadgroup_barrier(mem_flags::mem_device)
#define LANE_SUM(x) simd_sum(x)
#define LANE_MAX(x) simd_max(x)
#define EXPF(x) metal::precise::exp(x)
#define LOGF(x) metal::precise::log(x)
#define MAXF(a, b) metal::max(a, b)
#define INLINE inline
#define thread_ptr(t) thread t*
