"""Domain losses: the DeepAdversaries multi-kernel MMD and SIDDA's Sinkhorn divergence.
"""

import torch

CLASSES = ("spiral", "elliptical", "merger")
BANDS = ("g", "r", "i")
DA_METHODS = ("none", "mmd", "sinkhorn")
#: Bandwidths ``s`` of the Gaussian kernels ``exp(-d^2 / (2 s))`` in the DeepAdversaries MMD.
MMD_BANDWIDTHS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0,
                  35.0, 100.0, 1e3, 1e4, 1e5, 1e6)

# ------------------------------------------------------------------------------------------------
# Domain losses
# ------------------------------------------------------------------------------------------------
def mmd2(x, y, *, bandwidths=MMD_BANDWIDTHS):
    r"""Biased multi-kernel Gaussian MMD^2 between samples ``x`` (N, D) and ``y`` (M, D).

    .. math::

        \mathrm{MMD}^2 = \overline{K(x, x')} + \overline{K(y, y')} - 2\,\overline{K(x, y)},\quad
        K(a, b) = \sum_s \exp\left(-\frac{\lVert a - b\rVert^2}{2 s}\right)
    """
    z = torch.cat([x, y], 0)
    d2 = torch.cdist(z, z).pow(2)
    k = sum(torch.exp(-d2 / (2.0 * s)) for s in bandwidths)
    n = x.shape[0]
    return k[:n, :n].mean() + k[n:, n:].mean() - 2.0 * k[:n, n:].mean()


def sinkhorn_divergence(x, y, *, scaling=0.9, blur=None):
    """SIDDA's Sinkhorn divergence between latents ``x`` and ``y`` and the blur used.

    ``blur`` defaults to ``max(0.05 * max_ij ||x_i - y_j||, 0.01)`` (computed without gradient).
    Returns ``(divergence, blur)``.
    """
    from geomloss import SamplesLoss

    with torch.no_grad():
        if blur is None:
            blur = max(0.05 * float(torch.cdist(x, y).max()), 0.01)
        # geomloss's own diameter estimate (bounding-box diagonal) is 0 for coincident points
        z = torch.cat([x, y], 0)
        diameter = max(float((z.max(0).values - z.min(0).values).norm()), blur)
    loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, diameter=diameter,
                       backend="tensorized")
    return loss(x, y), blur
