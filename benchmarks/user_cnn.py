"""A survey team's own CNN that galguard has never seen, for the delta-inference benchmark.

Its own preprocessing in front (arcsinh of scaled, clamped flux), a 5x5 stem, residual blocks of
batch-normalised 3x3 convolutions with GELU, strided 3x3 convolutions between stages (channels
8-16-32 at 100, 50 and 25 pixels), an adaptive average pool and a linear head: logits only.
"""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))))


class SurveyCNN(nn.Module):
    def __init__(self, width=8, n_classes=3):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 5, padding=2), nn.BatchNorm2d(w), nn.GELU())
        self.stage1 = Block(w)
        self.down1 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
                                   nn.BatchNorm2d(2 * w), nn.GELU())
        self.stage2 = Block(2 * w)
        self.down2 = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1),
                                   nn.BatchNorm2d(4 * w), nn.GELU())
        self.stage3 = Block(4 * w)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * w, n_classes)

    def forward(self, x):
        x = torch.asinh(torch.clamp(x, -50.0, 5000.0) / 20.0)
        x = self.stage1(self.stem(x))
        x = self.stage2(self.down1(x))
        x = self.stage3(self.down2(x))
        return self.head(torch.flatten(self.pool(x), 1))


def build(width=8, seed=0):
    """An untrained SurveyCNN with non-trivial batch-norm statistics (seeded)."""
    torch.manual_seed(seed)
    net = SurveyCNN(width)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
    return net.eval()
