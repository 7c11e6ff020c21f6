"""`TrainConfig`: the settings of one training run, validated before any data is made."""

import dataclasses
import math

from .._validate import validate_choice, validate_int, validate_real
from ..errors import GalguardValueError
from .losses import BANDS, CLASSES, DA_METHODS

__all__ = ["TrainConfig", "ARCHITECTURES"]

ARCHITECTURES = ("convnet", "resnet18")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (its card records it; a resumed run must match).

    Attributes
    ----------
    architecture : {"convnet", "resnet18"}
    width : int or None
        ResNet18's first-stage channels (None: 64, the paper's); not for the ConvNet.
    da : {"none", "mmd", "sinkhorn"}
        Domain adaptation (see `galguard.training`).
    classes, bands : tuple of str
    epochs : int
        Maximum number of epochs (one epoch = one pass over the source training set).
    batch_size : int
        Source batch size; with domain adaptation a target batch of the same size is drawn
        alongside, and both pass through the network together.
    lr, weight_decay, betas
        AdamW settings (the paper used Adam lr 1e-5, far too slow for a CPU budget).
    patience : int
        Stop after this many epochs without a validation loss lower than the best by more than
        ``min_delta``. Epochs during the warm-up do not count and cannot be selected as best.
    min_delta : float
        Smallest decrease of the validation loss that counts as an improvement.
    warmup_epochs : int or None
        Epochs of cross-entropy only before the domain loss is switched on; None: 0 for ``none``
        and ``mmd``, 3 for ``sinkhorn``.
    mmd_weight : float
        Weight of MMD^2 (the paper's 0.01).
    grad_clip : float or None
        Gradient-norm clip (SIDDA: 10).
    seed : int
        Seeds weights, splits, batch order and dropout.
    val_fraction : float
        Share of the source held out for validation when no validation set is given.
    bn_samples : int
        Training galaxies (per domain) used to recompute the batch-norm statistics after every
        epoch, before validation.
    loss_weight_lr : float or None
        Learning rate of SIDDA's loss weights ``e1, e2`` (None: ``10 * lr``).
    init_loss_weights : {"data", "ones"}
        Start of SIDDA's ``e1, e2``: "ones" as in SIDDA, or "data": the square roots of the
        first adapted batch's losses.
    """

    architecture: str = "convnet"
    width: object = None
    da: str = "none"
    classes: tuple = CLASSES
    bands: tuple = BANDS
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: tuple = (0.9, 0.999)
    patience: int = 6
    min_delta: float = 1e-4
    warmup_epochs: object = None
    mmd_weight: float = 0.01
    grad_clip: object = 10.0
    seed: int = 0
    val_fraction: float = 0.1
    bn_samples: int = 1024
    loss_weight_lr: object = None
    init_loss_weights: str = "data"

    def __post_init__(self):
        put = object.__setattr__
        validate_choice("architecture", self.architecture, ARCHITECTURES)
        validate_choice("da", self.da, DA_METHODS)
        if self.width is not None:
            if self.architecture != "resnet18":
                raise GalguardValueError(f"width is a ResNet18 setting, got width={self.width!r} "
                                         f"for architecture {self.architecture!r}")
            put(self, "width", validate_int("width", self.width, minimum=1, maximum=4096))
        for name in ("classes", "bands"):
            value = tuple(getattr(self, name))
            if not value or not all(isinstance(v, str) and v for v in value):
                raise GalguardValueError(f"{name} must be non-empty names, got {value!r}")
            put(self, name, value)
        for name in ("epochs", "batch_size", "patience", "bn_samples"):
            put(self, name, validate_int(name, getattr(self, name), minimum=1))
        put(self, "seed", validate_int("seed", self.seed, minimum=0, maximum=2**63 - 1))
        put(self, "lr", validate_real("lr", self.lr, lo=0.0, lo_open=True))
        put(self, "weight_decay", validate_real("weight_decay", self.weight_decay, lo=0.0))
        put(self, "min_delta", validate_real("min_delta", self.min_delta, lo=0.0))
        put(self, "mmd_weight", validate_real("mmd_weight", self.mmd_weight, lo=0.0))
        put(self, "val_fraction", validate_real("val_fraction", self.val_fraction, lo=0.0,
                                                hi=1.0, lo_open=True, hi_open=True))
        try:
            betas = tuple(float(b) for b in self.betas)
        except (TypeError, ValueError):
            betas = ()
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise GalguardValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        put(self, "betas", betas)
        if self.grad_clip is not None:
            put(self, "grad_clip", validate_real("grad_clip", self.grad_clip, lo=0.0,
                                                 lo_open=True))
        if self.loss_weight_lr is not None:
            put(self, "loss_weight_lr", validate_real("loss_weight_lr", self.loss_weight_lr,
                                                      lo=0.0, lo_open=True))
        warmup = self.warmup_epochs
        if warmup is None:
            warmup = 3 if self.da == "sinkhorn" else 0
        warmup = validate_int("warmup_epochs", warmup, minimum=0)
        if warmup >= self.epochs and self.da != "none":
            raise GalguardValueError(f"warmup_epochs ({warmup}) must be < epochs "
                                     f"({self.epochs})")
        put(self, "warmup_epochs", warmup)
        validate_choice("init_loss_weights", self.init_loss_weights, ("data", "ones"))
        if not math.isfinite(self.lr):
            raise GalguardValueError(f"lr must be finite, got {self.lr!r}")

    @property
    def weights_lr(self):
        """The learning rate of SIDDA's loss weights (None without Sinkhorn)."""
        if self.da != "sinkhorn":
            return None
        return 10.0 * self.lr if self.loss_weight_lr is None else float(self.loss_weight_lr)
