"""The Metal kernel's own logic, run on the CPU.

The kernel body MLX would compile for Metal (mlx_opd/metal: prefix_metal.body +
topk_divergence*.body, helpers in topk_divergence.h) is compiled as C++20 against
tests/emulation/gpu_emulation.h, which runs every threadgroup lane as a thread with real
barriers and SIMD-group reductions. Its loss and gradient are compared with the float64
oracle across vocabulary sizes that straddle the SIMD width (32) and the threadgroup
widths used (64, 256).
"""

import shutil
import subprocess
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_opd.metal import kernels
from mlx_opd.method.loss import DivergenceSpec, topk_ids

from .oracle import AUTHORS_FLOOR, oracle

HERE = Path(__file__).parent / "emulation"
METAL = Path(kernels.__file__).parent
CXX = shutil.which("g++") or shutil.which("clang++")
pytestmark = pytest.mark.skipif(CXX is None, reason="needs a C++20 compiler (g++ or clang++)")

# (V, K, NT): sizes straddling 32 lanes and the 64 / 256 thread groups; K = V: no tail.
SIZES = [(31, 7, 64), (32, 16, 64), (33, 33, 64), (1000, 100, 256), (4097, 100, 256),
         (151936, 100, 256)]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """Compile the harness once per (K, tail, direction, grad); returns a getter."""
    root = tmp_path_factory.mktemp("kernel_emulation")
    built = {}

    def get(k, tail, direction, grad=True):
        key = (k, tail, direction, grad)
        if key not in built:
            d = root / "_".join(map(str, key))
            d.mkdir()
            _, body = kernels.kernel_source("metal", grad)
            (d / "kernel_body.inc").write_text(body)
            exe = d / "harness"
            cmd = [CXX, "-std=c++20", "-O2", "-pthread", f"-DK_VAL={k}",
                   f"-DTAIL_VAL={'true' if tail else 'false'}", f"-DDIRECTION_VAL={direction}",
                   f"-I{d}", f"-I{HERE}", f"-I{METAL}", str(HERE / "harness.cpp"), "-o", str(exe)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            assert out.returncode == 0, out.stderr[-3000:]
            built[key] = exe
        return built[key]

    return get


def run_emulated(exe, zs, zt, ids, cot, beta, temperature, nt, workdir,
                 tail_floor=AUTHORS_FLOOR):
    R, V = zs.shape
    workdir.mkdir(exist_ok=True)
    zs.astype(np.float32).tofile(workdir / "zs.bin")
    zt.astype(np.float32).tofile(workdir / "zt.bin")
    ids.astype(np.int32).tofile(workdir / "ids.bin")
    np.array([beta, 1.0 / temperature, np.log(tail_floor)], np.float32).tofile(workdir / "params.bin")
    cot.astype(np.float32).tofile(workdir / "cot.bin")
    out = subprocess.run([str(exe), str(R), str(V), str(ids.shape[1]), str(nt), str(workdir)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    loss = np.fromfile(workdir / "loss.bin", np.float32)
    grad = np.fromfile(workdir / "grad.bin", np.float32).reshape(R, V)
    return loss, grad


def _case(seed, R, V, K, ties=False):
    rng = np.random.default_rng(seed)
    zs = (rng.normal(size=(R, V)) * 3).astype(np.float32)
    zt = (rng.normal(size=(R, V)) * 3).astype(np.float32)
    if ties:  # integer logits: many ids tie with the top-K threshold
        zs = np.round(zs).astype(np.float32)
    ids = np.array(topk_ids(mx.array(zs), K))
    cot = rng.uniform(0.5, 2.0, size=R).astype(np.float32)
    return zs, zt, ids, cot


def _compare(loss, grad, zs, zt, ids, cot, **kw):
    want, want_g = oracle(zs[None], zt[None], reduction="none", topk_ids=ids[None], **kw)
    np.testing.assert_allclose(loss, want[0], rtol=2e-5, atol=1e-6)
    want_g = want_g[0] * cot[:, None]
    np.testing.assert_allclose(grad, want_g, rtol=0, atol=1e-5 * max(1e-2, np.abs(want_g).max()))


@pytest.mark.parametrize("V,K,NT", SIZES)
def test_kernel_matches_oracle_across_sizes(build, tmp_path, V, K, NT):
    R = 2 if V > 10000 else 3
    zs, zt, ids, cot = _case(V, R, V, K)
    loss, grad = run_emulated(build(K, True, 2), zs, zt, ids, cot, 0.5, 1.0, NT, tmp_path / "io")
    _compare(loss, grad, zs, zt, ids, cot, kind="jsd", beta=0.5, estimator="topk", k=K, tail=True)


@pytest.mark.parametrize("direction,kind,tail", [(0, "forward_kl", True), (1, "reverse_kl", True),
                                                 (2, "jsd", False), (0, "forward_kl", False)])
def test_kernel_directions_tail_and_temperature(build, tmp_path, direction, kind, tail):
    zs, zt, ids, cot = _case(11, 3, 1000, 100)
    beta = {0: 0.0, 1: 1.0, 2: 0.3}[direction]
    loss, grad = run_emulated(build(100, tail, direction), zs, zt, ids, cot, beta, 1.6, 256,
                              tmp_path / "io")
    _compare(loss, grad, zs, zt, ids, cot, kind=kind, beta=beta, estimator="topk", k=100,
             tail=tail, temperature=1.6)


def test_kernel_ties_at_the_threshold(build, tmp_path):
    zs, zt, ids, cot = _case(12, 3, 1000, 100, ties=True)
    thr = np.sort(zs, axis=1)[:, -100]
    assert ((zs == thr[:, None]).sum(1) > 1).all()  # ties really straddle the cut
    loss, grad = run_emulated(build(100, True, 2), zs, zt, ids, cot, 0.5, 1.0, 256, tmp_path / "io")
    _compare(loss, grad, zs, zt, ids, cot, kind="jsd", beta=0.5, estimator="topk", k=100, tail=True)


def test_kernel_forward_only_and_padded_rows(build, tmp_path):
    zs, zt, ids, cot = _case(13, 3, 1000, 100)
    fwd_loss, _ = run_emulated(build(100, True, 2, grad=False), zs, zt, ids, cot, 0.5, 1.0, 256,
                               tmp_path / "a")
    cot[1] = 0.0
    zs[1, 5] = np.nan  # a padded row with garbage must give an exactly-zero gradient
    loss, grad = run_emulated(build(100, True, 2), zs, zt, ids, cot, 0.5, 1.0, 256, tmp_path / "b")
    np.testing.assert_allclose(fwd_loss[[0, 2]], loss[[0, 2]], rtol=1e-6)
    assert np.all(grad[1] == 0.0) and np.isfinite(grad[[0, 2]]).all()


def test_kernel_spec_direction_mapping():
    # the dispatcher passes DivergenceSpec.direction as the kernel's DIRECTION constant
    assert DivergenceSpec(kind="jsd", beta=0.0).direction == 0
    assert DivergenceSpec(kind="jsd", beta=1.0).direction == 1
    assert DivergenceSpec(kind="jsd", beta=0.5).direction == 2
    assert DivergenceSpec(kind="forward_kl").direction == 0
    assert DivergenceSpec(kind="reverse_kl").direction == 1


NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed: the CUDA twin is compiled where it is")
@pytest.mark.parametrize("dtype", ["float", "__nv_bfloat16"])
def test_cuda_twin_compiles(tmp_path, dtype):
    """Compile (not run: no GPU here) the CUDA kernel exactly as mx.fast.cuda_kernel lays
    it out: prelude + helpers, then a __global__ function with the generated signature,
    template constants as constexpr, and prefix + body (+ gradient) + store."""
    header, body = kernels.kernel_source("cuda", grad=True)
    src = f"""
#include <cuda_bf16.h>
#include <cuda_fp16.h>
struct Shape {{ int v[8]; __device__ int operator[](int i) const {{ return v[i]; }} }};
{header}
__global__ void mlx_opd_topk_div_grad(const {dtype}* zs, const __grid_constant__ Shape zs_shape,
    const {dtype}* zt, const int* ids, const float* params, const float* cot, float* loss,
    {dtype}* grad) {{
  using T = {dtype};
  constexpr int K = 100;
  constexpr bool TAIL = true;
  constexpr int DIRECTION = 2;
{body}
}}
"""
    (tmp_path / "k.cu").write_text(src)
    out = subprocess.run([NVCC, "-std=c++17", "-arch=sm_80", "-c", str(tmp_path / "k.cu"),
                          "-o", str(tmp_path / "k.o")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.parametrize("tail_floor", [AUTHORS_FLOOR, 1e-38], ids=["authors", "exact"])
def test_kernel_floored_tail_value_and_gradient(build, tmp_path, tail_floor):
    """A very peaked student (logits ~ +-1e4 apart): its exact tail is far below the
    authors' floor. Value and gradient match the oracle for both floors, and every row's
    gradient sums to 0 (the gradient of the value computed, no dropped part)."""
    zs, zt, ids, cot = _case(14, 3, 1000, 100)
    for r in range(3):  # top-K +40, the rest -40: the exact tail is ~e^-78
        zs[r] = np.where(np.isin(np.arange(1000), ids[r]), zs[r] + 40.0, zs[r] - 40.0)
    loss, grad = run_emulated(build(100, True, 0), zs, zt, ids, cot, 0.0, 1.0, 256,
                              tmp_path / "io", tail_floor=tail_floor)
    _compare(loss, grad, zs, zt, ids, cot, kind="forward_kl", beta=0.0, estimator="topk", k=100,
             tail=True, tail_floor=tail_floor)
    assert (np.abs(grad.sum(1)) <= 1e-3 * np.abs(grad).sum(1)).all()  # no dropped part
