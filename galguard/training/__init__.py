"""Training and evaluation of the morphology models, with optional domain adaptation.

Source data are labelled (e.g. LSST Y10 depth), target data unlabelled (e.g. Y1 depth). The
network is trained with class-weighted cross-entropy on the source, plus, for domain
adaptation, a distance between the source and target latent distributions:

``none``
    cross-entropy only.
``mmd``
    DeepAdversaries: ``CE + mmd_weight * MMD^2`` with a sum of Gaussian kernels
    ``exp(-||x - y||^2 / (2 s))`` over the paper's 19 bandwidths :data:`MMD_BANDWIDTHS`.
``sinkhorn``
    SIDDA: the Sinkhorn divergence (geomloss ``SamplesLoss("sinkhorn", p=2, scaling=0.9)``)
    with ``blur = max(0.05 * max source-target latent distance, 0.01)`` recomputed every batch,
    and learned loss weights ``L = CE / (2 e1^2) + S / (2 e2^2) + log(|e1| |e2|)`` with
    ``e1 >= 1e-3`` and ``e2 >= 0.25 e1``.

Training is deterministic for a given seed: batch order is drawn from
``numpy.random.default_rng([seed, epoch])`` and torch's generator is re-seeded every epoch, so a
run resumed from a checkpoint continues exactly as the uninterrupted run would.
"""

from .config import ARCHITECTURES, TrainConfig
from .loop import Checkpoint, train
from .losses import BANDS, CLASSES, DA_METHODS, MMD_BANDWIDTHS, mmd2, sinkhorn_divergence
from .metrics import classification_metrics, evaluate, plot_evaluation
from ..sim._cache import dim_and_observe, load_sim_split, sim_fingerprint

__all__ = ["train", "TrainConfig", "ARCHITECTURES", "evaluate", "classification_metrics", "mmd2", "sinkhorn_divergence",
           "plot_evaluation", "load_sim_split", "dim_and_observe", "sim_fingerprint",
           "Checkpoint", "DA_METHODS", "MMD_BANDWIDTHS", "CLASSES", "BANDS"]
