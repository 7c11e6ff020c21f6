"""`GalaxyClassifier`: frozen preprocessing + network + latent statistics, in one module."""

import logging

import numpy as np
import torch
from torch import nn

from .._model_io import model_latent, model_logits
from ..errors import GalguardValueError

__all__ = ["Preprocess", "GalaxyClassifier", "fit_latent_stats", "as_tensor"]

log = logging.getLogger(__name__)


class Preprocess(nn.Module):
    r"""Frozen per-band arcsinh stretch applied to raw flux.

    For band :math:`b` with constants :math:`(l_b, h_b, c_b)`:

    .. math::

        y = \left(\operatorname{arcsinh}\left(c_b \, \mathrm{clip}(x, l_b, h_b)\right) + 1\right) / 2

    The constants are computed once from a training set (:meth:`from_data`: the 0.1 and 99.9
    percentiles of each band, and :math:`c_b = 0.85 / h_b`, the DeepAdversaries recipe) and are
    stored with the model as buffers; they are never recomputed per batch, so a galaxy's
    prediction does not depend on the other galaxies in its batch.

    Non-finite input pixels are replaced by 0 (the sky level of sky-subtracted flux) before
    clipping.

    Parameters
    ----------
    lo, hi, scale : array-like, shape (C,)
        Per-band clip limits and arcsinh scale.
    """

    def __init__(self, lo, hi, scale):
        super().__init__()
        lo, hi, scale = (torch.as_tensor(np.asarray(v, dtype=np.float32)).reshape(-1)
                         for v in (lo, hi, scale))
        if not (lo.shape == hi.shape == scale.shape):
            raise GalguardValueError(
                f"lo, hi and scale must have the same shape (C,), got {tuple(lo.shape)}, "
                f"{tuple(hi.shape)} and {tuple(scale.shape)}")
        if not bool(torch.all(hi > lo)):
            raise GalguardValueError(f"hi must exceed lo in every band, got lo={lo.tolist()}, "
                                     f"hi={hi.tolist()}")
        if not bool(torch.all(scale > 0)) or not bool(torch.all(torch.isfinite(scale))):
            raise GalguardValueError(f"scale must be finite and > 0, got {scale.tolist()}")
        self.register_buffer("lo", lo)
        self.register_buffer("hi", hi)
        self.register_buffer("scale", scale)

    @classmethod
    def from_data(cls, images, *, percentiles=(0.1, 99.9), stretch=0.85, max_pixels=20_000_000):
        """Fit the constants on a training set of raw flux images (N, C, H, W).

        Parameters
        ----------
        images : numpy.ndarray or torch.Tensor, shape (N, C, H, W)
            Training images; not modified.
        percentiles : (float, float), optional
            Lower and upper clip percentiles, per band.
        stretch : float, optional
            ``scale = stretch / upper percentile``.
        max_pixels : int, optional
            Per band, at most this many pixels are used (an evenly strided, deterministic
            subset) to bound memory and time.
        """
        x = images.detach().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
        if x.ndim != 4:
            raise GalguardValueError(f"images must have shape (N, C, H, W), got {x.shape}")
        lo, hi = [], []
        for b in range(x.shape[1]):
            v = x[:, b].reshape(-1)
            if v.size > max_pixels:
                v = v[:: int(np.ceil(v.size / max_pixels))]
            v = v[np.isfinite(v)]
            if v.size == 0:
                raise GalguardValueError(f"images band {b} has no finite pixel")
            pl, ph = np.percentile(v.astype(np.float64), percentiles)
            if not ph > 0:
                raise GalguardValueError(
                    f"images band {b}: the {percentiles[1]} percentile must be > 0, got {ph}")
            lo.append(pl)
            hi.append(ph)
        hi = np.asarray(hi)
        return cls(lo, hi, stretch / hi)

    def forward(self, x):
        x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        shape = (1, -1, 1, 1)
        x = torch.clamp(x, self.lo.view(shape), self.hi.view(shape))
        return (torch.asinh(self.scale.view(shape) * x) + 1.0) / 2.0

    def inverse(self, y):
        """Raw flux that maps to preprocessed value ``y``: ``sinh(2 y - 1) / scale``.

        Exact for ``y`` in the image of ``[lo, hi]``; values outside it invert to flux beyond the
        clip limits (which the forward map would clip). ``y`` is a tensor (N, C, H, W) or (C,).
        """
        y = torch.as_tensor(y, dtype=self.scale.dtype, device=self.scale.device)
        shape = (1, -1, 1, 1) if y.ndim == 4 else (-1,)
        return torch.sinh(2.0 * y - 1.0) / self.scale.view(shape)

    def constants(self):
        """The constants as plain lists (for the model card)."""
        return {"clip_lo": self.lo.tolist(), "clip_hi": self.hi.tolist(),
                "scale": self.scale.tolist()}


def as_tensor(cutouts, *, name="cutouts"):
    """Turn a `Cutouts` (anything with ``.data``), a numpy array or a tensor into float32 torch.

    The input is never modified (numpy input is copied only when its dtype or byte order must
    change; the result is only read).
    """
    data = getattr(cutouts, "data", cutouts)
    if torch.is_tensor(data):
        t = data
    else:
        try:
            arr = np.asarray(data)
        except Exception as exc:  # pragma: no cover - defensive
            raise GalguardValueError(f"{name} must be array-like, got {type(cutouts).__name__}") \
                from exc
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise GalguardValueError(f"{name} must hold numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float32, copy=False)
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        t = torch.from_numpy(arr)
    if not t.is_floating_point():
        t = t.float()
    return t.to(torch.float32)


class GalaxyClassifier(nn.Module):
    """A morphology classifier that takes raw flux cutouts.

    It chains the frozen :class:`Preprocess` and a network returning ``(latent, logits)``, and
    carries the classes, bands, input size, model card and the latent statistics fitted on its
    training set.

    Parameters
    ----------
    network : torch.nn.Module
        Maps preprocessed (N, C, H, W) images to ``(latent (N, D), logits (N, K))``.
    preprocess : Preprocess
        Frozen preprocessing.
    classes : sequence of str
    bands : sequence of str
    input_size : int or (int, int)
        Height and width of the cutouts the network expects (an int when square).
    card : dict, optional
        Model card (see :func:`galguard.models.load`).
    latent_stats : dict of tensors, optional
        ``class_means`` (K, D), ``precision`` (D, D), ``centroid_separation`` (scalar).
    name, sha256 : str, optional

    Notes
    -----
    ``forward`` is differentiable and has no side effects; use :meth:`predict` for numpy
    probabilities.
    """

    def __init__(self, network, preprocess, *, classes, bands, input_size, card=None,
                 latent_stats=None, name=None, sha256=None):
        super().__init__()
        self.network = network
        self.preprocess = preprocess
        self.classes = tuple(classes)
        self.bands = tuple(bands)
        if isinstance(input_size, (tuple, list)):
            h, w = (int(v) for v in input_size)
            self.input_size = h if h == w else (h, w)
        else:
            self.input_size = int(input_size)
        if isinstance(preprocess, Preprocess) and preprocess.lo.numel() != len(self.bands):
            raise GalguardValueError(
                f"preprocess has constants for {preprocess.lo.numel()} bands but bands is "
                f"{self.bands!r}")
        self._latent_dim = None
        self.card = dict(card or {})
        self.name = name if name is not None else self.card.get("name")
        self.sha256 = sha256 if sha256 is not None else self.card.get("sha256")
        for key in ("class_means", "precision", "centroid_separation"):
            self.register_buffer(f"latent_{key}", None)
        if latent_stats is not None:
            self.set_latent_stats(latent_stats)

    # ----------------------------------------------------------------------------------------
    @property
    def n_classes(self):
        return len(self.classes)

    @property
    def latent_stats(self):
        """Dict of tensors ``class_means`` (K, D), ``precision`` (D, D), ``centroid_separation``
        (0-d), or None if the statistics were never fitted."""
        if self.latent_class_means is None:
            return None
        return {"class_means": self.latent_class_means, "precision": self.latent_precision,
                "centroid_separation": self.latent_centroid_separation}

    def set_latent_stats(self, stats):
        """Attach latent statistics (see :func:`fit_latent_stats`)."""
        means = torch.as_tensor(stats["class_means"], dtype=torch.float32)
        prec = torch.as_tensor(stats["precision"], dtype=torch.float32)
        sep = torch.as_tensor(stats["centroid_separation"], dtype=torch.float32).reshape(())
        if means.ndim != 2 or means.shape[0] != self.n_classes:
            raise GalguardValueError(f"class_means must have shape ({self.n_classes}, D), got "
                                     f"{tuple(means.shape)}")
        d = means.shape[1]
        if tuple(prec.shape) != (d, d):
            raise GalguardValueError(f"precision must have shape ({d}, {d}), got "
                                     f"{tuple(prec.shape)}")
        self.latent_class_means = means
        self.latent_precision = prec
        self.latent_centroid_separation = sep

    @property
    def ood_reference(self):
        """``(scorer, state)`` of the out-of-distribution reference (`galguard.ood.scorers`:
        ``scorer`` such as ``"input+knn"``, ``state`` ``{part: {key: numpy array}}``), or None.
        Stored as buffers ``ood__<part>__<key>`` (saved with the weights) and the card's
        ``ood`` entry."""
        name = (self.card.get("ood") or {}).get("scorer")
        if not name:
            return None
        state = {}
        for key, buf in self.named_buffers():
            if key.startswith("ood__"):
                _, part, field = key.split("__", 2)
                state.setdefault(part, {})[field] = buf.detach().cpu().double().numpy()
        parts = [p.strip() for p in name.split("+")]
        if any(p not in state for p in parts):
            return None
        return name, state

    def set_ood_reference(self, scorer, state, info=None):
        """Attach an out-of-distribution reference (see `ood_reference`); ``info`` (a dict:
        threshold, rates, what it was fitted on) goes into the card's ``ood`` entry."""
        for key in [k for k, _ in self.named_buffers() if k.startswith("ood__")]:
            delattr(self, key)
        for part, st in state.items():
            for field, value in st.items():
                self.register_buffer(f"ood__{part}__{field}",
                                     torch.as_tensor(np.asarray(value), dtype=torch.float32))
        card = dict(self.card)
        card["ood"] = {"scorer": scorer, **(info or {})}
        self.card = card

    # ----------------------------------------------------------------------------------------
    def _check_input(self, x):
        if x.ndim != 4:
            raise GalguardValueError(f"images must have shape (N, C, H, W), got {tuple(x.shape)}")
        c, h, w = x.shape[1:]
        H, W = self.input_hw
        if c != len(self.bands) or h != H or w != W:
            raise GalguardValueError(
                f"images must have shape (N, {len(self.bands)}, {H}, {W}) for this model "
                f"(bands {','.join(self.bands)}), got {tuple(x.shape)}")

    @property
    def input_hw(self):
        """(height, width) of the cutouts the network expects."""
        s = self.input_size
        return tuple(s) if isinstance(s, tuple) else (s, s)

    def forward(self, x):
        """Raw flux (N, C, H, W) float32 -> (latent (N, D), logits (N, K)) (logits alone for a
        wrapped module without a latent output)."""
        self._check_input(x)
        return self.network(self.preprocess(x))

    @torch.inference_mode()
    def _batched(self, cutouts, what, batch_size, device):
        if batch_size is not None and (not isinstance(batch_size, (int, np.integer))
                                       or batch_size < 1):
            raise GalguardValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        x = as_tensor(cutouts)
        self._check_input(x)
        if device is None:
            device = next(self.parameters()).device
        if batch_size is None:
            # on a CPU, batches of 8-32 cutouts run ~2x faster than 256 (BENCHMARKS.md)
            batch_size = 32 if torch.device(device).type == "cpu" else 256
        was_training = self.training
        self.eval()
        try:
            out = []
            for i in range(0, x.shape[0], batch_size):
                o = self(x[i:i + batch_size].to(device))
                if what == "latent":
                    r = model_latent(o)
                    if r is None:
                        raise GalguardValueError(f"model {self.name!r} has no latent output "
                                                 "(wrap it with latent_layer=...)")
                else:
                    r = torch.softmax(model_logits(o).double(), dim=1)
                out.append(r.float().cpu().numpy())
        finally:
            self.train(was_training)
        if not out:
            k = self.latent_dim if what == "latent" else self.n_classes
            return np.zeros((0, k), np.float32)
        return np.concatenate(out)

    @property
    def latent_dim(self):
        """Size of the latent vector (None for a wrapped module without one)."""
        bottleneck = getattr(self.network, "bottleneck", None)
        if isinstance(bottleneck, nn.Linear):
            return int(bottleneck.out_features)
        return self._latent_dim

    def set_latent_dim(self, d):
        """Record the latent size of a network without a ``bottleneck`` (see `wrap`)."""
        self._latent_dim = None if d is None else int(d)

    def predict(self, cutouts, *, batch_size=None, device=None):
        """Class probabilities for raw flux cutouts.

        Parameters
        ----------
        cutouts : Cutouts, numpy.ndarray or torch.Tensor, shape (N, C, H, W)
            Raw flux in the units of the training data; a `galguard.io.Cutouts` (or anything with
            a ``.data`` array) is accepted. Not modified.
        batch_size : int, optional
            Only affects speed and memory (evaluation mode: no batch statistics). Default 32 on
            a CPU, 256 on a GPU.
        device : str or torch.device, optional
            Where to run; default the model's device.

        Returns
        -------
        numpy.ndarray, shape (N, K), float32
            Softmax probabilities in the order of :attr:`classes`.
        """
        return self._batched(cutouts, "probs", batch_size, device)

    def embed(self, cutouts, *, batch_size=None, device=None):
        """Latent (bottleneck) vectors (N, D) as numpy float32; see :meth:`predict`."""
        return self._batched(cutouts, "latent", batch_size, device)

    def extra_repr(self):
        return (f"name={self.name!r}, classes={self.classes}, bands={self.bands}, "
                f"input_size={self.input_size}")


def fit_latent_stats(latents, labels, n_classes):
    """Class means, tied-covariance precision and centroid separation of latent vectors.

    The tied (pooled within-class) covariance is shrunk towards a scaled identity with the
    Ledoit-Wolf coefficient, which keeps it invertible when D is comparable to N.

    Parameters
    ----------
    latents : array-like, shape (N, D)
    labels : array-like of int, shape (N,)
    n_classes : int

    Returns
    -------
    dict
        ``class_means`` (K, D), ``precision`` (D, D), ``centroid_separation`` (0-d): the mean
        Euclidean distance between pairs of class means; all float32 tensors. Plus
        ``shrinkage`` (float), the Ledoit-Wolf coefficient used.
    """
    from sklearn.covariance import ledoit_wolf

    z = np.asarray(latents, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise GalguardValueError(f"latents must be (N, D) and labels (N,), got {z.shape} and "
                                 f"{y.shape}")
    means = np.zeros((n_classes, z.shape[1]))
    resid = np.empty_like(z)
    for k in range(n_classes):
        sel = y == k
        if not sel.any():
            raise GalguardValueError(f"labels has no member of class {k}")
        means[k] = z[sel].mean(axis=0)
        resid[sel] = z[sel] - means[k]
    cov, shrink = ledoit_wolf(resid, assume_centered=True)
    precision = np.linalg.inv(cov)
    precision = 0.5 * (precision + precision.T)
    d = [np.linalg.norm(means[i] - means[j]) for i in range(n_classes)
         for j in range(i + 1, n_classes)]
    return {"class_means": torch.as_tensor(means, dtype=torch.float32),
            "precision": torch.as_tensor(precision, dtype=torch.float32),
            "centroid_separation": torch.tensor(float(np.mean(d)) if d else 0.0),
            "shrinkage": float(shrink)}
