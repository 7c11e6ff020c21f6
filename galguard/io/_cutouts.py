"""The `Cutouts` container: float32 (N, C, H, W) flux, a bad-pixel mask, an optional variance
and per-cutout metadata."""

import logging

import numpy as np
from astropy.table import Table, vstack

from ..errors import GalguardValueError
from ..flags import Flag

__all__ = ["Cutouts", "META_COLUMNS", "empty_meta"]

log = logging.getLogger(__name__)

#: The metadata columns every `Cutouts.meta` carries, with their kind:
#: ``"i"`` int64 (N,), ``"s"`` str (N,), ``"f"`` float64 (N, C), ``"b"`` bool (N, C),
#: ``"k"`` bool (N,).
META_COLUMNS = (
    ("id", "i"),           # OBJID / catalog ID where given, else the global input position
    ("id_given", "k"),     # True where ``id`` came from the source (OBJID, a catalog ID)
    ("index", "i"),        # global position in the input order (0-based)
    ("source", "s"),       # file path, or "<ndarray>", "<HDUList>", "<NDData>", "<image>" ...
    ("hdu", "s"),          # HDU number(s) read, comma-separated ("" when not from FITS)
    ("row", "i"),          # position of the cutout inside its source (stack row)
    ("bands", "s"),        # comma-separated band names of the planes ("" = unknown name)
    ("gain", "f"),         # e- per data unit, (N, C)
    ("exptime", "f"),      # s, (N, C)
    ("sky", "f"),          # sky level that was subtracted, data units, (N, C)
    ("zeropoint", "f"),    # AB magnitude of one data unit, (N, C)
    ("seeing", "f"),       # PSF FWHM in arcsec where the source gives it, (N, C)
    ("saturation", "f"),   # saturation level (SATURATE), raw data units before sky, (N, C)
    ("sky_removed", "b"),  # True where galguard itself subtracted an estimated sky, (N, C)
    ("bunit", "s"),        # BUNIT of the data
    ("flags", "i"),        # galguard.flags.Flag bitmask
    ("error", "s"),        # "" when the row is good
    ("true_label", "i"),   # 0 spiral, 1 elliptical, 2 merger; -1 unknown
)


def empty_meta(n, c):
    """Return a metadata Table of ``n`` rows for ``c`` bands filled with "unknown" values.

    Integers are -1 (``index`` and ``row`` 0 .. n-1, ``flags`` 0), floats NaN, strings "".
    """
    t = Table()
    for name, kind in META_COLUMNS:
        if kind == "i":
            col = np.full(n, -1, dtype=np.int64)
        elif kind == "s":
            col = np.full(n, "", dtype="U1")
        elif kind == "f":
            col = np.full((n, c), np.nan, dtype=np.float64)
        elif kind == "k":
            col = np.zeros(n, dtype=bool)
        else:
            col = np.zeros((n, c), dtype=bool)
        t[name] = col
    t["index"] = np.arange(n, dtype=np.int64)
    t["row"] = np.arange(n, dtype=np.int64)
    t["flags"] = np.zeros(n, dtype=np.int64)
    return t


class Cutouts:
    """A batch of galaxy cutouts.

    Parameters
    ----------
    data : array-like, shape (N, C, H, W)
        Sky-subtracted flux in BUNIT; converted to native-endian float32 (copied only when needed).
    mask : array-like of bool, shape (N, C, H, W), optional
        True marks a bad pixel (non-finite, off the parent image, padding, bad input).
        Default: no pixel masked.
    meta : `~astropy.table.Table`, optional
        One row per cutout, in input order (see `META_COLUMNS`). Default: `empty_meta`.
    variance : array-like, shape (N, C, H, W), optional
        Per-pixel noise variance of ``data`` (BUNIT squared), from a VARIANCE or inverse-variance
        plane or an NDData uncertainty; NaN where unknown. Default None: the source has none.
    bands : sequence of str, optional
        Band name of each plane ("" for unknown). Default: taken from the first row of
        ``meta['bands']`` where present, else all "".

    Attributes
    ----------
    data, mask, meta, variance, bands
        As above. ``bands`` is a tuple; ``variance`` float32 or None.

    Notes
    -----
    ``len(cutouts)`` is N. ``cutouts[i]``, ``cutouts[a:b]``, ``cutouts[bool_mask]`` and
    ``cutouts[int_array]`` return new `Cutouts` (an integer gives a batch of one);
    `Cutouts.concatenate` joins batches. The arrays of a slice are numpy views, as in numpy.

    Examples
    --------
    >>> import numpy as np
    >>> from galguard.io import Cutouts
    >>> c = Cutouts(np.zeros((4, 3, 8, 8), np.float32), bands=("g", "r", "i"))
    >>> len(c), c.bands, len(c[1:3])
    (4, ('g', 'r', 'i'), 2)
    """

    def __init__(self, data, mask=None, meta=None, *, bands=None, variance=None):
        arr = np.asarray(data)
        if arr.ndim != 4:
            raise GalguardValueError(f"data must have shape (N, C, H, W), got {arr.shape}")
        if arr.dtype.kind not in "biuf":
            raise GalguardValueError(f"data must be numeric, got dtype {arr.dtype}")
        if arr.dtype != np.float32 or not arr.dtype.isnative:
            arr = arr.astype(np.float32)
        n, c = arr.shape[:2]
        if mask is None:
            m = np.zeros(arr.shape, dtype=bool)
        else:
            m = np.asarray(mask)
            if m.shape != arr.shape:
                raise GalguardValueError(f"mask must have the shape of data {arr.shape}, got {m.shape}")
            if m.dtype != bool:
                m = m.astype(bool)
        if variance is not None:
            variance = np.asarray(variance)
            if variance.shape != arr.shape:
                raise GalguardValueError(f"variance must have the shape of data {arr.shape}, "
                                         f"got {variance.shape}")
            if variance.dtype != np.float32 or not variance.dtype.isnative:
                variance = variance.astype(np.float32)
        if meta is None:
            meta = empty_meta(n, c)
        elif not isinstance(meta, Table):
            raise GalguardValueError(f"meta must be an astropy Table, got {type(meta).__name__}")
        elif len(meta) != n:
            raise GalguardValueError(f"meta must have one row per cutout ({n}), got {len(meta)} rows")
        if bands is None:
            if n and "bands" in meta.colnames and str(meta["bands"][0]):
                bands = tuple(str(meta["bands"][0]).split(","))
            else:
                bands = ("",) * c
        bands = tuple(str(b) for b in bands)
        if len(bands) != c:
            raise GalguardValueError(f"bands must name the {c} planes, got {len(bands)}: {bands}")
        self.data = arr
        self.mask = m
        self.meta = meta
        self.variance = variance
        self.bands = bands

    # -- container protocol -------------------------------------------------------------------
    def __len__(self):
        return self.data.shape[0]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            n = len(self)
            k = int(key)
            if not -n <= k < n:
                raise IndexError(f"index {k} out of range for {n} cutouts")
            key = slice(k % n, k % n + 1)
        elif not isinstance(key, slice):
            key = np.asarray(key)
            if key.size == 0 and key.dtype != bool:
                key = key.astype(np.int64)
            if key.dtype == bool:
                if key.shape != (len(self),):
                    raise GalguardValueError(
                        f"a boolean index must have shape ({len(self)},), got {key.shape}")
            elif key.dtype.kind not in "iu":
                raise GalguardValueError(f"index must be an int, slice, bool mask or int array, "
                                         f"got dtype {key.dtype}")
        return Cutouts(self.data[key], self.mask[key], self.meta[key], bands=self.bands,
                       variance=None if self.variance is None else self.variance[key])

    def __repr__(self):
        nbad = int(np.count_nonzero(self.flags & Flag.BAD_INPUT)) if len(self) else 0
        var = "" if self.variance is None else " variance"
        return (f"<Cutouts N={len(self)} shape={self.data.shape[1:]} bands={self.bands} "
                f"bad={nbad}{var}>")

    @property
    def shape(self):
        """(N, C, H, W)."""
        return self.data.shape

    @property
    def flags(self):
        """int64 (N,) flag bitmask (a view of ``meta['flags']``)."""
        return np.asarray(self.meta["flags"])

    @property
    def good(self):
        """bool (N,): rows without `Flag.BAD_INPUT`."""
        return (self.flags & int(Flag.BAD_INPUT)) == 0

    def copy(self):
        """A deep copy."""
        return Cutouts(self.data.copy(), self.mask.copy(), self.meta.copy(), bands=self.bands,
                       variance=None if self.variance is None else self.variance.copy())

    @classmethod
    def concatenate(cls, items):
        """Join batches in order.

        Parameters
        ----------
        items : sequence of `Cutouts`
            All with the same (C, H, W); bands must agree where both are named.

        Returns
        -------
        Cutouts
            ``index`` is renumbered 0 .. N-1 in the joined order. Where some batches carry a
            variance and others none, the joined variance is NaN (unknown) for the latter.

        Raises
        ------
        GalguardValueError
            If ``items`` is empty or the shapes or bands differ.
        """
        items = list(items)
        if not items:
            raise GalguardValueError("items must hold at least one Cutouts, got none")
        for i, it in enumerate(items):
            if not isinstance(it, Cutouts):
                raise GalguardValueError(f"items[{i}] must be a Cutouts, got {type(it).__name__}")
        shape = items[0].data.shape[1:]
        bands = list(items[0].bands)
        for i, it in enumerate(items[1:], 1):
            if it.data.shape[1:] != shape:
                raise GalguardValueError(
                    f"items[{i}] has cutouts of shape {it.data.shape[1:]}, expected {shape}")
            for k, (a, b) in enumerate(zip(bands, it.bands)):
                if a and b and a != b:
                    raise GalguardValueError(f"items[{i}] has bands {it.bands}, expected {tuple(bands)}")
                if not a:
                    bands[k] = b
        if len(items) == 1:
            out = items[0].copy()
        else:
            cols = [tuple(it.meta.colnames) for it in items]
            join = "exact" if all(c == cols[0] for c in cols) else "outer"
            meta = vstack([it.meta for it in items], join_type=join, metadata_conflicts="silent")
            var = None
            if any(it.variance is not None for it in items):
                var = np.concatenate([np.full(it.data.shape, np.nan, np.float32)
                                      if it.variance is None else it.variance for it in items])
            out = cls(np.concatenate([it.data for it in items]),
                      np.concatenate([it.mask for it in items]), meta, bands=tuple(bands),
                      variance=var)
        if "index" in out.meta.colnames:
            out.meta["index"] = np.arange(len(out), dtype=np.int64)
        out.bands = tuple(bands)
        return out

    def to_torch(self, *, device=None, mask=False):
        """Return the data (or the mask with ``mask=True``) as a torch tensor.

        Parameters
        ----------
        device : str or torch.device, optional
            Where to put the tensor (default: CPU, sharing memory with ``self.data``).
        mask : bool, optional
            Return the bool mask instead of the float32 data.
        """
        import torch

        t = torch.from_numpy(np.ascontiguousarray(self.mask if mask else self.data))
        return t if device is None else t.to(device)
