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

Sites: ``pixel`` (one pixel) and ``band_pixel`` searches can be restricted to given sites per
image (`PixelCodec.restrict`: positions, or positions and bands), e.g. those the certificate
could not settle (`galguard.robustness.certify`). A member's position (and band) genes then pick
a site: an allowed one stands for itself, any other maps to the allowed site at the same
fraction of the image's flat order, so the DE searches the allowed sites only and every decoded
candidate is an allowed one (the mapping is idempotent).
"""

import torch

from ..errors import GalguardValueError

__all__ = ["THREATS", "DEFAULT_LENGTH", "codec_for", "validate_sites"]

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


def codec_for(threat, images, lo, hi, *, pixels=1, length=DEFAULT_LENGTH, sites=None):
    """The codec of `threat` for a call on `images` (B, C, H, W) with value bounds (B, C),
    restricted to `sites` where given (`PixelCodec.restrict`)."""
    if threat not in THREATS:
        raise GalguardValueError(f"threat must be one of {tuple(THREATS)}, got {threat!r}")
    if threat == "pixel":
        codec = PixelCodec(images, lo, hi, pixels)
    else:
        codec = ArtefactCodec(threat, images, lo, hi, length)
    if sites is not None:
        codec.restrict(sites)
    return codec


def validate_sites(sites, threat, pixels, shape):
    """`sites` as a bool tensor on the images' device, checked against the threat and the
    images' `shape` (B, C, H, W)."""
    B, C, H, W = shape
    if threat not in ("pixel", "band_pixel") or pixels != 1:
        raise GalguardValueError(
            f"sites restrict one-pixel searches only (threat 'pixel' with pixels=1 or "
            f"'band_pixel'), not threat {threat!r} with {pixels} pixel(s)")
    want = (B, C, H, W) if threat == "band_pixel" else (B, H, W)
    sites = torch.as_tensor(sites)
    if sites.dtype != torch.bool or tuple(sites.shape) != want:
        raise GalguardValueError(
            f"sites must be a bool array of shape {want} for threat {threat!r}, got "
            f"{sites.dtype} of shape {tuple(sites.shape)}")
    return sites


class PixelCodec:
    """The core's layout: ``pixels`` pixels, all bands each."""

    threat = "pixel"

    def __init__(self, images, lo, hi, pixels):
        self.images, self.lo, self.hi = images, lo, hi
        self.C, self.H, self.W = images.shape[1:]
        self.pixels = pixels            # pixels written per candidate
        self.slots = pixels             # pixels in the kernel's layout
        self.genes = self.C             # value genes per slot
        self.table = None               # (B, N) site of each flat position (restrict)
        self.allowed = None             # (B, N) bool allowed sites (restrict)

    def restrict(self, sites):
        """Search only `sites`: (B, H, W) bool allowed positions (``pixel``) or (B, C, H, W)
        allowed bands of positions (``band_pixel``), at least one per image."""
        B = self.images.shape[0]
        sites = validate_sites(sites, self.threat, self.pixels, self.images.shape)
        flat = sites.to(self.images.device).reshape(B, -1)
        n = flat.sum(dim=1)
        if B and int(n.min()) == 0:
            raise GalguardValueError(
                f"sites must allow at least one site per image; image "
                f"{int(torch.nonzero(n == 0)[0])} has none")
        N = flat.shape[1]
        self.allowed = flat
        order = torch.argsort((~flat).to(torch.int8), dim=1, stable=True)    # allowed first
        q = torch.arange(N, device=flat.device)
        pick = order.gather(1, (q[None, :] * n[:, None]) // N)
        self.table = torch.where(flat, q[None, :], pick)

    def canon(self, rows, members):
        """`members` (n, G) or (R, P, G) of images `rows` (n,) or (R,) with their position (and
        band) genes moved to the sites they pick (unchanged without `restrict`)."""
        if self.table is None:
            return members
        shape = members.shape
        if members.ndim == 3:
            rows = rows.repeat_interleave(shape[1])
        m = members.reshape(-1, shape[-1]).clone()
        H, W = self.H, self.W
        q = m[:, 1].long().clamp(0, H - 1) * W + m[:, 0].long().clamp(0, W - 1)
        if self.threat == "band_pixel":
            q = q + m[:, 2].long().clamp(0, self.C - 1) * (H * W)
        s = self.table[rows, q]
        pix = s % (H * W)
        m[:, 0] = (pix % W).to(m.dtype)
        m[:, 1] = (pix // W).to(m.dtype)
        if self.threat == "band_pixel":
            m[:, 2] = (s // (H * W)).to(m.dtype)
        return m.reshape(shape)

    def write_members(self, rows, members, out=None):
        """Candidate images (R * P, C, H, W) of members (R, P, G) of images `rows` (R,)."""
        from .. import kernels

        return kernels.de_write_candidates(self.images[rows],
                                           self.canon(rows, members).contiguous(), out=out)

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

    def corners(self, grad, n):
        """Members (B, n, G) at the `n` box corners (every band at its minimum or maximum)
        whose first-order change of the fitness, ``grad . (corner - image)``, is the most
        negative; `grad` (B, C, H, W) is the gradient of the fitness score. With k pixels,
        member j takes the positions ranked j .. j + k - 1."""
        B, C, H, W = self.images.shape
        k = self.slots
        dlo = grad * (self.lo[:, :, None, None] - self.images)
        dhi = grad * (self.hi[:, :, None, None] - self.images)
        take_hi = dhi < dlo
        delta = torch.minimum(dlo, dhi).sum(dim=1).reshape(B, -1)          # (B, H * W)
        if self.allowed is not None:
            delta = delta.masked_fill(~self.allowed, float("inf"))
        n = max(1, min(n, H * W - k + 1))
        rank = torch.argsort(delta, dim=1, stable=True)[:, :n + k - 1]     # (B, n + k - 1)
        vals = torch.where(take_hi, self.hi[:, :, None, None], self.lo[:, :, None, None])
        vals = vals.reshape(B, C, -1).gather(2, rank[:, None, :].expand(B, C, -1))
        pos = torch.stack([(rank % W).to(vals.dtype) + 0.5, (rank // W).to(vals.dtype) + 0.5],
                          dim=1)                                            # (B, 2, n + k - 1)
        slot = torch.cat([pos, vals], dim=1).transpose(1, 2)                # (B, n + k - 1, 2 + C)
        j = torch.arange(n, device=rank.device)[:, None] + torch.arange(k, device=rank.device)
        return slot[:, j].reshape(B, n, k * (2 + C))

    def decode(self, rows, members):
        """Candidates of `members` (n, G) of images `rows` (n,): ys, xs (n, k), values
        (n, k, C) and the band changed (n,) (-1: all)."""
        from .. import kernels

        members = self.canon(rows, members)
        xs, ys, vals = kernels.decode_members(members.contiguous(), height=self.H,
                                              width=self.W, channels=self.C)
        return ys, xs, vals, torch.full_like(rows, -1)

    def write(self, rows, members):
        """Candidate images (n, C, H, W)."""
        return self.write_members(rows, members[:, None, :])


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

    def corners(self, grad, n):
        """As `PixelCodec.corners`: one band at its minimum or maximum (``band_pixel``), or a
        whole track or segment (each direction) at one of the two, ranked by
        ``grad . (candidate - image)`` summed over its pixels."""
        B, C, H, W = self.images.shape
        k = self.pixels
        lo, hi = self.lo[:, :, None, None], self.hi[:, :, None, None]
        dirs = [(0, 0)] if self.threat == "band_pixel" else \
            [(1, 0)] if self.threat == "bad_column" else list(_DIRECTIONS)
        span = k - 1
        gp = torch.nn.functional.pad(grad, (span, span, span, span))
        gx = torch.nn.functional.pad(grad * self.images, (span, span, span, span))
        yy = torch.arange(H, device=grad.device)[:, None]
        xx = torch.arange(W, device=grad.device)[None, :]
        scores, fracs = [], []
        for dy, dx in dirs:
            s1 = torch.zeros_like(grad)
            s2 = torch.zeros_like(grad)
            for j in range(k):
                oy, ox = span + j * dy, span + j * dx
                s1 = s1 + gp[:, :, oy:oy + H, ox:ox + W]
                s2 = s2 + gx[:, :, oy:oy + H, ox:ox + W]
            ok = (yy + span * dy <= H - 1) & (xx + span * dx <= W - 1) & (xx + span * dx >= 0)
            dlo, dhi = lo * s1 - s2, hi * s1 - s2
            d = torch.minimum(dlo, dhi).masked_fill(~ok, float("inf"))
            scores.append(d)
            fracs.append((dhi < dlo).to(grad.dtype))
        score = torch.stack(scores, dim=1).reshape(B, -1)                 # (B, D * C * H * W)
        frac = torch.stack(fracs, dim=1).reshape(B, -1)
        if self.allowed is not None:                    # band_pixel sites: (B, C * H * W)
            score = score.masked_fill(~self.allowed, float("inf"))
        n = max(1, min(n, score.shape[1]))
        rank = torch.argsort(score, dim=1, stable=True)[:, :n]
        f = frac.gather(1, rank)
        x = rank % W
        y = (rank // W) % H
        band = (rank // (H * W)) % C
        d = rank // (C * H * W)
        genes = [x.to(f.dtype) + 0.5, y.to(f.dtype) + 0.5, band.to(f.dtype) + 0.5, f]
        if self.threat == "cosmic_ray":
            genes.append(d.to(f.dtype) + 0.5)
        return torch.stack(genes, dim=2)

    def extremes(self, pop):
        pop = pop.clone()
        pop[:, 0::4, 3] = 1.0           # the band's maximum: hot
        pop[:, 1::4, 3] = 0.0           # its minimum: dead
        return pop

    def decode(self, rows, members):
        n, dev = members.shape[0], members.device
        C, H, W, k = self.C, self.H, self.W, self.pixels
        members = self.canon(rows, members)
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

    def write_members(self, rows, members, out=None):
        R, P, G = members.shape
        return self.write(rows.repeat_interleave(P), members.reshape(R * P, G))

    def write(self, rows, members):
        ys, xs, vals, _ = self.decode(rows, members)
        out = self.images[rows].clone()
        n = out.shape[0]
        idx = torch.arange(n, device=out.device)
        for j in range(self.pixels):
            out[idx, :, ys[:, j], xs[:, j]] = vals[:, j]
        return out
