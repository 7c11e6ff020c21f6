"""Incremental evaluation of one-pixel candidates for plain convolutional networks.

A one-pixel change only alters the activations inside the pixel's receptive field. For a
`GalaxyClassifier` whose network is a stack of stride-1 convolutions, batch norms, ReLUs and
2x2 max pools followed by a flatten, a linear bottleneck and a linear classifier (the paper's
ConvNet), the activations of the clean image are computed once per image, and each candidate
only recomputes a small window per layer:

* a window of changed values (origin per candidate, fixed size per layer) is carried from layer
  to layer: a k x k convolution with padding p grows it by k - 1, a 2 x 2 pool shrinks it to
  ``size // 2 + 1``; windows are shifted inside the map where they would stick out (still
  covering every changed value inside it);
* each layer gathers its input window from the clean (zero-padded, as the layer pads) map,
  overwrites it with the previous layer's changed window and applies the layer to it without
  padding: the values are those the full network computes, up to floating-point summation order;
* the bottleneck adds ``W[:, window] @ (new - clean)`` to the clean latent.

For the 100 x 100 ConvNet this is about 50 times fewer multiply-adds than a full evaluation. An
evaluator is only used after it reproduces the full model's logits on probe candidates (relative
tolerance 1e-4); otherwise the attack falls back to full evaluations.
"""

import logging

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IncrementalEvaluator"]

log = logging.getLogger(__name__)

_POINTWISE = (nn.BatchNorm2d, nn.ReLU, nn.Identity, nn.Dropout, nn.LeakyReLU, nn.ReLU6)


def _supported_layers(features):
    layers = []
    for m in features:
        if isinstance(m, nn.Conv2d):
            if (m.stride != (1, 1) or m.dilation != (1, 1) or m.groups != 1
                    or m.padding_mode != "zeros" or isinstance(m.padding, str)
                    or m.padding[0] != m.padding[1] or m.kernel_size[0] != m.kernel_size[1]):
                return None
            layers.append(("conv", m))
        elif isinstance(m, nn.MaxPool2d):
            k, s = m.kernel_size, m.stride
            if (k not in (2, (2, 2)) or s not in (2, (2, 2)) or m.padding not in (0, (0, 0))
                    or m.dilation not in (1, (1, 1)) or m.ceil_mode):
                return None
            layers.append(("pool", m))
        elif isinstance(m, _POINTWISE):
            layers.append(("point", m))
        else:
            return None
    return layers


class IncrementalEvaluator:
    """Evaluates (image, pixel, values) candidates through a supported model incrementally.

    Use `IncrementalEvaluator.build(model, images)`, which returns None when the model is not
    supported or fails the probe check.
    """

    def __init__(self, model, layers, images):
        self.model = model
        self.pre = model.preprocess
        self.bottleneck = model.network.bottleneck
        self.classifier = model.network.classifier
        self.layers = layers
        B, C, H, W = images.shape
        self.shape = (C, H, W)
        # Clean activations: for each layer, its input map (padded as the layer pads) and the
        # plan of window sizes.
        # Each image's clean maps are computed on their own (batch 1), so that they, and every
        # candidate evaluated from them, do not depend on which other images share the call
        # (the convolutions take other floating-point paths for other batch shapes).
        x = self.pre(images)
        self.inputs = []      # per layer: the (padded) clean input map
        self.plan = []        # per layer: (kind, module, in_size (h, w), out_size (h, w), pad, k)
        hw = (1, 1)           # changed-window size entering the layer
        size = (H, W)
        for kind, m in layers:
            if kind == "conv":
                k = m.kernel_size[0]
                p = m.padding[0]
                out_map = (size[0] + 2 * p - k + 1, size[1] + 2 * p - k + 1)
                out_hw = (hw[0] + k - 1, hw[1] + k - 1)
                self.inputs.append(F.pad(x, (p, p, p, p)) if p else x)
            elif kind == "pool":
                k, p = 2, 0
                out_map = (size[0] // 2, size[1] // 2)
                out_hw = (hw[0] // 2 + 1, hw[1] // 2 + 1)
                self.inputs.append(x)
            else:
                k, p = 1, 0
                out_map = size
                out_hw = hw
                self.inputs.append(None)
            out_hw = (min(out_hw[0], out_map[0]), min(out_hw[1], out_map[1]))
            if min(out_map) < 1:
                raise ValueError("feature map vanishes")
            self.plan.append((kind, m, hw, out_hw, p, k, size, out_map))
            x = _per_image(m, x)
            hw, size = out_hw, out_map
        self.final = x                                   # (B, Cf, Hf, Wf)
        self.final_hw = hw
        self.flat = torch.flatten(x, 1)
        self.latent = _per_image(self.bottleneck, self.flat)
        Wb = self.bottleneck.weight                      # (D, Cf * Hf * Wf)
        Cf, Hf, Wf = x.shape[1:]
        if Wb.shape[1] != Cf * Hf * Wf:
            raise ValueError("bottleneck does not take the flattened features")
        # (Hf, Wf, Cf, D): the weights of one final-map position are contiguous.
        self.Wp = Wb.reshape(Wb.shape[0], Cf, Hf, Wf).permute(2, 3, 1, 0).contiguous()

    @classmethod
    def build(cls, model, images, *, probe=4):
        """An evaluator for `model` on `images`, or None if unsupported (logged at debug)."""
        net = getattr(model, "network", None)
        pre = getattr(model, "preprocess", None)
        feats = getattr(net, "features", None)
        if pre is None or not isinstance(feats, nn.Sequential) \
                or not isinstance(getattr(net, "bottleneck", None), nn.Linear) \
                or not isinstance(getattr(net, "classifier", None), nn.Linear):
            return None
        if type(pre).__name__ != "Preprocess":
            return None  # only the per-pixel galguard preprocessing is known to be pointwise
        layers = _supported_layers(feats)
        if layers is None:
            return None
        try:
            ev = cls(model, layers, images)
            ok = ev._probe(images, probe)
        except (ValueError, RuntimeError) as exc:
            log.debug("incremental evaluation unavailable: %s", exc)
            return None
        if not ok:
            log.debug("incremental evaluation disagrees with the full model; not used")
            return None
        return ev

    def _probe(self, images, n):
        B, (C, H, W) = images.shape[0], self.shape
        dev = images.device
        g = torch.Generator().manual_seed(1234)
        b = torch.randint(0, B, (n,), generator=g).to(dev)
        ys = torch.tensor([0, H - 1, H // 2, 1] * n)[:n].to(dev)
        xs = torch.tensor([0, W - 1, W // 3, W - 2] * n)[:n].to(dev)
        lo = images.amin(dim=(0, 2, 3))
        hi = images.amax(dim=(0, 2, 3))
        vals = (lo + (hi - lo) * torch.rand(n, C, generator=g).to(dev)).to(images.dtype)
        fast = self.logits(b, ys, xs, vals)
        full_in = images[b].clone()
        full_in[torch.arange(n, device=dev), :, ys, xs] = vals
        out = self.model(full_in)
        full = out[1] if isinstance(out, (tuple, list)) else out
        return bool(torch.allclose(fast, full, rtol=1e-4, atol=1e-4 * float(full.abs().max() + 1)))

    def logits(self, b, ys, xs, values):
        """Logits (n, K) for candidates: image index b (n,), pixel (ys, xs) (n,), values (n, C)."""
        n = b.shape[0]
        C = self.shape[0]
        # The changed window entering the first layer: the preprocessed pixel values.
        win = self.pre(values.view(n, C, 1, 1))          # (n, C, 1, 1)
        oy, ox = ys.long(), xs.long()
        for (kind, m, hw, out_hw, p, k, size, out_map), clean in zip(self.plan, self.inputs):
            if kind == "point":
                win = m(win)
                continue
            if kind == "conv":
                noy = (oy + p - (k - 1)).clamp(0, out_map[0] - out_hw[0])
                nox = (ox + p - (k - 1)).clamp(0, out_map[1] - out_hw[1])
                gy, gx = noy, nox                         # input-window origin, padded coords
                gh, gw = out_hw[0] + k - 1, out_hw[1] + k - 1
                sy, sx = oy + p, ox + p                   # previous window, padded coords
            else:
                noy = (oy // 2).clamp(0, out_map[0] - out_hw[0])
                nox = (ox // 2).clamp(0, out_map[1] - out_hw[1])
                gy, gx = 2 * noy, 2 * nox
                gh, gw = 2 * out_hw[0], 2 * out_hw[1]
                sy, sx = oy, ox
            inp = _gather(clean, b, gy, gx, gh, gw)       # (n, Cin, gh, gw)
            inp = _overwrite(inp, win, sy - gy, sx - gx)
            if kind == "conv":
                win = F.conv2d(inp, m.weight, m.bias)
            else:  # 2 x 2 max pool of an even-sized window
                nn_, cc = inp.shape[:2]
                win = inp.reshape(nn_, cc, gh // 2, 2, gw // 2, 2).amax(dim=(3, 5))
            oy, ox = noy, nox
        # Bottleneck: clean latent + W[:, window] @ (new - clean). Candidates sharing a final
        # window origin share the weight block, so they go through one matrix product.
        hf, wf = self.final_hw
        clean = _gather(self.final, b, oy, ox, hf, wf)
        delta = (win - clean).permute(0, 2, 3, 1).reshape(n, -1)   # (n, hf * wf * Cf)
        key = oy * self.final.shape[3] + ox
        order = torch.argsort(key, stable=True)
        uniq, counts = torch.unique_consecutive(key[order], return_counts=True)
        delta = delta[order]
        lat = self.latent[b[order]]
        start = 0
        for kk, cnt in zip(uniq.tolist(), counts.tolist()):
            y0, x0 = divmod(kk, self.final.shape[3])
            block = self.Wp[y0:y0 + hf, x0:x0 + wf].reshape(-1, self.Wp.shape[3])
            lat[start:start + cnt] += delta[start:start + cnt] @ block
            start += cnt
        latent = torch.empty_like(lat)
        latent[order] = lat
        return self.classifier(latent)


def _per_image(module, x):
    """``module`` applied to each row of ``x`` alone (results independent of the batch)."""
    if x.shape[0] <= 1:
        return module(x)
    return torch.cat([module(x[i:i + 1]) for i in range(x.shape[0])])


def _gather(maps, b, oy, ox, h, w):
    """Windows maps[b, :, oy:oy+h, ox:ox+w] for each candidate -> (n, C, h, w)."""
    dev = maps.device
    _, C, H, W = maps.shape
    base = (b * (C * H * W) + oy * W + ox)[:, None, None, None]
    offs = (torch.arange(C, device=dev) * (H * W))[:, None, None] \
        + (torch.arange(h, device=dev) * W)[:, None] + torch.arange(w, device=dev)
    return torch.take(maps, base + offs)


def _overwrite(inp, win, dy, dx):
    """Write `win` (n, C, h, w) into `inp` (n, C, H, W) at per-candidate offsets (dy, dx);
    entries falling outside `inp` are dropped (they cannot affect this layer's window)."""
    n, Cc, H, W = inp.shape
    h, w = win.shape[2:]
    dev = inp.device
    ty = dy[:, None] + torch.arange(h, device=dev)       # (n, h)
    tx = dx[:, None] + torch.arange(w, device=dev)
    # Out-of-range targets go to a trash row/column appended at index H / W.
    ty = torch.where((ty >= 0) & (ty < H), ty, torch.full_like(ty, H))
    tx = torch.where((tx >= 0) & (tx < W), tx, torch.full_like(tx, W))
    big = F.pad(inp, (0, 1, 0, 1))
    Hb, Wb = H + 1, W + 1
    flat = (torch.arange(n, device=dev) * (Cc * Hb * Wb))[:, None, None, None] \
        + (torch.arange(Cc, device=dev) * (Hb * Wb))[None, :, None, None] \
        + (ty * Wb)[:, None, :, None] + tx[:, None, None, :]
    big.view(-1)[flat.reshape(-1)] = win.reshape(-1)
    return big[:, :, :H, :W]
