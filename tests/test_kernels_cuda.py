"""CPU vs CUDA parity (identical integers and float32 bits) and CUDA specifics.

Marked `cuda`: skipped where no GPU with a CUDA-enabled core exists (see conftest.py).
"""

import numpy as np
import pytest
import torch

from galguard import kernels

pytestmark = pytest.mark.cuda


def _mixed(rng, n=200_000):
    lam = np.concatenate([[0.0, 1e-3, 0.5, 5.0, 9.999999, 10.0, 30.0, 1e3, 1e5, 1e7],
                          10 ** rng.uniform(-3, 7, n - 10)])
    return lam.reshape(100, -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_poisson_cpu_cuda_parity(rng, dtype):
    lam = torch.from_numpy(_mixed(rng)).to(dtype)
    idx = torch.arange(100, dtype=torch.int64) * 7
    cpu = kernels.poisson(lam, seed=12, index=idx, realisation=2)
    gpu = kernels.poisson(lam.cuda(), seed=12, index=idx.cuda(), realisation=2)
    assert gpu.is_cuda and gpu.dtype == dtype
    assert torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32, torch.int64])
def test_binomial_cpu_cuda_parity(rng, dtype):
    hi = 2**24 if dtype == torch.float32 else 2**31 - 1
    counts = torch.from_numpy(rng.integers(0, hi, size=(50, 2000))).to(dtype)
    counts[:, :500] = counts[:, :500] % 50
    p = torch.from_numpy(rng.choice([1e-6, 0.01, 0.3, 0.5, 0.7, 1.0], size=(50, 2000)))
    cpu = kernels.binomial_thin(counts, p, seed=3)
    gpu = kernels.binomial_thin(counts.cuda(), p.cuda(), seed=3)
    assert torch.equal(gpu.cpu(), cpu)
    assert torch.equal(kernels.binomial_thin(counts.cuda(), 0.25, seed=3).cpu(),
                       kernels.binomial_thin(counts, 0.25, seed=3))


@pytest.mark.parametrize("strategy", ["rand1", "best1"])
@pytest.mark.parametrize("CR", [1.0, 0.5])
@pytest.mark.parametrize("oob", ["redraw", "clip"])
def test_de_cpu_cuda_parity(rng, strategy, CR, oob):
    b, p, c, h, w = 8, 64, 3, 50, 60
    lo = torch.from_numpy(rng.uniform(-1, 0, size=(b, c)).astype(np.float32))
    hi = lo + 2
    ids = torch.arange(b) * 3
    args = dict(pixels=2, channels=c, height=h, width=w, seed=5)
    pop_c = kernels.de_init(ids, p, lo=lo, hi=hi, **args)
    pop_g = kernels.de_init(ids.cuda(), p, lo=lo.cuda(), hi=hi.cuda(), **args)
    assert torch.equal(pop_g.cpu(), pop_c)
    best = torch.arange(b) % p
    margs = dict(generation=4, F=1.3, strategy=strategy, CR=CR, oob=oob, height=h, width=w,
                 seed=5)
    tc = kernels.de_mutate(pop_c, ids=ids, best=best, lo=lo, hi=hi, **margs)
    tg = kernels.de_mutate(pop_g, ids=ids.cuda(), best=best.cuda(), lo=lo.cuda(), hi=hi.cuda(),
                           **margs)
    assert torch.equal(tg.cpu(), tc)
    images = torch.randn(b, c, h, w)
    assert torch.equal(kernels.de_write_candidates(images.cuda(), tg).cpu(),
                       kernels.de_write_candidates(images, tc))
    fit = torch.rand(b, p)
    tfit = torch.rand(b, p)
    for x, y in zip(kernels.de_select(pop_g, fit.cuda(), tg, tfit.cuda()),
                    kernels.de_select(pop_c, fit, tc, tfit)):
        assert torch.equal(x.cpu(), y)


def test_cuda_uses_current_stream():
    lam = torch.full((64, 4096), 100.0, device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        out = kernels.poisson(lam, seed=1)
    s.synchronize()
    assert torch.equal(out.cpu(), kernels.poisson(lam.cpu(), seed=1))


def test_device_mismatch_raises():
    from galguard.errors import GalguardValueError

    pop = torch.zeros(1, 4, 5, device="cuda")
    with pytest.raises(GalguardValueError, match="trial must be on the same device as pop"):
        kernels.de_select(pop, torch.zeros(1, 4, device="cuda"), pop.cpu(),
                          torch.zeros(1, 4, device="cuda"))
