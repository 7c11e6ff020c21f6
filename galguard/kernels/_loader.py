"""Loading the compiled core: what it was built with, its threads, and which implementation
runs a call (`implementation`, `dispatch`).

The loaded extension is ``core`` (None where it could not be imported, ``problem`` says why);
other modules read it as ``_loader.core`` at call time, never bind it at import.
"""

import os
import warnings

from .._validate import validate_int
from ..errors import CoreUnavailableWarning

_REQUIRED = (
    "build_info",
    "poisson",
    "binomial_thin",
    "de_init",
    "de_mutate",
    "de_write_candidates",
    "de_select",
    "set_num_threads",
    "get_max_threads",
)
U32 = 2**32
U64 = 2**64
MAX_MEAN = 1e15
MAX_COUNT = 2.0**31
MAX_EXTENT = 2**24


def core_problem(exc):
    """Why ``galguard._core`` is missing, and the fix."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.exists(os.path.join(root, "CMakeLists.txt")):
        return (f"galguard._core could not be imported ({exc}): galguard was imported from the "
                f"source tree {root}, which has no compiled core; build it for this checkout "
                f"with `pip install -e .` (README, Contributing), or run Python outside the "
                f"checkout to use the installed galguard")
    return f"galguard._core could not be imported ({exc}); reinstall galguard (`pip install .`)"


def _load_core():
    try:
        from .. import _core
    except ImportError as exc:  # pragma: no cover - depends on the build
        return None, core_problem(exc)
    missing = [name for name in _REQUIRED if not hasattr(_core, name)]
    if missing:  # pragma: no cover - stale build
        return None, f"galguard._core lacks {', '.join(missing)} (stale build?)"
    return _core, ""


core, problem = _load_core()
CORE_CUDA = bool(core is not None and core.build_info().get("cuda"))


# ---------------------------------------------------------------------------------------------
# Introspection
# ---------------------------------------------------------------------------------------------
def backend():
    """Name of the implementation in use: ``"core"`` or ``"reference"``.

    Returns
    -------
    str
        ``"core"`` when the compiled extension is loaded, ``"reference"`` otherwise.
    """
    return "core" if core is not None else "reference"


def build_info():
    """What the compiled core was built with.

    Returns
    -------
    dict
        ``galguard._core.build_info()`` (keys ``cuda``, ``cuda_architectures``, ``openmp``,
        ``version``, ...), or ``{"core": False, "cuda": False, "openmp": False, "error": ...}``
        when the core is unavailable.
    """
    if core is None:
        return {"core": False, "cuda": False, "openmp": False, "error": problem}
    info = dict(core.build_info())
    info["core"] = True
    return info


def set_num_threads(n):
    """Set the number of OpenMP threads used by the CPU kernels.

    Results never depend on it. With torch imported, torch and galguard share one OpenMP
    runtime, so this also sets torch's OpenMP thread count.

    Parameters
    ----------
    n : int
        Number of threads, >= 1.
    """
    n = validate_int("n", n, minimum=1)
    if core is not None:
        core.set_num_threads(n)


def get_num_threads():
    """Maximum number of OpenMP threads the CPU kernels will use (1 without the core)."""
    return int(core.get_max_threads()) if core is not None else 1


def genes_per_member(pixels, channels):
    """Number of genes G = pixels * (2 + channels) of one DE member."""
    return int(pixels) * (2 + int(channels))


def _is_cuda_tensor(x):
    return getattr(getattr(x, "device", None), "type", None) == "cuda" and hasattr(x, "is_cuda")


def implementation(x):
    """'core', 'core-cpu' (CUDA tensor, CPU-only core) or 'reference'."""
    if core is None:
        warnings.warn(
            f"{problem}; using the numpy reference implementation (slow)",
            CoreUnavailableWarning,
            stacklevel=3,
        )
        return "reference"
    if _is_cuda_tensor(x) == "cuda" and not CORE_CUDA:
        warnings.warn(
            "galguard._core was built without CUDA; computing on the CPU and copying back "
            "(reinstall with GALGUARD_CUDA=ON on a machine with nvcc)",
            CoreUnavailableWarning,
            stacklevel=3,
        )
        return "core-cpu"
    return "core"


def dispatch(like, reference, compiled, *, work=True):
    """Run one kernel call on the implementation ``like`` gets (the one place that decides).

    Parameters
    ----------
    like : array or tensor
        The input whose kind and device the results take.
    reference : callable
        ``reference()`` computes the results with `galguard.kernels._reference` (numpy); they
        are converted to ``like``'s kind and device.
    compiled : callable
        ``compiled(core, place)`` computes them with the compiled ``core``; ``place(x)`` moves
        each argument to where the core runs (itself, or the CPU for a CUDA tensor given to a
        core built without CUDA, whose results are then copied back).
    work : bool, optional
        False when there is nothing to compute: the compiled path runs (it only allocates) and
        no warning is given.

    Returns
    -------
    the results (one array or a tuple), as ``like``
    """
    from ._arrays import back, to_cpu

    how = implementation(like) if work else "core"
    if how == "reference":
        res = reference()
        return tuple(back(r, like) for r in res) if isinstance(res, tuple) else back(res, like)
    if how == "core":
        return compiled(core, lambda x: x)
    res = compiled(core, lambda x: None if x is None else to_cpu(x))
    return tuple(back(r, like) for r in res) if isinstance(res, tuple) else back(res, like)
