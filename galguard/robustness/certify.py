"""Exact one-pixel verdicts: prove that no single pixel inside the bounds can flip a galaxy.

For each galaxy and each pixel position, the logits are bounded over the whole box of that
pixel's values (per band [lo, hi]) through the pixel's *cone*: the windows that delta inference
(`galguard.robustness._incremental`) plans for a change at that position, then the dense rest
of the network. Outside its window every activation is the clean image's, exactly, so the
bounds are only as wide as the change's own reach. The default bounds run in three stages,
each on the boxes the ones before leave open (`galguard.robustness._linear_bounds`): interval
propagation; for chain-shaped cones (the ConvNets) back-substitution of the class margins
(CROWN) through ReLU and max-pool relaxations taken from those intervals (as CROWN-IBP does,
about the cost of a second interval pass); then linear bounds in the pixel's (preprocessed)
values carried forward through the cone (CROWN's ReLU relaxation, max-pool dominance) and
back-substituted again, tighter and about twice as costly (the first pass of ``band_pixel``,
whose whole boxes it rarely settles, skips it where the second stage applies).
``bounds_method="interval"`` uses interval propagation only. A position whose bounds prove
that the predicted class stays on top (the lower bound of ``logit[pred] - logit[j]`` exceeds
a stated floating-point margin for every other class j) is *settled*.
The verdict runs in three steps: (1) the first pass bounds one box per position (per band of a
position for ``band_pixel``) and evaluates the centre and corners of each unsettled box exactly;
(2) with ``attack``, the attack searches the galaxies still undecided on their unsettled sites
only, where a flip can exist (`OnePixelAttack` ``sites=``); (3) the unsettled boxes are split
(bisection of their widest band; a three-band ``pixel`` box whose margin bound lies far below
zero is bisected two or three times at once, `DEEP_SPLIT`, since its halves would not settle),
their centres evaluated exactly (a flip there is a real flip, re-verified with the full model)
and the pieces bounded again, depth first, until every
box is settled (the galaxy is **certified**: no pixel value inside the bounds can change its
class), a flip is found (**flip**), or the galaxy's budget of box evaluations runs out
(**unknown**).

Soundness: every rule is an over-approximation in exact arithmetic (affine layers in
centre/radius form with ``|W|``, monotone activations at both ends, the activations with one
minimum (GELU, SiLU, Mish, hardswish, abs) also at their minimum, max and average pools,
residual sums, concatenations, a final linear layer bounded on the class differences
directly). Floating-point rounding is covered by a margin: a position is settled only when its
lower bound exceeds ``margin * (1 + max |clean logit|)`` (default ``margin = 1e-3``; float32
rounding in these networks is below 1e-5 of the largest logit, BENCHMARKS.md). An op without a
rule makes the galaxy "unknown" with the op named, never "certified".

Threat models: ``pixel`` (all bands of one pixel, each in its band's [lo, hi]; the
DeepAdversaries change) and ``band_pixel`` (one band of one pixel, the others unchanged). A
galaxy certified for ``pixel`` is certified for ``band_pixel`` as well (its boxes hold every
single-band change), not the other way round. The artefacts ``cosmic_ray`` (a straight track of
``length`` pixels, horizontal, vertical or diagonal) and ``bad_column`` (a vertical segment) set
their pixels in one band to one value: their box has one variable shared by the track's
pixels, bounded through the cone of the track's bounding box (a delta-inference plan per
footprint, `plan_model(footprint=)`), one search per direction, each with the whole budget
(a ``cosmic_ray`` first pass alone is four times one pixel's); their exact evaluations run the
k-pixel candidates. The attack on the open sites is for the one-pixel threats only.
"""


import dataclasses
import logging
import time

import numpy as np
import torch

from ._bounds import IntervalEvaluator, Unsupported
from ._incremental import IncrementalEvaluator
from ._crown_ibp import IntervalCrownEvaluator
from ._linear_bounds import SymbolicEvaluator
from ._plan import plan_model
from ._threats import _DIRECTIONS, DEFAULT_LENGTH

__all__ = ["certify_onepixel", "CertifyResult", "THREATS", "Unsupported", "IntervalEvaluator",
           "IntervalCrownEvaluator", "SymbolicEvaluator"]

log = logging.getLogger(__name__)

THREATS = ("pixel", "band_pixel", "cosmic_ray", "bad_column")
_TRACKS = ("cosmic_ray", "bad_column")


@dataclasses.dataclass
class CertifyResult:
    """Verdicts of `certify_onepixel` for a batch of galaxies.

    Attributes
    ----------
    status : list of str
        Per galaxy: "certified" (no pixel value inside the bounds changes its class), "flip"
        (a flip was found: `x`, `y`, `values`), or "unknown" (budget spent, or an op without a
        bound rule: `reason`).
    x, y : numpy.ndarray
        (B,) int64 column and row of the flip (-1 without one).
    values : numpy.ndarray
        (B, C) float32 values of the flip (NaN without one).
    settled : numpy.ndarray
        (B,) float64 fraction of the galaxy's first-pass boxes (whole value boxes) settled by
        the bounds without splitting, among those bounded before its verdict.
    boxes : numpy.ndarray
        (B,) int64 boxes bounded (the work spent).
    reason : list of str
        Per galaxy: why it is "unknown" ("" otherwise).
    threat : str
        The threat model.
    open_sites : numpy.ndarray
        (B,) int64 first-pass boxes (positions, or bands of positions) the bounds did not
        settle, among those bounded before the galaxy's verdict: the only sites where a flip
        can exist, which the ``attack`` searched.
    attacked : numpy.ndarray
        (B,) bool galaxies the ``attack`` ran on (undecided after the first pass).
    queries : numpy.ndarray
        (B,) int64 model evaluations the ``attack`` spent.
    found_by : list of str
        Per flip, what found it: "first pass" (a corner or the centre of a whole box),
        "attack" (the attack on the open sites) or "split" (a split box's centre); "" without
        a flip.
    """

    status: list
    x: np.ndarray
    y: np.ndarray
    values: np.ndarray
    settled: np.ndarray
    boxes: np.ndarray
    reason: list
    threat: str
    open_sites: np.ndarray = None
    attacked: np.ndarray = None
    queries: np.ndarray = None
    found_by: list = None

    @property
    def certified(self):
        """(B,) bool: galaxies proved robust."""
        return np.array([s == "certified" for s in self.status], dtype=bool)


def certify_onepixel(model, images, labels, *, bounds, threat="pixel", max_boxes=500_000,
                     give_up=2048, margin=1e-3, chunk=1024, plan=None, bounds_method="linear",
                     attack=None, ids=None, length=DEFAULT_LENGTH):
    """Exact one-pixel verdicts for a batch of galaxies.

    Parameters
    ----------
    model : torch.nn.Module
        The model (as for `OnePixelAttack`); in eval mode.
    images : torch.Tensor
        (B, C, H, W) float32 images.
    labels : torch.Tensor
        (B,) int64 classes to keep (the predicted classes).
    bounds : (lo, hi)
        (B, C) per-image, per-band value bounds of the pixel (the attack's bounds).
    threat : {"pixel", "band_pixel", "cosmic_ray", "bad_column"}
        All bands of one pixel, one band of one pixel (the others unchanged), or the attack's
        artefacts (`galguard.robustness._threats`): a straight track (four directions) or a
        vertical segment of `length` pixels in one band, all at one value.
    max_boxes : int
        Budget per galaxy (and per direction of a ``cosmic_ray`` track): most boxes bounded
        (the first pass over the positions counts; a galaxy whose first pass alone exceeds it
        is still given that pass).
    give_up : int or None
        A galaxy whose first ``give_up`` first-pass boxes are all unsettled is "unknown" at
        once (the shipped ResNet18s: their windows cover the map from the second stage on, and
        the bounds settle nothing); None: never.
    margin : float
        Floating-point margin, relative to ``1 + max |clean logit|``.
    chunk : int
        Boxes bounded per call.
    bounds_method : {"linear", "interval"}
        The three stages above (intervals, back-substitution through their relaxations, linear
        bounds carried forward; tighter) or plain interval bound propagation.
    attack : OnePixelAttack, optional
        Run after the first pass (one box per position, or per band of a position) on the
        galaxies still undecided, restricted to the sites whose boxes the bounds did not settle
        (``sites=``), with the same bounds; its flips (re-verified by the full model) are
        verdicts, and splitting goes on for the rest. Its threat must be `threat`.
    ids : array-like, optional
        (B,) global image indices for the attack's random streams (default ``arange(B)``).
    length : int
        The artefact's pixels (``cosmic_ray``, ``bad_column``).

    Returns
    -------
    CertifyResult
    """
    if threat not in THREATS:
        raise ValueError(f"threat must be one of {THREATS}, got {threat!r}")
    B, C, H, W = images.shape
    dev = images.device
    lo_b, hi_b = bounds
    orig_bounds = (lo_b, hi_b)
    if threat in _TRACKS and attack is not None:
        raise ValueError(f"attack= searches open sites of one-pixel threats only, not "
                         f"{threat!r}")
    k = int(length) if threat in _TRACKS else 1
    if k < 1 or k > min(images.shape[2:]):
        raise ValueError(f"length must be in [1, {min(images.shape[2:])}], got {length!r}")
    if attack is not None and getattr(attack, "threat", None) != threat:
        raise ValueError(f"attack must use the threat {threat!r}, got "
                         f"{getattr(attack, 'threat', None)!r}")
    warp = _Warp.of(model)
    if warp is not None:        # raw values past the clip limits act as the limits: same boxes
        lo_b, hi_b = warp.clamp(lo_b), warp.clamp(hi_b)
    pshape = (B,) if k == 1 else (B, k)
    res = CertifyResult(status=["unknown"] * B, x=np.full(pshape, -1, np.int64),
                        y=np.full(pshape, -1, np.int64),
                        values=np.full(pshape + (C,), np.nan, np.float32),
                        settled=np.zeros(B), boxes=np.zeros(B, np.int64), reason=[""] * B,
                        threat=threat, open_sites=np.zeros(B, np.int64),
                        attacked=np.zeros(B, bool), queries=np.zeros(B, np.int64),
                        found_by=[""] * B)
    if B == 0:
        return res
    with torch.inference_mode():
        # the exact evaluations of k-pixel artefacts: delta inference with the one-pixel plan
        inc = IncrementalEvaluator.build(model, images, pixels=k, plan=plan)
        if inc is None:
            res.reason = ["the model has no delta-inference plan (untraceable, or no "
                          "convolution runs on windows)"] * B
            return res
        out = model(images)
        clean = out[1] if isinstance(out, (tuple, list)) else out
        scale = (1.0 + clean.abs().amax(dim=1)).to(dev)                 # (B,)
        st = _Search(model, images, labels, res, margin, scale, chunk, give_up, warp, threat)
        if threat not in _TRACKS:
            st.run(inc, bounds_method, _pixel_boxes(images, lo_b, hi_b, threat), max_boxes,
                   None, attack, ids, orig_bounds)
        else:
            # one footprint (the track's bounding box) per direction
            dirs = [(1, 0)] if threat == "bad_column" else list(_DIRECTIONS)
            for dy, dx in dirs:
                fh, fw = (k - 1) * dy + 1, (k - 1) * abs(dx) + 1
                off = torch.tensor([(j * dy, j * dx + (k - 1 if dx < 0 else 0))
                                    for j in range(k)], device=dev)      # (k, 2) in the block
                mask = torch.zeros(fh, fw, dtype=torch.bool, device=dev)
                mask[off[:, 0], off[:, 1]] = True
                try:
                    fplan = plan_model(model, (C, H, W), device=dev, footprint=(fh, fw))
                except Exception as exc:  # noqa: BLE001 - untraceable: no verdict
                    res.reason = [f"no delta-inference plan: {exc}"] * B
                    return res
                finc = IncrementalEvaluator.build(model, images, plan=fplan)
                if finc is None:
                    res.reason = ["the model has no delta-inference plan for the artefact"] * B
                    return res
                st.run(finc, bounds_method, _track_boxes(images, lo_b, hi_b, fh, fw),
                       max_boxes, (mask, off, fh, fw, inc), None, None, None)
        res.settled = st.settled_first / np.maximum(st.bounded_first, 1)
        for i in range(B):
            if st.failed[i] is not None and res.status[i] != "flip":
                res.status[i] = "unknown"
                res.reason[i] = st.failed[i]
            elif not st.done[i]:
                res.status[i] = "certified"
    return res


def _pixel_boxes(images, lo_b, hi_b, threat):
    """First-pass boxes of the one-pixel threats: every position (and band for band_pixel)."""
    B, C, H, W = images.shape
    dev = images.device
    yy, xx = torch.meshgrid(torch.arange(H, device=dev), torch.arange(W, device=dev),
                            indexing="ij")
    yy, xx = yy.reshape(-1), xx.reshape(-1)
    P = H * W
    queue = []
    for i in range(B):
        bi = torch.full((P,), i, dtype=torch.int64, device=dev)
        if threat == "pixel":
            blo = lo_b[i].expand(P, C).clone()
            bhi = hi_b[i].expand(P, C).clone()
            queue.append((bi, yy, xx, blo, bhi, torch.full_like(bi, -1)))
        else:
            pix = images[i, :, yy, xx].T                             # (P, C)
            for band in range(C):
                blo, bhi = pix.clone(), pix.clone()
                blo[:, band] = lo_b[i, band]
                bhi[:, band] = hi_b[i, band]
                queue.append((bi, yy, xx, blo, bhi, torch.full_like(bi, band)))
    return queue


def _track_boxes(images, lo_b, hi_b, fh, fw):
    """First-pass boxes of an artefact threat: every block origin and band; the box holds
    the band's [lo, hi] and zeros elsewhere (one variable)."""
    B, C, H, W = images.shape
    dev = images.device
    yy, xx = torch.meshgrid(torch.arange(H - fh + 1, device=dev),
                            torch.arange(W - fw + 1, device=dev), indexing="ij")
    yy, xx = yy.reshape(-1), xx.reshape(-1)
    P = yy.numel()
    queue = []
    for i in range(B):
        bi = torch.full((P,), i, dtype=torch.int64, device=dev)
        for band in range(C):
            blo = torch.zeros(P, C, device=dev, dtype=images.dtype)
            bhi = torch.zeros_like(blo)
            blo[:, band] = lo_b[i, band]
            bhi[:, band] = hi_b[i, band]
            queue.append((bi, yy, xx, blo, bhi, torch.full_like(bi, band)))
    return queue


#: Margin deficits (fractions of the logit scale) beyond which an unsettled ``pixel`` box is
#: split once more before it is bounded again (`_Search.split`).
DEEP_SPLIT = (1 / 3, 2 / 3)

#: Seconds between the search's progress messages (logging INFO).
LOG_EVERY = 30.0

#: Whether the first pass of ``band_pixel`` skips the forward linear bounds where
#: back-substitution applies.
FIRST_PASS_SKIPS_FORWARD = True


class _Search:
    """The three steps of `certify_onepixel` over one set of first-pass boxes (one footprint),
    recording verdicts in the shared result. ``scale`` (B,): each galaxy's logit scale
    ``1 + max |clean logit|``; a box is settled when its margin bound exceeds ``margin`` times
    it."""

    def __init__(self, model, images, labels, res, margin, scale, chunk, give_up, warp, threat):
        B = images.shape[0]
        self.model, self.images, self.labels, self.res = model, images, labels, res
        self.tol, self.scale = margin * scale, scale
        self.chunk, self.give_up = chunk, give_up
        self.warp, self.threat = warp, threat
        self.settled_first = np.zeros(B, np.int64)
        self.bounded_first = np.zeros(B, np.int64)
        self.done = np.zeros(B, bool)
        self.failed = [None] * B
        self.logged = time.monotonic()

    def run(self, inc, bounds_method, queue, max_boxes, track, attack, ids, orig_bounds):
        B = self.images.shape[0]
        dev = self.images.device
        res, done = self.res, self.done
        # interval bounds first (a quarter of the cost), back-substituted through their
        # relaxations where they do not settle; linear ones forward where neither does
        self.ies = [IntervalCrownEvaluator(inc), SymbolicEvaluator(inc)] \
            if bounds_method == "linear" else [IntervalEvaluator(inc)]
        self.inc, self.track = inc, track
        first_q = [torch.cat(t) for t in zip(*queue)]
        first_q.append(torch.ones(first_q[0].shape[0], dtype=torch.bool, device=dev))
        # for single-band boxes, where the back-substitution applies, the first pass skips
        # the forward linear bounds: they settle few of the whole boxes it leaves open (5-12 %,
        # at more than its cost), which splitting then settles for less (for artefact tracks
        # that costs 16-25 % more boxes for the same time: they keep them)
        self.first_ies = self.ies
        if FIRST_PASS_SKIPS_FORWARD and self.threat == "band_pixel" and len(self.ies) > 1 \
                and first_q[0].numel():
            nb, ny, nx, nlo, nhi, nband = (t[:1] for t in first_q[:6])
            try:        # a probe on one box: does the back-substitution apply?
                self.ies[0].margins(nb, ny, nx, nlo, nhi, self.labels[nb],
                                    *self._box_args(nb, ny, nx, nband))
            except Unsupported:
                pass
            if getattr(self.ies[0], "backsubstituted", False):
                self.first_ies = self.ies[:1]
        first = np.bincount(first_q[0].cpu().numpy(), minlength=B)
        self.budget = res.boxes + np.maximum(first, max_boxes)
        # 1. the first pass: one box per position (and band)
        left = self.bound(first_q, first_pass=True)
        # 2. the attack, on the sites the bounds left open
        if attack is not None and left is not None and left[0].numel():
            _attack_open(attack, self.images, self.labels, ids, orig_bounds, self.threat, left,
                         done, res)
            keep = torch.as_tensor(~done, device=dev)[left[0]]
            left = [t[keep] for t in left]
        # 3. branch and bound, depth first
        chunk = self.chunk
        q = self.split(left) if left is not None and left[0].numel() else None
        while q is not None and q[0].numel():
            u = self.bound([t[:chunk] for t in q])
            q = [t[chunk:] for t in q]
            if u is not None and u[0].numel():
                q = [torch.cat([a, t]) for a, t in zip(self.split(u), q)]

    def _clean_blocks(self, b, ys, xs, fh, fw):
        dev = self.images.device
        rows = ys[:, None] + torch.arange(fh, device=dev)
        cols = xs[:, None] + torch.arange(fw, device=dev)
        blk = self.images[b[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        return blk.permute(0, 3, 1, 2).contiguous()                   # (n, C, fh, fw)

    def _box_args(self, nb, ny, nx, nband):
        """The evaluators' ``vary`` and ``track`` for boxes."""
        # a single-band box carries one variable (the same bounds, a quarter of the work)
        vary = None if self.threat == "pixel" else nband[:, None]
        track = None
        if self.track is not None:
            mask, _, fh, fw, _ = self.track
            track = (mask, self._clean_blocks(nb, ny, nx, fh, fw))
        return vary, track

    def bound(self, q, first_pass=False):
        """Bound the boxes `q` in chunks; the unsettled ones of undecided galaxies (after
        their exact corner and centre evaluations and the budget)."""
        B = self.images.shape[0]
        dev = self.images.device
        res, done, labels, tol = self.res, self.done, self.labels, self.tol
        give_up, chunk = self.give_up, self.chunk
        left = []
        while q[0].numel():
            keep = torch.as_tensor(~done, device=dev)[q[0]]
            if not bool(keep.all()):
                q = [t[keep] for t in q]
            if not q[0].numel():
                break
            nb, ny, nx, nlo, nhi, nband, ng = (t[:chunk] for t in q)
            q = [t[chunk:] for t in q]
            vary, track = self._box_args(nb, ny, nx, nband)
            try:
                m = _cascade(self.first_ies if first_pass else self.ies, nb, ny, nx, nlo, nhi,
                             labels[nb], vary, tol[nb], track)
            except Unsupported as exc:
                for i in set(nb.tolist()):
                    self.failed[i] = str(exc)
                    done[i] = True
                continue
            ok = m.amin(dim=1) > tol[nb]
            nbn = nb.cpu().numpy()
            res.boxes += np.bincount(nbn, minlength=B)
            self._log_progress()
            self.settled_first += np.bincount(nbn[(ok & ng).cpu().numpy()], minlength=B)
            self.bounded_first += np.bincount(nbn[ng.cpu().numpy()], minlength=B)
            if give_up is not None and first_pass:
                for i in np.unique(nbn):
                    if not done[i] and self.settled_first[i] == 0 and \
                            self.bounded_first[i] >= give_up:
                        res.status[i] = "unknown"
                        res.reason[i] = (f"the bounds settle none of the first "
                                         f"{int(self.bounded_first[i])} positions (the "
                                         f"change's cone covers too much of the network)")
                        done[i] = True
            bad = ~ok
            if first_pass:
                res.open_sites += np.bincount(nbn[bad.cpu().numpy()], minlength=B)
            if not bool(bad.any()):
                continue
            u = [t[bad] for t in (nb, ny, nx, nlo, nhi, nband, ng, m.amin(dim=1))]
            # exact evaluation at the centre and the corners of each unsettled box
            if self.track is None:
                flips = _exact_flips(self.inc, self.model, self.images, labels, *u[:5],
                                     corners=u[6])
            else:
                flips = _exact_track_flips(self.track, self.model, self.images, labels, *u[:7])
            for i, (y, x, v) in flips.items():
                if not done[i]:
                    res.status[i] = "flip"
                    res.found_by[i] = "first pass" if first_pass else "split"
                    res.y[i], res.x[i] = y, x
                    res.values[i] = v
                    done[i] = True
            for i in np.unique(u[0].cpu().numpy()):
                if not done[i] and res.boxes[i] >= self.budget[i]:
                    res.status[i] = "unknown"
                    res.reason[i] = f"budget of {int(self.budget[i])} boxes spent"
                    done[i] = True
            left.append(u)
        if not left:
            return None
        u = [torch.cat(t) for t in zip(*left)]
        keep = torch.as_tensor(~done, device=dev)[u[0]]
        return [t[keep] for t in u]

    def _log_progress(self):
        """Every `LOG_EVERY` seconds, how far the search is (logging INFO: ``galguard -v``)."""
        now = time.monotonic()
        if now - self.logged < LOG_EVERY:
            return
        self.logged = now
        log.info("certify (%s): %d of %d galaxies decided, %d boxes bounded", self.threat,
                 int(self.done.sum()), self.done.size, int(self.res.boxes.sum()))

    def split(self, u):
        """Each box's widest band (in the model's preprocessed values) bisected. A box of
        several variables (``pixel``) whose margin bound is below ``-DEEP_SPLIT[k]`` times
        the logit scale (``1 + max |clean logit|``) is split k + 1 more times at once, the
        widest band of each piece in turn: the pieces in between are not bounded (their
        bounds would rarely settle them; every final piece is, so soundness is unchanged)."""
        out = self._bisect(u[:7])
        if self.threat != "pixel" or not DEEP_SPLIT:
            return out
        gap = -u[7] / self.scale[u[0]]
        depth = sum((gap > t).long() for t in DEEP_SPLIT)
        depth = torch.cat([depth, depth])
        for level in range(1, len(DEEP_SPLIT) + 1):
            d = depth >= level
            if not bool(d.any()):
                break
            again = self._bisect([t[d] for t in out])
            out = [torch.cat([t[~d], a]) for t, a in zip(out, again)]
            depth = torch.cat([depth[~d], depth[d], depth[d]])
        return out

    def _bisect(self, u):
        """Each box's widest band (in the model's preprocessed values) bisected."""
        warp = self.warp
        ub, uy, ux, ulo, uhi, uband, _ = u
        if warp is None:
            band = (uhi - ulo).argmax(dim=1, keepdim=True)
            mid = (ulo.gather(1, band) + uhi.gather(1, band)) / 2
        else:
            plo, phi = warp.forward(ulo), warp.forward(uhi)
            band = (phi - plo).argmax(dim=1, keepdim=True)
            mid = warp.inverse((plo + phi) / 2).gather(1, band)
            mid = torch.minimum(torch.maximum(mid, ulo.gather(1, band)), uhi.gather(1, band))
        no = torch.zeros(2 * ub.shape[0], dtype=torch.bool, device=ub.device)
        return [torch.cat([ub, ub]), torch.cat([uy, uy]), torch.cat([ux, ux]),
                torch.cat([ulo, ulo.scatter(1, band, mid)]),
                torch.cat([uhi.scatter(1, band, mid), uhi]), torch.cat([uband, uband]), no]


def _exact_track_flips(track, model, images, labels, b, y0, x0, lo, hi, band, first):
    """Exact evaluation of artefact boxes: the value at the band's centre and, for first-pass
    boxes, at its two ends; {image: (ys (k,), xs (k,), values (k, C))} of verified flips."""
    _, off, _, _, exact = track
    ys = y0[:, None] + off[None, :, 0]                                   # (n, k)
    xs = x0[:, None] + off[None, :, 1]
    n, k = ys.shape
    base = images[b[:, None], :, ys, xs]                                 # (n, k, C)
    bl = lo.gather(1, band[:, None])[:, 0]
    bh = hi.gather(1, band[:, None])[:, 0]
    pts = [((bl + bh) / 2, slice(None))]
    sel = torch.nonzero(first).flatten()
    if sel.numel():
        pts += [(bl[sel], sel), (bh[sel], sel)]
    flips = {}
    for v, rows in pts:
        vals = base[rows].clone()
        r = torch.arange(vals.shape[0], device=vals.device)
        vals[r, :, band[rows]] = v[:, None].to(vals.dtype)
        logits = exact.logits(b[rows], ys[rows], xs[rows], vals)
        cand = torch.nonzero(logits.argmax(1) != labels[b[rows]]).flatten()
        seen = set()
        for j in cand.tolist():
            i = int(b[rows][j])
            if i in seen or i in flips:
                continue
            seen.add(i)
            adv = images[i:i + 1].clone()
            yy, xx = ys[rows][j], xs[rows][j]
            adv[0][:, yy, xx] = vals[j].T
            out = model(adv)
            lg = out[1] if isinstance(out, (tuple, list)) else out
            if int(lg.argmax(1)) != int(labels[i]):
                f = (yy.cpu().numpy(), xx.cpu().numpy(), vals[j].float().cpu().numpy())
                flips[i] = f if k > 1 else (int(f[0][0]), int(f[1][0]), f[2][0])
    return flips


class _Warp:
    """A `GalaxyClassifier`'s per-band preprocessing (clip, arcsinh): boxes are clamped to the
    clip limits and split at the midpoint of the preprocessed values."""

    def __init__(self, pre):
        self.pre = pre

    @classmethod
    def of(cls, model):
        from ..models.classifier import Preprocess

        pre = getattr(model, "preprocess", None)
        return cls(pre) if isinstance(pre, Preprocess) else None

    def clamp(self, x):
        return torch.minimum(torch.maximum(x, self.pre.lo), self.pre.hi)

    def forward(self, x):
        return torch.asinh(self.pre.scale * self.clamp(x))

    def inverse(self, y):
        return torch.sinh(y) / self.pre.scale


def _cascade(ies, b, ys, xs, lo, hi, labels, vary, tol, track=None):
    """Margin lower bounds by the evaluators `ies` in turn, each on the boxes the ones before
    did not settle (``> tol``); the largest bound of each box."""
    kw = {"tol": tol} if isinstance(ies[0], IntervalCrownEvaluator) else {}
    m = ies[0].margins(b, ys, xs, lo, hi, labels, vary=vary, track=track, **kw)
    for ie in ies[1:]:
        open_ = torch.nonzero(~(m.amin(dim=1) > tol)).flatten()
        if not open_.numel():
            break
        sub = ie.margins(b[open_], ys[open_], xs[open_], lo[open_], hi[open_], labels[open_],
                         vary=None if vary is None else vary[open_],
                         track=None if track is None else (track[0], track[1][open_]))
        m[open_] = torch.maximum(m[open_], sub)
    return m


def _attack_open(attack, images, labels, ids, bounds, threat, left, done, res):
    """Run `attack` on the undecided galaxies over the sites of their unsettled boxes `left`;
    record its flips in `res` and `done`."""
    B, C, H, W = images.shape
    dev = images.device
    rows = np.unique(left[0].cpu().numpy())
    rows = rows[~done[rows]]
    if not rows.size:
        return
    pos = {int(i): j for j, i in enumerate(rows)}
    r_of = torch.as_tensor([pos.get(int(i), -1) for i in range(B)], device=dev)[left[0]]
    shape = (rows.size, C, H, W) if threat == "band_pixel" else (rows.size, H, W)
    sites = torch.zeros(shape, dtype=torch.bool, device=dev)
    ok = r_of >= 0
    if threat == "band_pixel":
        sites[r_of[ok], left[5][ok], left[1][ok], left[2][ok]] = True
    else:
        sites[r_of[ok], left[1][ok], left[2][ok]] = True
    rt = torch.as_tensor(rows, device=dev)
    gid = rt if ids is None else torch.as_tensor(ids, device=dev)[rt]
    lo, hi = bounds
    r = attack(images[rt], labels[rt], ids=gid, bounds=(lo[rt], hi[rt]), sites=sites)
    res.attacked[rows] = True
    res.queries[rows] += r.queries.cpu().numpy()
    for j in torch.nonzero(r.success).flatten().tolist():
        i = int(rows[j])
        res.status[i] = "flip"
        res.found_by[i] = "attack"
        res.y[i], res.x[i] = int(r.y[j]), int(r.x[j])
        res.values[i] = r.values[j].float().cpu().numpy()
        done[i] = True


def _exact_flips(inc, model, images, labels, b, ys, xs, lo, hi, corners):
    """Evaluate the centre of each box and, for the first-pass boxes (``corners``, (n,) bool),
    its corners (hot and dead pixels); {image: (y, x, values)} of verified flips."""
    n, C = lo.shape
    pts = [((lo + hi) / 2, slice(None))]
    sel = torch.nonzero(corners).flatten()
    if sel.numel():
        cs = torch.tensor(list(np.ndindex(*(2,) * C)), device=lo.device, dtype=torch.bool)
        fixed = lo[sel] == hi[sel]                                       # (m, C)
        for cm in cs[:8]:
            # a corner once: at the lower end of every band that does not vary (a single-band
            # box has two corners, not 2^C)
            rows = sel[~(cm & fixed).any(dim=1)]
            if rows.numel():
                pts.append((torch.where(cm, hi[rows], lo[rows]), rows))
    flips = {}
    for v, rows in pts:
        b_, ys_, xs_ = b[rows], ys[rows], xs[rows]
        logits = inc.logits(b_, ys_, xs_, v)
        cand = torch.nonzero(logits.argmax(1) != labels[b_]).flatten()
        if not cand.numel():
            continue
        # the first candidate per image, verified with the full model
        seen = set()
        for j in cand.tolist():
            i = int(b_[j])
            if i in seen or i in flips:
                continue
            seen.add(i)
            adv = images[i:i + 1].clone()
            adv[0, :, ys_[j], xs_[j]] = v[j]
            out = model(adv)
            lg = out[1] if isinstance(out, (tuple, list)) else out
            if int(lg.argmax(1)) != int(labels[i]):
                flips[i] = (int(ys_[j]), int(xs_[j]), v[j].float().cpu().numpy())
    return flips
