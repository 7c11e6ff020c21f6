"""The paper's morphology networks, written in plain torch.

Both networks return ``(latent, logits)``: ``latent`` is the 256-dimensional bottleneck (the
output of the first fully-connected layer), the space in which domain adaptation is applied and
latent distances are measured.
"""

import torch
from torch import nn

from ..errors import GalguardValueError

__all__ = ["ConvNet", "ResNet18", "build_network", "ARCHITECTURES"]


class ConvNet(nn.Module):
    """The DeepAdversaries ConvNet.

    Three convolution blocks (conv, batch norm, ReLU, 2x2 max pool) with 8, 16 and 32 channels
    (kernels 5, 3 and 3), a flatten, a linear "bottleneck" to ``latent_dim`` features (the latent
    space) and a linear classifier.

    Parameters
    ----------
    in_channels : int, optional
        Number of bands.
    n_classes : int, optional
        Number of classes.
    input_size : int, optional
        Height and width of the (square) input; 100 in the paper, giving a 4608-feature flatten.
    latent_dim : int, optional
        Size of the bottleneck.
    """

    def __init__(self, *, in_channels=3, n_classes=3, input_size=100, latent_dim=256):
        super().__init__()
        if input_size < 8:
            raise GalguardValueError(f"input_size must be >= 8, got {input_size!r}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, kernel_size=5, padding=2),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = input_size // 2 // 2 // 2
        self.bottleneck = nn.Linear(32 * side * side, latent_dim)
        self.classifier = nn.Linear(latent_dim, n_classes)

    def forward(self, x):
        latent = self.bottleneck(torch.flatten(self.features(x), 1))
        return latent, self.classifier(latent)


class _BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet18 (basic blocks [2, 2, 2, 2], no pretraining) as used in DeepAdversaries.

    Trunk (7x7 stem, max pool, four stages of 64-512 channels at the default width) -> dropout 0.5 -> global average
    pool -> linear 512 -> ``latent_dim`` (the latent space) -> linear classifier.

    Parameters
    ----------
    in_channels : int, optional
        Number of bands.
    n_classes : int, optional
        Number of classes.
    input_size : int, optional
        Height and width of the input (any size >= 32 works: the pool is global).
    latent_dim : int, optional
        Size of the bottleneck.
    width : int, optional
        Channels of the first stage (64 in ResNet18; the stages have ``width * (1, 2, 4, 8)``).
        A smaller width makes a cheaper network of the same depth and receptive field (the
        shipped ResNet18s, trained on a CPU, have width 16: see their cards).
    """

    def __init__(self, *, in_channels=3, n_classes=3, input_size=100, latent_dim=256, width=64):
        super().__init__()
        width = int(width)
        if width < 1:
            raise GalguardValueError(f"width must be >= 1, got {width!r}")
        self.width = width
        if input_size < 32:
            raise GalguardValueError(f"input_size must be >= 32 for ResNet18, got {input_size!r}")
        layers = [
            nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
        cin = width
        for cout, stride in ((width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)):
            layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.trunk = nn.Sequential(*layers)
        self.dropout = nn.Dropout(0.5)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bottleneck = nn.Linear(8 * width, latent_dim)
        self.classifier = nn.Linear(latent_dim, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        h = self.pool(self.dropout(self.trunk(x)))
        latent = self.bottleneck(torch.flatten(h, 1))
        return latent, self.classifier(latent)


ARCHITECTURES = {"convnet": ConvNet, "resnet18": ResNet18}


def build_network(architecture, *, in_channels=3, n_classes=3, input_size=100, latent_dim=256,
                  width=None):
    """Build an untrained network by name (``"convnet"`` or ``"resnet18"``).

    ``width`` is ResNet18's first-stage channel count (None: 64); the ConvNet has no width.

    Raises
    ------
    GalguardValueError
        If ``architecture`` is not one of :data:`ARCHITECTURES`.
    """
    try:
        cls = ARCHITECTURES[architecture]
    except (KeyError, TypeError):
        raise GalguardValueError(
            f"architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}") from None
    kwargs = {}
    if width is not None:
        if cls is not ResNet18:
            raise GalguardValueError(f"width is a ResNet18 setting; got width={width!r} for "
                                     f"{architecture!r}")
        kwargs["width"] = width
    return cls(in_channels=in_channels, n_classes=n_classes, input_size=input_size,
               latent_dim=latent_dim, **kwargs)
