"""Threat models of the one-pixel attack: what a candidate changes, and how a DE member encodes it.

``pixel``
    All bands of one pixel (k pixels with ``pixels=k``), each band in its own [lo, hi]: the
    DeepAdversaries change. A member is ``[x, y, v_0 .. v_{C-1}]`` per pixel (the core's layout).
``band_pixel``
    One band of one pixel (a hot or dead pixel, a cosmic-ray hit, a saturated pixel in one
    exposure); the other bands keep their values.
``cosmic_ray``
    A straight track of ``length`` connected pixels in one band (horizontal, vertical or either
    diagonal), all set to one value in the band's [lo, hi].
``bad_column``
    A vertical segment of ``length`` pixels in one band (a bad column or a readout error), all
    set to one value.

The artefact threats are searched by the same differential evolution as ``pixel``: a member is
``[x, y, band, fraction]`` (``cosmic_ray``: ``[x, y, band, fraction, direction]``), continuous
genes the core's kernels mutate within their bounds; the band is ``min(int(band), C - 1)``, the
value ``lo[band] + fraction * (hi[band] - lo[band])``, the direction ``int(direction)`` of the
four, and a track or segment that would leave the image is moved inside it. Decoded, every
candidate is ``length`` pixels with all C values (the unchanged bands at their own values), which
is what both evaluators (full and delta inference) take.
"""

import torch

from ..errors import GalguardValueError

__all__ = ["THREATS", "DEFAULT_LENGTH", "codec_for"]

#: Threat models, with what each changes.
THREATS = {
    "pixel": "all bands of one pixel (DeepAdversaries)",
    "band_pixel": "one band of one pixel (hot, dead or saturated pixel)",
    "cosmic_ray": "a straight track of LENGTH connected pixels in one band",
    "bad_column": "a vertical segment of LENGTH pixels in one band",
}

#: Default track or segment length of `cosmic_ray` and `bad_column`.
DEFAULT_LENGTH = 4

# track directions (dy, dx): horizontal, vertical, and the two diagonals
_DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))


def codec_for(threat, images, lo, hi, *, pixels=1, length=DEFAULT_LENGTH):
    """The codec of `threat` for a call on `images` (B, C, H, W) with value bounds (B, C)."""
    if threat not in THREATS:
        raise GalguardValueError(f"threat must be one of {tuple(THREATS)}, got {threat!r}")
    if threat == "pixel":
        return PixelCodec(images, lo, hi, pixels)
    return ArtefactCodec(threat, images, lo, hi, length)


class PixelCodec:
    """The core's layout: ``pixels`` pixels, all bands each."""

    threat = "pixel"

    def __init__(self, images, lo, hi, pixels):
        self.images, self.lo, self.hi = images, lo, hi
        self.C, self.H, self.W = images.shape[1:]
        self.pixels = pixels            # pixels written per candidate
        self.slots = pixels             # pixels in the kernel's layout
        self.genes = self.C             # value genes per slot

    def gene_bounds(self):
        return self.lo, self.hi

    def extremes(self, pop):
        """Members p % 4 == 0 at the bounds' maxima, p % 4 == 1 at the minima."""
        pop = pop.clone()
        B, P, G = pop.shape
        v = pop.view(B, P, self.slots, 2 + self.genes)
        v[:, 0::4, :, 2:] = self.hi[:, None, None, :]
        v[:, 1::4, :, 2:] = self.lo[:, None, None, :]
        return pop

    def decode(self, rows, members):
        """Candidates of `members` (n, G) of images `rows` (n,): ys, xs (n, k), values
        (n, k, C) and the band changed (n,) (-1: all)."""
        from .. import kernels

        xs, ys, vals = kernels.decode_members(members.contiguous(), height=self.H,
                                              width=self.W, channels=self.C)
        return ys, xs, vals, torch.full_like(rows, -1)

    def write(self, rows, members):
        """Candidate images (n, C, H, W)."""
        from .. import kernels

        return kernels.de_write_candidates(self.images[rows], members[:, None, :].contiguous())


class ArtefactCodec(PixelCodec):
    """``band_pixel``, ``cosmic_ray`` and ``bad_column`` (module docstring)."""

    def __init__(self, threat, images, lo, hi, length):
        super().__init__(images, lo, hi, 1)
        self.threat = threat
        k = 1 if threat == "band_pixel" else int(length)
        if k < 1:
            raise GalguardValueError(f"length must be >= 1, got {length!r}")
        if threat != "band_pixel" and k > min(self.H, self.W):
            raise GalguardValueError(
                f"length {k} of the {threat} threat exceeds the image size "
                f"{self.H} x {self.W}")
        self.pixels = k
        self.slots = 1
        self.genes = 3 if threat == "cosmic_ray" else 2

    def gene_bounds(self):
        B = self.lo.shape[0]
        glo = torch.zeros(B, self.genes, dtype=self.lo.dtype, device=self.lo.device)
        ghi = torch.ones_like(glo)
        ghi[:, 0] = self.C
        if self.threat == "cosmic_ray":
            ghi[:, 2] = len(_DIRECTIONS)
        return glo, ghi

    def extremes(self, pop):
        pop = pop.clone()
        pop[:, 0::4, 3] = 1.0           # the band's maximum: hot
        pop[:, 1::4, 3] = 0.0           # its minimum: dead
        return pop

    def decode(self, rows, members):
        n, dev = members.shape[0], members.device
        C, H, W, k = self.C, self.H, self.W, self.pixels
        x = members[:, 0].long().clamp(0, W - 1)
        y = members[:, 1].long().clamp(0, H - 1)
        band = members[:, 2].long().clamp(0, C - 1)
        frac = members[:, 3].clamp(0.0, 1.0)
        lo = self.lo[rows].gather(1, band[:, None])[:, 0]
        hi = self.hi[rows].gather(1, band[:, None])[:, 0]
        value = lo + frac * (hi - lo)
        if self.threat == "cosmic_ray":
            d = members[:, 4].long().clamp(0, len(_DIRECTIONS) - 1)
            dirs = torch.tensor(_DIRECTIONS, device=dev)[d]                    # (n, 2)
        elif self.threat == "bad_column":
            dirs = torch.tensor([[1, 0]], device=dev).expand(n, 2)
        else:
            dirs = torch.zeros(n, 2, dtype=torch.int64, device=dev)
        dy, dx = dirs[:, 0], dirs[:, 1]
        # move the track inside the image
        span = k - 1
        y = torch.minimum(y, H - 1 - span * dy)
        x = torch.where(dx >= 0, torch.minimum(x, W - 1 - span * dx),
                        torch.maximum(x, torch.full_like(x, span)))
        step = torch.arange(k, device=dev)
        ys = y[:, None] + step[None, :] * dy[:, None]                           # (n, k)
        xs = x[:, None] + step[None, :] * dx[:, None]
        vals = self.images[rows[:, None], :, ys, xs]                            # (n, k, C)
        vals = vals.scatter(2, band[:, None, None].expand(n, k, 1),
                            value[:, None, None].expand(n, k, 1).to(vals.dtype))
        return ys, xs, vals, band

    def write(self, rows, members):
        ys, xs, vals, _ = self.decode(rows, members)
        out = self.images[rows].clone()
        n = out.shape[0]
        idx = torch.arange(n, device=out.device)
        for j in range(self.pixels):
            out[idx, :, ys[:, j], xs[:, j]] = vals[:, j]
        return out
