"""Robustness checks: batched one-pixel attack, shallower-depth noise stability, latent metrics.

See `galguard.robustness.onepixel`, `galguard.robustness.noise` and
`galguard.robustness.latent`; `galguard.check` combines them into a per-galaxy table.
"""

from .latent import get_latent_stats, latent_shift, ood_score
from .noise import NoiseResult, degrade, effective_gain, noise_stability
from .onepixel import PRESETS, OnePixelAttack, OnePixelResult, paper_bounds

__all__ = ["OnePixelAttack", "OnePixelResult", "PRESETS", "paper_bounds", "degrade",
           "effective_gain", "noise_stability", "NoiseResult", "latent_shift", "ood_score", "get_latent_stats"]
