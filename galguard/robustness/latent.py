"""Latent-space metrics: shifts between an image and its perturbed versions, and an
out-of-distribution score.

The DeepAdversaries study measured how far a perturbation moves a galaxy in the model's latent
(bottleneck) space with the Euclidean distance. galguard normalises that distance by the model's
typical class-centroid separation, stored with the model (``model.latent_stats``), so that one
threshold means the same thing for every model: a shift of 1 is as far as one class centroid lies
from another on average.
"""

import logging
import math

import torch

from .._model_io import model_latent
from ..errors import GalguardValueError

__all__ = ["latent_shift", "ood_score", "get_latent_stats", "model_latent"]

log = logging.getLogger(__name__)


def get_latent_stats(model):
    """Return ``model.latent_stats`` (a dict of tensors) or None when the model has none.

    Parameters
    ----------
    model : torch.nn.Module
        Usually a `galguard.models.GalaxyClassifier`.
    """
    stats = getattr(model, "latent_stats", None)
    if not stats:
        return None
    for key in ("class_means", "precision", "centroid_separation"):
        if key not in stats:
            raise GalguardValueError(
                f"model.latent_stats must hold 'class_means', 'precision' and "
                f"'centroid_separation', got keys {sorted(stats)}")
    return stats


def latent_shift(latent, perturbed, *, scale=None):
    """Euclidean distance between latent vectors, optionally divided by `scale`.

    Parameters
    ----------
    latent : torch.Tensor
        (N, D) latents of the original images.
    perturbed : torch.Tensor
        (N, D) or (K, N, D) latents of perturbed versions (K realisations).
    scale : float or torch.Tensor, optional
        Divisor, usually ``model.latent_stats["centroid_separation"]``. None: no normalisation.

    Returns
    -------
    torch.Tensor
        (N,) or (K, N) distances.

    Notes
    -----
    ``shift = ||z' - z||_2 / scale``: the paper's distance, divided by the mean pairwise distance
    between class centroids of the training set when `scale` is that separation.
    """
    if latent.ndim != 2:
        raise GalguardValueError(f"latent must have shape (N, D), got {tuple(latent.shape)}")
    if perturbed.shape[-2:] != latent.shape or perturbed.ndim not in (2, 3):
        raise GalguardValueError(
            f"perturbed must have shape {tuple(latent.shape)} or (K, *{tuple(latent.shape)}), "
            f"got {tuple(perturbed.shape)}")
    d = torch.linalg.vector_norm((perturbed - latent).double(), dim=-1)
    if scale is not None:
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise GalguardValueError(f"scale must be a positive finite number, got {scale!r}")
        d = d / scale
    return d.to(torch.float32)


def ood_score(latent, stats):
    """Out-of-distribution score: smallest Mahalanobis distance to a class centroid, per dimension.

    Parameters
    ----------
    latent : torch.Tensor
        (N, D) latent vectors.
    stats : dict
        ``model.latent_stats``: ``class_means`` (K, D) and the tied ``precision`` (D, D), fitted on
        the model's training set.

    Returns
    -------
    torch.Tensor
        (N,) float32 scores on the latent's device.

    Notes
    -----
    With class-conditional Gaussians of tied covariance S fitted on training latents,

    ``score = min_k sqrt((z - mu_k)^T S^-1 (z - mu_k) / D)``.

    Dividing the squared distance by D makes a training-like latent score about 1 whatever the
    latent dimension (for an exact Gaussian the squared distance is chi-squared with D degrees of
    freedom, mean D); the covariance is regularised, so scores on the training set are typically a
    little below 1. Latents far from every class score well above 1.
    """
    if latent.ndim != 2:
        raise GalguardValueError(f"latent must have shape (N, D), got {tuple(latent.shape)}")
    means = torch.as_tensor(stats["class_means"]).to(latent.device, torch.float64)
    prec = torch.as_tensor(stats["precision"]).to(latent.device, torch.float64)
    D = latent.shape[1]
    if means.ndim != 2 or means.shape[1] != D or prec.shape != (D, D):
        raise GalguardValueError(
            f"latent_stats must have class_means (K, {D}) and precision ({D}, {D}), got "
            f"{tuple(means.shape)} and {tuple(prec.shape)}")
    diff = latent.double()[:, None, :] - means[None]            # (N, K, D)
    m2 = torch.einsum("nkd,de,nke->nk", diff, prec, diff).clamp_min(0.0)
    return torch.sqrt(m2.min(dim=1).values / D).to(torch.float32)
