// CUDA backend for the portable kernel sources (see topk_divergence.h for the macros).
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#define TG_SHARED(type, name, n) __shared__ type name[n]
#define TG_PTR
#define GLOBAL
#define GLOBAL_CONST const
#define BARRIER() __syncthreads()
#define DEVICE_BARRIER() __syncthreads()
#define LANE_SUM(x) mlx_opd_warp_sum(x)
#define LANE_MAX(x) mlx_opd_warp_max(x)
#define EXPF(x) expf(x)
#define LOGF(x) logf(x)
#define MAXF(a, b) fmaxf(a, b)
#define INLINE __device__ __forceinline__
#define thread_ptr(t) t*

__device__ __forceinline__ float mlx_opd_warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float mlx_opd_warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
