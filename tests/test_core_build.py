"""The compiled core: what was built, Philox known answers, and the reference fallback."""

import os
import subprocess
import sys

import numpy as np
import pytest

from galguard import kernels
from galguard.kernels import _reference
from galguard.errors import CoreUnavailableWarning

# Random123 kat_vectors: counter (4 words), key (2 words) -> output (4 words)
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def test_build_info():
    from galguard import _core

    info = _core.build_info()
    for key in ("cuda", "cuda_architectures", "openmp", "version"):
        assert key in info
    assert isinstance(info["cuda"], bool) and isinstance(info["openmp"], bool)
    if info["cuda"]:
        for arch in ("80-real", "86-real", "89-real", "90-real", "90-virtual"):
            assert arch in info["cuda_architectures"]
    assert kernels.backend() == "core"
    assert kernels.build_info()["core"] is True
    assert kernels.get_num_threads() >= 1


@pytest.mark.parametrize(("ctr", "key", "expected"), PHILOX_KAT)
def test_philox_known_answers(ctr, key, expected):
    from galguard import _core

    assert tuple(_core.philox4x32_10(*ctr, *key)) == expected
    assert tuple(_reference.philox4x32_10(*ctr, *key)) == expected
    if _reference.HAVE_NUMBA:
        assert tuple(_reference.philox4x32_10.py_func(*ctr, *key)) == expected


def test_own_log_exp_accuracy():
    """The samplers' log, log1p and exp (shared by CPU, CUDA and reference) are within 2 ulp."""
    import math

    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.uniform(1e-16, 1, 3000), np.exp(rng.uniform(-40, 40, 3000))])
    for x in xs:
        assert abs(_reference._gg_log(x) - math.log(x)) <= np.spacing(abs(math.log(x))) + 1e-300
    for x in rng.uniform(-700, 0, 3000):
        assert abs(_reference._gg_exp(x) - math.exp(x)) <= np.spacing(math.exp(x))
    for d in np.concatenate([rng.uniform(-0.5, 0.5, 3000), rng.uniform(-1e-8, 1e-8, 1000)]):
        assert abs(_reference._gg_log1p(d) - math.log1p(d)) <= 2 * np.spacing(abs(math.log1p(d)))


@pytest.mark.slow
def test_fallback_to_reference_warns_and_agrees(monkeypatch):
    lam = np.random.default_rng(1).uniform(0, 50, size=(3, 40))
    counts = np.random.default_rng(2).integers(0, 500, size=(3, 40))
    expect_p = kernels.poisson(lam, seed=4)
    expect_b = kernels.binomial_thin(counts, 0.3, seed=4)
    monkeypatch.setattr(kernels._loader, "core", None)
    monkeypatch.setattr(kernels._loader, "problem", "galguard._core could not be imported (test)")
    assert kernels.backend() == "reference"
    assert kernels.build_info()["core"] is False
    with pytest.warns(CoreUnavailableWarning, match="could not be imported"):
        got = kernels.poisson(lam, seed=4)
    np.testing.assert_array_equal(got, expect_p)
    with pytest.warns(CoreUnavailableWarning):
        np.testing.assert_array_equal(kernels.binomial_thin(counts, 0.3, seed=4), expect_b)
    lo = np.zeros((2, 3), np.float32)
    hi = np.ones((2, 3), np.float32)
    with pytest.warns(CoreUnavailableWarning):
        pop = kernels.de_init([0, 1], 5, pixels=1, channels=3, height=4, width=4, lo=lo, hi=hi,
                              seed=0)
    monkeypatch.undo()
    np.testing.assert_array_equal(
        pop, kernels.de_init([0, 1], 5, pixels=1, channels=3, height=4, width=4, lo=lo, hi=hi,
                             seed=0)
    )


@pytest.mark.slow
def test_thread_count_from_environment(tmp_path):
    """Same results with OMP_NUM_THREADS=1 and 2 in fresh processes."""
    script = (
        "import numpy as np, hashlib\n"
        "from galguard import kernels\n"
        "lam = np.linspace(0, 2e4, 200_000).reshape(20, -1)\n"
        "k = kernels.poisson(lam, seed=3)\n"
        "b = kernels.binomial_thin(k, 0.2, seed=3)\n"
        "print(kernels.get_num_threads(), hashlib.sha256(k.tobytes() + b.tobytes()).hexdigest())\n"
    )
    out = {}
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}  # torch reads both
        res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, check=True, timeout=120)
        n, digest = res.stdout.split()
        assert n == threads
        out[threads] = digest
    assert out["1"] == out["2"]


def test_core_takes_versioned_and_unversioned_capsules():
    from galguard import _core

    lam = np.full((3, 50), 20.0)
    expect = kernels.poisson(lam, seed=9)
    for make in (lambda a: a.__dlpack__(), lambda a: a.__dlpack__(max_version=(1, 0))):
        out = np.empty_like(lam)
        _core.poisson(make(lam), make(out), None, 9, 0, 0)
        np.testing.assert_array_equal(out, expect)
    cap = lam.__dlpack__()
    out = np.empty_like(lam)
    _core.poisson(cap, out.__dlpack__(), None, 9, 0, 0)
    with pytest.raises(ValueError, match="mean must be an unused DLPack capsule"):
        _core.poisson(cap, out.__dlpack__(), None, 9, 0, 0)
    ro = np.empty_like(lam)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writable, got a read-only array"):
        _core.poisson(lam.__dlpack__(max_version=(1, 0)), ro.__dlpack__(max_version=(1, 0)),
                      None, 9, 0, 0)


@pytest.mark.slow
def test_reference_without_numba_agrees(tmp_path):
    """The plain-Python reference (numba absent) gives the same results as the core."""
    script = (
        "import sys\n"
        "sys.modules['numba'] = None  # import numba -> ImportError\n"
        "import numpy as np\n"
        "from galguard.kernels import _reference as R\n"
        "assert not R.HAVE_NUMBA\n"
        "lam = np.array([[0.0, 0.3, 7.0, 10.0, 55.0, 3e4, 1e7]])\n"
        "counts = np.array([[0, 5, 40, 1000, 2**31 - 1, 17, 3]])\n"
        "lo = np.zeros((2, 3), np.float32); hi = np.ones((2, 3), np.float32)\n"
        "pop = R.de_init(np.array([4, 9]), 5, pixels=1, channels=3, height=6, width=7, lo=lo,\n"
        "                hi=hi, seed=3)\n"
        "trial = R.de_mutate(pop, ids=np.array([4, 9]), generation=2, F=1.5, CR=0.5,\n"
        "                    height=6, width=7, lo=lo, hi=hi, seed=3)\n"
        "np.save(sys.argv[1], np.concatenate([R.poisson(lam, seed=8).ravel(),\n"
        "        R.binomial_thin(counts, 0.3, seed=8).ravel(), pop.ravel(), trial.ravel()]))\n"
    )
    import numpy as np

    path = str(tmp_path / "ref.npy")
    subprocess.run([sys.executable, "-c", script, path], check=True, timeout=120,
                   capture_output=True)
    got = np.load(path)
    lam = np.array([[0.0, 0.3, 7.0, 10.0, 55.0, 3e4, 1e7]])
    counts = np.array([[0, 5, 40, 1000, 2**31 - 1, 17, 3]])
    lo = np.zeros((2, 3), np.float32)
    hi = np.ones((2, 3), np.float32)
    pop = kernels.de_init([4, 9], 5, pixels=1, channels=3, height=6, width=7, lo=lo, hi=hi,
                          seed=3)
    trial = kernels.de_mutate(pop, ids=[4, 9], generation=2, F=1.5, CR=0.5, height=6, width=7,
                              lo=lo, hi=hi, seed=3)
    expect = np.concatenate([kernels.poisson(lam, seed=8).ravel(),
                             kernels.binomial_thin(counts, 0.3, seed=8).ravel(), pop.ravel(),
                             trial.ravel()])
    np.testing.assert_array_equal(got, expect)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_core_imports_from_the_checkout_root():
    """The README's `python -c "import galguard._core ..."` works in the checkout root too (the
    editable install of the README's test command builds the core for the source tree)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    code = ("import galguard, galguard._core as c; from galguard import kernels; "
            "print(galguard.__file__); print(kernels.backend(), c.build_info()['version'])")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    path, line = res.stdout.splitlines()[-2:]
    assert line.startswith("core ")
    assert os.path.realpath(path).startswith(os.path.realpath(ROOT))  # the source tree itself


def test_missing_core_in_a_source_tree_names_the_cause_and_the_fix():
    msg = kernels._loader.core_problem(ImportError("No module named 'galguard._core'"))
    assert "No module named 'galguard._core'" in msg
    galguard_dir = os.path.dirname(os.path.dirname(os.path.abspath(kernels.__file__)))
    if os.path.exists(os.path.join(os.path.dirname(galguard_dir), "CMakeLists.txt")):
        assert "source tree" in msg and "pip install -e ." in msg
    else:
        assert "reinstall galguard" in msg
