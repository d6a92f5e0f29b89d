// Runs the Metal kernel body (mlx_opd/metal/prefix_metal.body + topk_divergence*.body,
// concatenated by the test into kernel_body.inc) on the CPU under gpu_emulation.h.
// Usage: harness R V K NT dir   (reads dir/{zs,zt,ids,params,cot}.bin, writes loss/grad.bin)
// Compile-time: -DK_VAL -DTAIL_VAL -DDIRECTION_VAL (the kernel's template constants).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "gpu_emulation.h"
#include "topk_divergence.h"

static void kernel(const float* zs, const int* zs_shape, const float* zt, const int* ids,
                   const float* params, const float* cot, float* loss, float* grad,
                   uint3 threadgroup_position_in_grid, uint3 thread_position_in_threadgroup,
                   uint3 threads_per_threadgroup, unsigned thread_index_in_simdgroup,
                   unsigned simdgroup_index_in_threadgroup) {
  using T = float;
  constexpr int K = K_VAL;
  constexpr bool TAIL = TAIL_VAL;
  constexpr int DIRECTION = DIRECTION_VAL;
  (void)grad;
  (void)cot;
#include "kernel_body.inc"
}

template <typename X>
static std::vector<X> read_bin(const std::string& path, size_t n) {
  std::vector<X> v(n);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f || std::fread(v.data(), sizeof(X), n, f) != n) { std::perror(path.c_str()); std::exit(2); }
  std::fclose(f);
  return v;
}

template <typename X>
static void write_bin(const std::string& path, const std::vector<X>& v) {
  FILE* f = std::fopen(path.c_str(), "wb");
  std::fwrite(v.data(), sizeof(X), v.size(), f);
  std::fclose(f);
}

int main(int argc, char** argv) {
  if (argc != 6) { std::fprintf(stderr, "usage: harness R V K NT dir\n"); return 2; }
  const int R = std::atoi(argv[1]), V = std::atoi(argv[2]), K = std::atoi(argv[3]);
  const unsigned NT = std::atoi(argv[4]);
  const std::string dir = argv[5];
  if (K != K_VAL || NT % 32 != 0) { std::fprintf(stderr, "bad K or NT\n"); return 2; }
  auto zs = read_bin<float>(dir + "/zs.bin", (size_t)R * V);
  auto zt = read_bin<float>(dir + "/zt.bin", (size_t)R * V);
  auto ids = read_bin<int>(dir + "/ids.bin", (size_t)R * K);
  auto params = read_bin<float>(dir + "/params.bin", 3);
  auto cot = read_bin<float>(dir + "/cot.bin", R);
  std::vector<float> loss(R, NAN), grad((size_t)R * V, NAN);
  const int shape[2] = {R, V};
  for (int r = 0; r < R; ++r) {  // one threadgroup at a time
    emu::Group g;
    g.all = std::make_unique<std::barrier<>>(NT);
    for (unsigned w = 0; w < NT / 32; ++w) g.simd.push_back(std::make_unique<std::barrier<>>(32));
    g.slots.assign(NT, 0.0f);
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < NT; ++t) {
      threads.emplace_back([&, t] {
        emu::group = &g;
        emu::lane_id = t % 32;
        emu::warp_id = t / 32;
        kernel(zs.data(), shape, zt.data(), ids.data(), params.data(), cot.data(), loss.data(),
               grad.data(), uint3{(unsigned)r, 0, 0}, uint3{t, 0, 0}, uint3{NT, 1, 1}, t % 32,
               t / 32);
      });
    }
    for (auto& th : threads) th.join();
  }
  write_bin(dir + "/loss.bin", loss);
  write_bin(dir + "/grad.bin", grad);
  return 0;
}
