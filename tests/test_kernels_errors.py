"""Every bad input of galguard.kernels raises GalguardValueError naming the argument and what it
received."""

import numpy as np
import pytest
import torch

from galguard import kernels
from galguard.errors import GalguardValueError

LAM = np.full((2, 3), 4.0)
COUNTS = np.full((2, 3), 10, np.int32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(mean=np.array([[-1.0, 2.0]])), r"mean must be finite and in \[0, 1e\+15\], got values in \[-1.0"),
        (dict(mean=np.array([[np.nan, 2.0]])), r"mean must be finite.*got values in \[nan"),
        (dict(mean=np.array([[np.inf]])), r"mean must be finite.*inf\]"),
        (dict(mean=np.array([[1e16]])), r"mean must be finite and in \[0, 1e\+15\]"),
        (dict(mean=np.ones((2, 3), np.int64)), r"mean must have dtype float32 or float64, got int64"),
        (dict(mean=np.array(3.0)), r"mean must have at least 1 dimension\(s\), got shape \(\)"),
        (dict(mean=[[1.0, 2.0]]), r"mean must be a numpy array or a torch tensor, got list"),
        (dict(mean=LAM, seed=-1), r"seed must be an integer in \[0, 18446744073709551615\], got -1"),
        (dict(mean=LAM, seed=2**64), r"seed must be an integer in .*got 18446744073709551616"),
        (dict(mean=LAM, seed=1.5), r"seed must be an integer, got float 1.5"),
        (dict(mean=LAM, seed=None), r"seed must be an integer, got NoneType"),
        (dict(mean=LAM, index=[0, 1, 2]), r"index must have shape \(2,\), got \(3,\)"),
        (dict(mean=LAM, index=[0, -1]), r"index must hold ids in \[0, 2\*\*32\), got values in \[-1, 0\]"),
        (dict(mean=LAM, index=[0, 2**32]), r"index must hold ids in \[0, 2\*\*32\)"),
        (dict(mean=LAM, index=[0.5, 1.0]), r"index must hold integers, got dtype float64"),
        (dict(mean=LAM, realisation=-1), r"realisation must be an integer in \[0, 4294967295\], got -1"),
    ],
)
def test_poisson_bad_inputs(kwargs, match):
    kwargs = {"seed": 0, **kwargs}
    mean = kwargs.pop("mean")
    keep = mean.copy() if isinstance(mean, np.ndarray) else None
    with pytest.raises(GalguardValueError, match=match):
        kernels.poisson(mean, **kwargs)
    if keep is not None:
        np.testing.assert_array_equal(mean, keep)


def test_poisson_bad_torch_inputs():
    with pytest.raises(GalguardValueError, match=r"mean must be finite.*got values in \[nan"):
        kernels.poisson(torch.tensor([[1.0, float("nan")]]), seed=0)
    with pytest.raises(GalguardValueError, match=r"mean must have dtype float32 or float64, got int32"):
        kernels.poisson(torch.ones(2, 2, dtype=torch.int32), seed=0)
    with pytest.raises(GalguardValueError, match=r"mean must have dtype .* got complex64"):
        kernels.poisson(torch.ones(2, 2, dtype=torch.complex64), seed=0)


@pytest.mark.parametrize(
    ("counts", "p", "match"),
    [
        (COUNTS, 0.0, r"p must be in \(0, 1\], got 0.0"),
        (COUNTS, 1.5, r"p must be in \(0, 1\], got 1.5"),
        (COUNTS, -0.1, r"p must be in \(0, 1\], got -0.1"),
        (COUNTS, float("nan"), r"p must be in \(0, 1\], got nan"),
        (COUNTS, np.array([0.5, 0.0, 0.2]), r"p must be in \(0, 1\], got values in \[0.0, 0.5\]"),
        (COUNTS, np.array([0.5, 0.2]), r"p must broadcast to the shape of counts \(2, 3\), got shape \(2,\)"),
        (COUNTS, "half", r"p must hold real numbers, got dtype <U4"),
        (np.array([[1.5, 2.0]]), 0.5, r"counts must be integer-valued, got non-integer values"),
        (np.array([[-1, 2]]), 0.5, r"counts must be finite and in \[0, 2\*\*31\], got values in \[-1.0, 2.0\]"),
        (np.array([[2.0**31 + 1]]), 0.5, r"counts must be finite and in \[0, 2\*\*31\]"),
        (np.array([[np.nan]]), 0.5, r"counts must be finite"),
        (np.ones((2, 2), np.uint8), 0.5, r"counts must have dtype float32 or float64 or int32 or int64, got uint8"),
        (np.ones((2, 2), bool), 0.5, r"counts must have dtype .*got bool"),
    ],
)
def test_binomial_bad_inputs(counts, p, match):
    with pytest.raises(GalguardValueError, match=match):
        kernels.binomial_thin(counts, p, seed=0)


def test_binomial_p_true_is_rejected():
    with pytest.raises(GalguardValueError, match=r"p must hold real numbers, got dtype bool"):
        kernels.binomial_thin(COUNTS, True, seed=0)


def _de_args(b=2, c=3):
    lo = np.zeros((b, c), np.float32)
    hi = np.ones((b, c), np.float32)
    return dict(pixels=1, channels=c, height=10, width=12, lo=lo, hi=hi, seed=0)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(lo=np.array([[0, 2, 0], [0, 0, 0]], np.float32)), r"lo must be <= hi, got lo > hi at \(image, band\) \(0, 1\): 2.0 > 1.0"),
        (dict(lo=np.zeros((2, 2), np.float32)), r"lo must have shape \(B, C\) = \(2, 3\), got \(2, 2\)"),
        (dict(hi=np.full((2, 3), np.inf, np.float32)), r"hi must be finite, got values in \[inf, inf\]"),
        (dict(height=0), r"height must be an integer in \[1, 16777216\], got 0"),
        (dict(width=2**25), r"width must be an integer in \[1, 16777216\], got 33554432"),
        (dict(pixels=0), r"pixels must be an integer in \[1, 65536\], got 0"),
        (dict(channels=1.0), r"channels must be an integer, got float 1.0"),
        (dict(seed=-3), r"seed must be an integer in \[0, .*\], got -3"),
    ],
)
def test_de_init_bad_inputs(change, match):
    args = {**_de_args(), **change}
    with pytest.raises(GalguardValueError, match=match):
        kernels.de_init([0, 1], 8, **args)


def test_de_init_bad_ids_and_popsize():
    with pytest.raises(GalguardValueError, match=r"popsize must be an integer in \[1, 4294967295\], got 0"):
        kernels.de_init([0, 1], 0, **_de_args())
    with pytest.raises(GalguardValueError, match=r"ids must have shape \(B,\), got \(2, 1\)"):
        kernels.de_init([[0], [1]], 4, **_de_args())
    with pytest.raises(GalguardValueError, match=r"ids must hold ids in \[0, 2\*\*32\), got values in \[-2, 1\]"):
        kernels.de_init([-2, 1], 4, **_de_args())


def _pop(p=6, b=2, c=3):
    return kernels.de_init(np.arange(b), p, **_de_args(b, c))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(F=0.0), r"F must be in \(0.0, 2.0\], got 0.0"),
        (dict(F=2.5), r"F must be in \(0.0, 2.0\], got 2.5"),
        (dict(CR=1.5), r"CR must be in \[0.0, 1.0\], got 1.5"),
        (dict(CR=-0.1), r"CR must be in \[0.0, 1.0\], got -0.1"),
        (dict(strategy="rand2"), r"strategy must be 'rand1' or 'best1', got 'rand2'"),
        (dict(strategy="best1"), r"best must be given for strategy 'best1', got None"),
        (dict(strategy="best1", best=[0, 6]), r"best must hold member indices in \[0, 6\), got max 6"),
        (dict(oob="wrap"), r"oob must be 'redraw' or 'clip', got 'wrap'"),
        (dict(ids=[0, 1, 2]), r"ids must have shape \(2,\), got \(3,\)"),
        (dict(generation=-1), r"generation must be an integer in \[0, 4294967295\], got -1"),
        (dict(lo=np.zeros((2, 2), np.float32), hi=np.ones((2, 2), np.float32)), r"pop must have G = pixels \* \(2 \+ C\) genes with C = 2 bands, got G = 5"),
        (dict(lo=np.ones((2, 3), np.float32), hi=np.zeros((2, 3), np.float32)), r"lo must be <= hi"),
    ],
)
def test_de_mutate_bad_inputs(change, match):
    pop = _pop()
    keep = pop.copy()
    args = dict(ids=[0, 1], generation=0, height=10, width=12, lo=np.zeros((2, 3), np.float32),
                hi=np.ones((2, 3), np.float32), seed=0)
    args.update(change)
    with pytest.raises(GalguardValueError, match=match):
        kernels.de_mutate(pop, **args)
    np.testing.assert_array_equal(pop, keep)


def test_de_mutate_bad_pop():
    args = dict(ids=[0, 1], generation=0, height=10, width=12, lo=np.zeros((2, 3), np.float32),
                hi=np.ones((2, 3), np.float32), seed=0)
    with pytest.raises(GalguardValueError, match=r"pop must have dtype float32, got float64"):
        kernels.de_mutate(_pop().astype(np.float64), **args)
    with pytest.raises(GalguardValueError, match=r"pop must have 3 dimensions, got shape \(2, 30\)"):
        kernels.de_mutate(_pop().reshape(2, -1), **args)
    with pytest.raises(GalguardValueError, match=r"pop must have at least 4 members per image for rand1, got P = 3"):
        kernels.de_mutate(_pop(p=3), **args)


def test_de_write_candidates_bad_inputs():
    images = np.zeros((2, 3, 10, 12), np.float32)
    members = _pop()
    with pytest.raises(GalguardValueError, match=r"images must have 4 dimensions, got shape \(3, 10, 12\)"):
        kernels.de_write_candidates(images[0], members)
    with pytest.raises(GalguardValueError, match=r"members must have shape \(B, P, G\) with B = 2 \(from images\), got \(1, 6, 5\)"):
        kernels.de_write_candidates(images, members[:1])
    with pytest.raises(GalguardValueError, match=r"members must have G = pixels \* \(2 \+ C\) genes with C = 3, got G = 4"):
        kernels.de_write_candidates(images, members[..., :4])
    with pytest.raises(GalguardValueError, match=r"images must have dtype float32, got float64"):
        kernels.de_write_candidates(images.astype(np.float64), members)
    with pytest.raises(GalguardValueError, match=r"out must have shape \(12, 3, 10, 12\), got \(11, 3, 10, 12\)"):
        kernels.de_write_candidates(images, members, out=np.zeros((11, 3, 10, 12), np.float32))
    with pytest.raises(GalguardValueError, match=r"out must be C-contiguous, got a non-contiguous array"):
        kernels.de_write_candidates(images, members, out=np.zeros((12, 3, 12, 10), np.float32).transpose(0, 1, 3, 2))
    big = np.zeros((24, 3, 10, 12), np.float32)
    with pytest.raises(GalguardValueError, match=r"out must not overlap images"):
        kernels.de_write_candidates(big[:2], members, out=big[:12])
    with pytest.raises(GalguardValueError, match=r"members must be a numpy array like images, got Tensor"):
        kernels.de_write_candidates(images, torch.from_numpy(members))


def test_de_select_bad_inputs():
    pop = _pop()
    fit = np.zeros((2, 6))
    with pytest.raises(GalguardValueError, match=r"trial must have the shape of pop \(2, 6, 5\), got \(2, 5, 5\)"):
        kernels.de_select(pop, fit, pop[:, :5], fit)
    with pytest.raises(GalguardValueError, match=r"fitness must have shape \(B, P\) = \(2, 6\), got \(2, 5\)"):
        kernels.de_select(pop, fit[:, :5], pop, fit)
    with pytest.raises(GalguardValueError, match=r"trial_fitness must have the dtype of fitness \(float64\), got float32"):
        kernels.de_select(pop, fit, pop, fit.astype(np.float32))
    with pytest.raises(GalguardValueError, match=r"fitness must have dtype float32 or float64, got int64"):
        kernels.de_select(pop, fit.astype(np.int64), pop, fit.astype(np.int64))
    with pytest.raises(GalguardValueError, match=r"trial must be a numpy array like pop, got Tensor"):
        kernels.de_select(pop, fit, torch.from_numpy(pop), fit)


def test_decode_members_bad_inputs():
    with pytest.raises(GalguardValueError, match=r"members must have G = pixels \* \(2 \+ C\) genes with C = 3, got G = 6"):
        kernels.decode_members(np.zeros((1, 2, 6), np.float32), height=4, width=4, channels=3)


def test_set_num_threads_bad():
    with pytest.raises(GalguardValueError, match=r"n must be an integer >= 1, got 0"):
        kernels.set_num_threads(0)
