import os
import sys
from pathlib import Path

import numpy as np
import pytest

# Shared test helpers (tests/_tiny.py) import as top-level modules under --import-mode=importlib.
sys.path.insert(0, str(Path(__file__).parent))

os.environ.setdefault("OMP_NUM_THREADS", "2")
# Subprocesses started by the tests (``python -c``, ``python -m galguard``) must import the
# installed galguard, with its compiled core, not the source tree in the current directory.
os.environ["PYTHONSAFEPATH"] = "1"


def _cuda_available():
    try:
        import torch
    except ImportError:
        return False
    if not torch.cuda.is_available():
        return False
    try:
        from galguard import _core
    except ImportError:
        return False
    return bool(_core.build_info().get("cuda"))


CUDA = _cuda_available()


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason="no CUDA GPU with a CUDA-enabled galguard core on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    """Each available device: 'cpu' always, 'cuda' where a GPU exists."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def core():
    """The compiled core, required: a test comparing the core with its reference twin fails
    (never passes by comparing the reference with itself) when `galguard._core` did not load."""
    from galguard import kernels

    if kernels.backend() != "core":
        pytest.fail(f"galguard._core is not loaded: {kernels.build_info().get('error')}")
    from galguard import _core
    return _core
