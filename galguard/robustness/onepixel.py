"""Batched one-pixel (and k-pixel) attack by differential evolution.

The attack changes ``pixels`` pixels of a cutout, all bands of each, and searches positions and
values with differential evolution (Storn & Price 1997; Su et al. 2019), as in the DeepAdversaries
study. Every image of a call and its whole population go through the model in large batches; the
differential-evolution steps (initialisation, mutation/crossover, writing candidate pixels into
images, greedy selection) are the compiled core's kernels (`galguard.kernels`).
"""

import dataclasses
import logging
import math

import numpy as np
import torch

from .._model_io import evaluating, model_logits
from .._validate import validate_int
from ..errors import GalguardValueError
from ._inputs import (BOUND_SPECS, _per_image_bounds, _resolve_bounds, _validate_ids,
                      _validate_images, _validate_labels, paper_bounds, validate_bounds)
from ._threats import DEFAULT_LENGTH, THREATS, codec_for, validate_sites

__all__ = ["BOUND_SPECS", "OnePixelAttack", "OnePixelResult", "PRESETS", "model_logits",
           "paper_bounds", "validate_bounds"]

log = logging.getLogger(__name__)

#: Budget presets. ``paper`` is the DeepAdversaries setting (population 400, 100 generations,
#: DE rand/1 with F = 0.5, no crossover, a random initial population). ``fast`` and ``default``
#: are screening presets: DE best/1 with binomial crossover CR = 0.9 (which converges much
#: faster on one-pixel problems) from a population whose first half are the box corners a
#: first-order expansion ranks best (``init="gradient"``). Their recall is measured in
#: BENCHMARKS.md against the paper budget and against exact verdicts
#: (`galguard.robustness.certify`): with a random population the ``default`` preset found 8 of
#: the 13 proven single-band flips of 48 fresh galaxies (and all the paper budget found), with
#: the gradient-ranked corners all 13, and ``fast`` too. ``default`` is what `galguard.check`
#: uses; with the ConvNet it costs at most 3661 evaluations (under a second on one core) and
#: one gradient per galaxy that does not flip. Prefer ``fast`` on a CPU for models that delta
#: inference speeds up little (a ResNet18 on 100 x 100 cutouts: its receptive field covers the
#: map from the second stage on).
PRESETS = {
    "paper": dict(popsize=400, max_iter=100, F=0.5, crossover=None, strategy="rand1",
                  init="random"),
    "fast": dict(popsize=30, max_iter=20, F=0.5, crossover=0.9, strategy="best1",
                 init="gradient"),
    "default": dict(popsize=60, max_iter=60, F=0.5, crossover=0.9, strategy="best1",
                    init="gradient"),
}

_STRATEGIES = ("rand1", "best1")
_INITS = ("random", "extremes", "gradient")


@dataclasses.dataclass
class OnePixelResult:
    """Outcome of a `OnePixelAttack` call; every tensor is on the input images' device.

    Attributes
    ----------
    success : torch.Tensor
        (B,) bool. True when the returned pixel(s), applied to the image and run through the model
        once more (re-verification), give the wanted prediction: any class other than the given
        label (untargeted) or the target label (targeted), and pass ``threshold`` when one is set.
    x, y : torch.Tensor
        (B,) int64 column and row of the changed pixel (so it is ``image[..., y, x]``), or
        (B, k) when a candidate changes k > 1 pixels (``pixels > 1``; the track or segment of
        the ``cosmic_ray`` and ``bad_column`` threats). For a failed attack: the best candidate
        found.
    values : torch.Tensor
        (B, C) values of the changed pixel's bands (all of them; with a single-band threat the
        others keep the image's values), or (B, k, C).
    label : torch.Tensor
        (B,) int64 class predicted for the adversarial image.
    prob : torch.Tensor
        (B,) probability of ``label`` for the adversarial image.
    probs : torch.Tensor
        (B, K) class probabilities of the adversarial image.
    queries : torch.Tensor
        (B,) int64 model evaluations spent on each image, including the one re-verification
        evaluation of each success.
    generations : torch.Tensor
        (B,) int64 DE generations run for each image (0 when a member of the initial population
        already succeeded).
    attacked_label : torch.Tensor
        (B,) int64 the labels the attack was given (true/predicted labels, or targets).
    targeted : bool
        Whether the attack was targeted.
    images : torch.Tensor or None
        (B, C, H, W) adversarial images when requested with ``return_images=True``.
    band : torch.Tensor or None
        (B,) int64 the band changed by a single-band threat (-1: all bands, ``pixel``).
    """

    success: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    values: torch.Tensor
    label: torch.Tensor
    prob: torch.Tensor
    probs: torch.Tensor
    queries: torch.Tensor
    generations: torch.Tensor
    attacked_label: torch.Tensor
    targeted: bool
    images: torch.Tensor = None
    band: torch.Tensor = None

    @property
    def success_rate(self):
        """Fraction of images attacked successfully (NaN for an empty result)."""
        n = self.success.numel()
        return float(self.success.sum()) / n if n else float("nan")


def _kernels():
    from .. import kernels  # imported lazily: the core is loaded on first use
    return kernels


class OnePixelAttack:
    """Untargeted or targeted k-pixel attack by batched differential evolution.

    Parameters
    ----------
    model : torch.nn.Module
        Maps (N, C, H, W) float images to logits (N, K) or to ``(latent, logits)``; a
        `galguard.models.GalaxyClassifier` takes raw flux, so the attack works in physical units.
    pixels : int, optional
        Number of pixels changed (all bands of each).
    popsize : int, optional
        DE population per image (the paper: 400).
    max_iter : int, optional
        DE generations after the initial population (the paper: 100).
    F : float, optional
        Mutation scale factor in (0, 2].
    crossover : float or None, optional
        Binomial crossover rate CR in (0, 1]; None means no crossover (CR = 1, the trial vector is
        the mutant, as in the paper).
    strategy : {"rand1", "best1"}, optional
        DE mutation strategy.
    init : {"random", "extremes"}, optional
        Initial population. "random": uniform positions and values. "extremes": as "random", but
        the values of every fourth member (p % 4 == 0) are set to the bounds' maxima and those of
        members p % 4 == 1 to the minima (hot and dead pixels, the likeliest one-pixel flips).
        "gradient": first a scan of the ``popsize`` box corners (each changed band at its
        minimum or maximum) that a first-order expansion of the fitness ranks best, then, for
        the images without a flip among them, the "random" search unchanged (so it finds
        every flip "random" finds, for ``popsize`` more evaluations). The ranking takes one
        gradient of the label's logit margin over the runner-up class per image (batch 1),
        then
        ``grad . (corner - image)`` for every site (and track direction), the most negative
        first. Flips sit at such corners far more often than a random population finds them
        (BENCHMARKS.md: the `default` preset's recall against exact verdicts). A model that
        autograd cannot differentiate keeps the random population.
    bounds : {"cutout", "paper"} or (lo, hi), optional
        Value bounds. "cutout": each band's own minimum and maximum in the cutout (a plausible bad
        pixel). "paper": the [0, 1] normalised space of DeepAdversaries; for a model with a frozen
        preprocessing that can be inverted (``model.preprocess.inverse``, as
        `galguard.models.GalaxyClassifier` has) the bounds are the raw-flux values that map to 0
        and 1, per band; for a plain module the raw values [0, 1]. (lo, hi): scalars or per-band
        sequences of length C.
    targeted : bool, optional
        If True, the labels passed to the call are targets: fitness is -p(target), success is
        argmax == target. Otherwise fitness is p(label), success is argmax != label.
    threshold : float or None, optional
        Stricter success: untargeted p(label) < threshold (the paper's untargeted variant used
        0.05), targeted p(target) > threshold (the paper: 0.5). None: argmax decides.
    early_stop : bool, optional
        Stop each image's search at the first generation in which a candidate succeeds.
    seed : int, optional
        Seed of the counter-based random streams; with the image index it fixes every draw.
    batch_size : int or None, optional
        Most candidate images run through the model at once; None picks a size that keeps the
        candidate batch near 4 MiB (34 candidates of 3 x 100 x 100), at least 16.
    oob : {"redraw", "clip"}, optional
        What the mutation kernel does with genes outside the bounds.
    incremental : bool, optional
        Evaluate candidates by delta inference (`galguard.robustness._incremental`): the model is
        traced with `torch.fx`, each image's clean activations are computed once, and each
        candidate recomputes only the windows its changed pixels reach, up to the first
        non-spatial op (flatten, global pooling, an unknown op), from which the rest of the
        network runs on the candidates' rows. It works for any traceable CNN (a
        `galguard.models.GalaxyClassifier`, a wrapped user module, a plain module) and for k
        pixels, and is used only after it reproduces the full model's logits on probe
        candidates; otherwise, and for untraceable models, every candidate image is written
        with the core's kernel and run through the whole model. Successes are always
        re-verified with the whole model.
    cache_mb : float, optional
        Most memory (MiB) of cached clean activations; a call with more images than fit is
        attacked in groups of images (the results do not depend on the grouping, as for any
        batch size).
    threat : {"pixel", "band_pixel", "cosmic_ray", "bad_column"}, optional
        What a candidate changes (`galguard.robustness._threats`): all bands of ``pixels``
        pixels (DeepAdversaries), one band of one pixel, a straight track of ``length``
        connected pixels in one band, or a vertical segment of ``length`` pixels in one band
        (each single value in the band's bounds).
    length : int, optional
        Pixels of a ``cosmic_ray`` track or ``bad_column`` segment.

    Notes
    -----
    A member is ``[x_0, y_0, v_0[0..C-1], x_1, ...]``: continuous positions in [0, W) and [0, H)
    (the pixel is ``(int(y), int(x))``) and one value per band. Generation g builds trial vectors
    ``a + F (b - c)`` (rand/1) or ``best + F (b - c)`` (best/1), optional binomial crossover with
    rate CR, and keeps each trial that is at least as fit as its parent (greedy one-to-one
    selection). The fitness is minimised: p(label) untargeted, -p(target) targeted.

    Random draws are keyed on (seed, image index, generation, member), so the outcome for an image
    does not depend on the batch size, on the other images of the call, or on which of them have
    already stopped. Pass ``ids`` (global indices) to the call when attacking a large set in
    pieces.

    The attack puts the model in eval mode and restores its previous mode afterwards, runs under
    `torch.inference_mode`, keeps every tensor on the images' device and stores no per-call state
    on the attack object.

    Examples
    --------
    >>> import torch
    >>> from galguard.robustness import OnePixelAttack
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    >>> attack = OnePixelAttack.from_preset("fast", model, seed=1)
    >>> result = attack(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))
    >>> result.success.shape
    torch.Size([2])
    """

    def __init__(self, model, *, pixels=1, popsize=400, max_iter=100, F=0.5, crossover=None,
                 strategy="rand1", init="random", bounds="cutout", targeted=False,
                 threshold=None, early_stop=True, seed=0, batch_size=None, oob="redraw",
                 incremental=True, cache_mb=1024, threat="pixel", length=DEFAULT_LENGTH):
        if not isinstance(model, torch.nn.Module):
            raise GalguardValueError(
                f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.pixels = validate_int("pixels", pixels, minimum=1)
        self.popsize = validate_int("popsize", popsize, minimum=4)
        self.max_iter = validate_int("max_iter", max_iter, minimum=0)
        F = float(F)
        if not (0.0 < F <= 2.0):
            raise GalguardValueError(f"F must be in (0, 2], got {F!r}")
        self.F = F
        if crossover is not None:
            crossover = float(crossover)
            if not (0.0 < crossover <= 1.0):
                raise GalguardValueError(f"crossover must be None or in (0, 1], got {crossover!r}")
        self.crossover = crossover
        if strategy not in _STRATEGIES:
            raise GalguardValueError(f"strategy must be one of {_STRATEGIES}, got {strategy!r}")
        self.strategy = strategy
        if init not in _INITS:
            raise GalguardValueError(f"init must be one of {_INITS}, got {init!r}")
        self.init = init
        self.bounds = validate_bounds(bounds)
        self.targeted = bool(targeted)
        if threshold is not None:
            threshold = float(threshold)
            if not (0.0 < threshold < 1.0):
                raise GalguardValueError(f"threshold must be None or in (0, 1), got {threshold!r}")
        self.threshold = threshold
        self.early_stop = bool(early_stop)
        self.seed = validate_int("seed", seed, minimum=0)
        self.batch_size = (None if batch_size is None
                           else validate_int("batch_size", batch_size, minimum=1))
        if oob not in ("redraw", "clip"):
            raise GalguardValueError(f"oob must be 'redraw' or 'clip', got {oob!r}")
        self.oob = oob
        self.incremental = bool(incremental)
        cache_mb = float(cache_mb)
        if not (cache_mb > 0 and math.isfinite(cache_mb)):
            raise GalguardValueError(f"cache_mb must be a finite number > 0, got {cache_mb!r}")
        self.cache_mb = cache_mb
        if threat not in THREATS:
            raise GalguardValueError(f"threat must be one of {tuple(THREATS)}, got {threat!r}")
        if threat != "pixel" and self.pixels != 1:
            raise GalguardValueError(
                f"pixels must be 1 with the {threat!r} threat (its length sets the pixels "
                f"changed), got {self.pixels}")
        self.threat = threat
        self.length = validate_int("length", length, minimum=1)

    @classmethod
    def from_preset(cls, name, model, **overrides):
        """Build an attack from a budget preset of `PRESETS`, overriding any argument.

        Parameters
        ----------
        name : {"paper", "fast", "default"}
            Preset name.
        model : torch.nn.Module
            The model to attack.
        **overrides
            Any keyword argument of `OnePixelAttack`.
        """
        if name not in PRESETS:
            raise GalguardValueError(f"preset must be one of {tuple(PRESETS)}, got {name!r}")
        kwargs = dict(PRESETS[name])
        kwargs.update(overrides)
        return cls(model, **kwargs)

    def config(self):
        """Return the attack's settings as a JSON-serialisable dict."""
        bounds = self.bounds
        if not isinstance(bounds, str):
            bounds = [np.asarray(b).tolist() for b in bounds]
        return dict(pixels=self.pixels, popsize=self.popsize, max_iter=self.max_iter, F=self.F,
                    crossover=self.crossover, strategy=self.strategy, init=self.init,
                    bounds=bounds, targeted=self.targeted, threshold=self.threshold,
                    early_stop=self.early_stop, seed=self.seed, batch_size=self.batch_size,
                    oob=self.oob, incremental=self.incremental, cache_mb=self.cache_mb,
                    threat=self.threat, length=self.length)

    def max_queries(self):
        """Most model evaluations one image can cost: ``popsize * (1 + max_iter) + 1``."""
        return self.popsize * (1 + self.max_iter) + 1

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"OnePixelAttack({type(self.model).__name__}, {args})"

    # ------------------------------------------------------------------------------------------
    def __call__(self, images, labels, *, ids=None, return_images=False, bounds=None,
                 sites=None):
        """Attack a batch of images.

        Parameters
        ----------
        images : torch.Tensor or numpy.ndarray
            (B, C, H, W) finite float images, in the units the model takes. Not modified.
        labels : torch.Tensor or array-like
            (B,) int labels: the class to move away from (untargeted) or the target class.
        ids : torch.Tensor or array-like, optional
            (B,) int64 global image indices keying the random streams (default ``arange(B)``).
        return_images : bool, optional
            Also return the adversarial images (the best candidate for failed attacks).
        bounds : (lo, hi) of (B, C) arrays, optional
            Per-image value bounds for this call (e.g. up to each cutout's saturation level),
            instead of the attack's ``bounds``.
        sites : array-like of bool, optional
            Search only these sites: (B, H, W) positions (threat ``pixel``, one pixel) or
            (B, C, H, W) bands of positions (``band_pixel``), at least one per image; e.g. the
            positions a certificate could not settle (`galguard.robustness.certify`). The
            budget is the same, spent on fewer sites.

        Returns
        -------
        OnePixelResult

        Raises
        ------
        GalguardValueError
            For images, labels or ids of the wrong shape, type or value.
        """
        images = _validate_images(images)
        device = images.device
        B, C, H, W = images.shape
        labels = _validate_labels(labels, B, device)
        ids = _validate_ids(ids, B, device)
        if B == 0:
            lo = hi = torch.zeros(0, C, device=device)
        elif bounds is None:
            lo, hi = _resolve_bounds(self.bounds, self.model, images)
        else:
            lo, hi = _per_image_bounds(bounds, B, C, device)
        if sites is not None:
            sites = validate_sites(sites, self.threat, self.pixels, images.shape).to(device)
        with evaluating(self.model):
            plan, group = self._plan(images)
            if group >= B:
                return self._run(images, labels, ids, return_images, plan, lo, hi, sites)
            parts = [self._run(images[i:i + group], labels[i:i + group], ids[i:i + group],
                               return_images, plan, lo[i:i + group], hi[i:i + group],
                               None if sites is None else sites[i:i + group])
                     for i in range(0, B, group)]
            return _concat_results(parts)

    def _plan(self, images):
        """The delta-inference plan (or None) and the most images per group."""
        B, C, H, W = images.shape
        if not self.incremental or B == 0:
            return None, B
        from ._incremental import plan_model
        try:
            plan = plan_model(self.model, (C, H, W), device=images.device)
        except Exception as exc:  # noqa: BLE001 - untraceable: the full path
            log.debug("delta inference unavailable for %s: %s: %s", type(self.model).__name__,
                      type(exc).__name__, exc)
            return None, B
        per = sum(p.cache_bytes() for p in plan[1].values())
        group = max(1, int(self.cache_mb * 2**20 // max(per, 1)))
        return plan, group

    # ------------------------------------------------------------------------------------------
    def _chunk(self, C, H, W):
        if self.batch_size is not None:
            return self.batch_size
        # Small batches: on CPUs, convolutions of a few dozen 100 x 100 images run faster per
        # image than batches of hundreds (cache reuse); see BENCHMARKS.md.
        return max(16, (4 << 20) // (4 * C * H * W))

    def _run(self, images, labels, ids, return_images, plan, lo, hi, sites=None):
        k = _kernels()
        device = images.device
        B, C, H, W = images.shape
        images = images.contiguous()
        if B == 0:
            return self._empty_result(images, labels, return_images)
        codec = codec_for(self.threat, images, lo, hi, pixels=self.pixels, length=self.length,
                          sites=sites)
        P, npx = self.popsize, codec.slots
        glo, ghi = codec.gene_bounds()
        G = npx * (2 + codec.genes)
        chunk = self._chunk(C, H, W)
        full = _Evaluator(self.model, chunk, images, codec)
        evaluator = full
        if plan is not None:
            from ._incremental import IncrementalEvaluator
            inc = IncrementalEvaluator.build(self.model, images, pixels=codec.pixels, plan=plan)
            if inc is not None:
                evaluator = _IncrementalRunner(inc, inc.chunk, codec)

        # Original predictions give the number of classes and validate the labels.
        K = full.num_classes()
        if int(labels.min()) < 0 or int(labels.max()) >= K:
            raise GalguardValueError(
                f"labels must be in [0, {K - 1}] for a model with {K} classes, got values in "
                f"[{int(labels.min())}, {int(labels.max())}]")

        # Per-image outputs, filled as images finish.
        out_member = torch.zeros(B, G, dtype=torch.float32, device=device)
        out_probs = torch.zeros(B, K, dtype=torch.float32, device=device)
        out_success = torch.zeros(B, dtype=torch.bool, device=device)
        out_gen = torch.zeros(B, dtype=torch.int64, device=device)
        out_queries = torch.zeros(B, dtype=torch.int64, device=device)

        active = torch.arange(B, device=device)
        if self.init == "gradient":
            active = self._corner_scan(images, labels, codec, evaluator, active, out_member,
                                       out_probs, out_success, out_gen, out_queries)
        cr = 1.0 if self.crossover is None else self.crossover
        if active.numel():
            lab_a = labels[active]
            pop = k.de_init(ids[active], P, pixels=npx, channels=codec.genes, height=H, width=W,
                            lo=glo[active], hi=ghi[active], seed=self.seed)
            if self.init == "extremes":
                pop = codec.extremes(pop)
            probs = evaluator(active, pop)                     # (A, P, K)
            fit = self._fitness(probs, lab_a)
            out_queries[active] += P
            # Early stop on the initial population.
            done = self._finish(probs, fit, pop, lab_a, active, out_member, out_probs,
                                out_success, out_gen, 0, final=self.max_iter == 0)
            keep = ~done
            if not bool(keep.all()):
                active, pop, probs, fit = active[keep], pop[keep], probs[keep], fit[keep]
        else:
            pop = probs = fit = None
        best = torch.argmin(fit, dim=1) if fit is not None else None
        for gen in range(1, self.max_iter + 1):
            if active.numel() == 0:
                break
            lab_a, ids_a = labels[active], ids[active]
            lo_a, hi_a = glo[active], ghi[active]
            trial = k.de_mutate(pop, ids=ids_a, generation=gen, F=self.F, strategy=self.strategy,
                                best=best if self.strategy == "best1" else None, CR=cr,
                                oob=self.oob, height=H, width=W, lo=lo_a, hi=hi_a, seed=self.seed)
            tprobs = evaluator(active, trial)
            tfit = self._fitness(tprobs, lab_a)
            out_queries[active] += P
            replace = tfit <= fit                                # the kernel's rule, for probs
            probs = torch.where(replace[..., None], tprobs, probs)
            pop, fit, best = k.de_select(pop, fit, trial, tfit)
            done = self._finish(probs, fit, pop, lab_a, active, out_member, out_probs,
                                out_success, out_gen, gen, final=gen == self.max_iter)
            keep = ~done
            if not bool(keep.all()):
                active, pop, probs, fit, best = (active[keep], pop[keep], probs[keep], fit[keep],
                                                 best[keep])

        # Re-verify: apply the returned pixels and run the model once more on each success.
        members = out_member[:, None, :].contiguous()
        succ_idx = torch.nonzero(out_success).flatten()
        if succ_idx.numel():
            vprobs = full(succ_idx, members[succ_idx])[:, 0, :]
            ok = self._succeeded(vprobs, labels[succ_idx])
            out_probs[succ_idx] = vprobs
            out_queries[succ_idx] += 1
            if not bool(ok.all()):
                log.debug("%d success(es) did not re-verify and are reported as failures",
                          int((~ok).sum()))
                out_success[succ_idx] = ok
        adv = None
        if return_images:
            adv = codec.write_members(torch.arange(B, device=device), members)
        return self._result(codec, out_member, out_probs, out_success, out_queries, out_gen,
                            labels, adv)

    def _corner_scan(self, images, labels, codec, evaluator, active, out_member, out_probs,
                     out_success, out_gen, out_queries):
        """``init="gradient"``: evaluate the ``popsize`` gradient-ranked box corners of each
        image before the search; an image with a flip among them ends there (generation 0,
        whatever ``early_stop``). Returns the images left to search."""
        grad = _score_gradient(self.model, images, labels, self.targeted)
        if grad is None:
            return active
        seeds = codec.canon(active, codec.corners(grad, self.popsize)).contiguous()
        probs = evaluator(active, seeds)                                   # (B, n, K)
        out_queries[active] += seeds.shape[1]
        ok = self._succeeded(probs, labels[:, None].expand(-1, seeds.shape[1])).any(dim=1)
        if bool(ok.any()):
            rows = torch.nonzero(ok).flatten()
            self._finish(probs[rows], self._fitness(probs[rows], labels[rows]), seeds[rows],
                         labels[rows], active[rows], out_member, out_probs, out_success,
                         out_gen, 0, final=True)
        return active[~ok]

    def _fitness(self, probs, labels):
        idx = labels.view(-1, 1, 1).expand(-1, probs.shape[1], 1)
        p = torch.gather(probs, 2, idx)[..., 0]
        return -p if self.targeted else p

    def _succeeded(self, probs, labels):
        """probs (..., K) and labels broadcastable to probs[..., 0]."""
        pred = probs.argmax(dim=-1)
        p_lab = torch.gather(probs, -1, labels.unsqueeze(-1).expand(*probs.shape[:-1], 1))[..., 0]
        if self.targeted:
            ok = pred == labels
            if self.threshold is not None:
                ok = ok & (p_lab > self.threshold)
        else:
            ok = pred != labels
            if self.threshold is not None:
                ok = ok & (p_lab < self.threshold)
        return ok

    def _finish(self, probs, fit, pop, labels, active, out_member, out_probs, out_success,
                out_gen, gen, *, final):
        """Record the images whose search ends now; return the (n_active,) bool `done` mask.

        The returned candidate is the fittest member that succeeds, else the fittest member.
        """
        ok = self._succeeded(probs, labels[:, None].expand(-1, probs.shape[1]))  # (A, P)
        any_ok = ok.any(dim=1)
        inf = torch.tensor(float("inf"), dtype=fit.dtype, device=fit.device)
        pick_ok = torch.argmin(torch.where(ok, fit, inf), dim=1)
        pick_all = torch.argmin(fit, dim=1)
        pick = torch.where(any_ok, pick_ok, pick_all)
        done = any_ok if self.early_stop else torch.zeros_like(any_ok)
        if final:
            done = torch.ones_like(any_ok)
        if bool(done.any()):
            rows = torch.nonzero(done).flatten()
            sel = pick[rows]
            dst = active[rows]
            out_member[dst] = pop[rows, sel]
            out_probs[dst] = probs[rows, sel]
            out_success[dst] = any_ok[rows]
            out_gen[dst] = gen
        return done

    def changed_pixels(self):
        """Pixels one candidate changes: ``pixels``, or the artefact's length."""
        if self.threat == "pixel":
            return self.pixels
        return 1 if self.threat == "band_pixel" else self.length

    def _result(self, codec, members, probs, success, queries, gens, labels, adv):
        rows = torch.arange(members.shape[0], device=members.device)
        y, x, values, band = codec.decode(rows, members)
        label = probs.argmax(dim=1)
        prob = torch.gather(probs, 1, label[:, None])[:, 0]
        if codec.pixels == 1:
            x, y, values = x[:, 0], y[:, 0], values[:, 0]
        return OnePixelResult(success=success, x=x, y=y, values=values, label=label, prob=prob,
                              probs=probs, queries=queries, generations=gens,
                              attacked_label=labels, targeted=self.targeted, images=adv,
                              band=band)

    def _empty_result(self, images, labels, return_images):
        device = images.device
        C = images.shape[1]
        k = self.changed_pixels()
        shape = (0,) if k == 1 else (0, k)
        z = torch.zeros(shape, dtype=torch.int64, device=device)
        vshape = (0, C) if k == 1 else (0, k, C)
        return OnePixelResult(
            success=torch.zeros(0, dtype=torch.bool, device=device), x=z, y=z.clone(),
            values=torch.zeros(vshape, device=device), label=z.new_zeros(0),
            prob=torch.zeros(0, device=device), probs=torch.zeros(0, 0, device=device),
            queries=z.new_zeros(0), generations=z.new_zeros(0), attacked_label=labels,
            targeted=self.targeted, images=images.clone() if return_images else None,
            band=torch.zeros(0, dtype=torch.int64, device=device))


class _Evaluator:
    """Runs candidate members (R, P, G) of the call's images `rows` (R,) through the model:
    candidate images are written by the core's kernel and evaluated in chunks of `chunk`."""

    def __init__(self, model, chunk, images, codec):
        self.model = model
        self.chunk = chunk
        self.images = images
        self.codec = codec
        self.buf = None

    def num_classes(self):
        return model_logits(self.model(self.images[:1])).shape[1]

    def _buffer(self, n):
        if self.buf is None or self.buf.shape[0] < n:
            self.buf = torch.empty((n,) + tuple(self.images.shape[1:]), dtype=self.images.dtype,
                                   device=self.images.device)
        return self.buf[:n]

    def __call__(self, rows, members):
        R, P, _ = members.shape
        chunk = self.chunk
        out = None
        if P >= chunk:
            blocks = [(b, b + 1, p, min(P, p + chunk)) for b in range(R) for p in range(0, P, chunk)]
        else:
            per = max(1, chunk // P)
            blocks = [(b, min(R, b + per), 0, P) for b in range(0, R, per)]
        for b0, b1, p0, p1 in blocks:
            mem = members[b0:b1, p0:p1]
            if not mem.is_contiguous():
                mem = mem.contiguous()
            n = (b1 - b0) * (p1 - p0)
            cand = self.codec.write_members(rows[b0:b1], mem, out=self._buffer(n))
            probs = torch.softmax(model_logits(self.model(cand)).float(), dim=1)
            if out is None:
                out = torch.empty(R, P, probs.shape[1], dtype=torch.float32,
                                  device=self.images.device)
            out[b0:b1, p0:p1] = probs.view(b1 - b0, p1 - p0, -1)
        return out


class _IncrementalRunner:
    """Same interface as `_Evaluator`, for k-pixel candidates through an
    `IncrementalEvaluator` (see `galguard.robustness._incremental`)."""

    def __init__(self, inc, chunk, codec):
        self.inc = inc
        self.chunk = chunk
        self.codec = codec

    def __call__(self, rows, members):
        R, P, G = members.shape
        b = rows.repeat_interleave(P)
        ys, xs, vals, _ = self.codec.decode(b, members.reshape(R * P, G))
        out = []
        for s in range(0, R * P, self.chunk):
            e = s + self.chunk
            out.append(torch.softmax(self.inc.logits(b[s:e], ys[s:e], xs[s:e], vals[s:e])
                                     .float(), dim=1))
        _clear_captured(self.inc.model)
        return torch.cat(out).view(R, P, -1)


def _score_gradient(model, images, labels, targeted):
    """(B, C, H, W) gradient of the fitness's margin per image (batch 1, so that it does not
    depend on the batch): untargeted ``logit[label] - max(other logits)`` (a flip is the
    runner-up overtaking), targeted its negative for the target; None (with a debug message)
    for a model autograd cannot differentiate."""
    B = images.shape[0]
    out = []
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for i in range(B):
                x = images[i:i + 1].detach().clone().requires_grad_(True)
                logits = model_logits(model(x))[0].float()
                lab = int(labels[i])
                others = torch.cat([logits[:lab], logits[lab + 1:]])
                score = logits[lab] - others.max()
                if targeted:
                    score = -score
                g, = torch.autograd.grad(score, x)
                out.append(torch.nan_to_num(g[0].detach(), nan=0.0, posinf=0.0, neginf=0.0))
    except Exception as exc:  # noqa: BLE001 - not differentiable: the random population
        log.debug("gradient init unavailable for %s: %s: %s", type(model).__name__,
                  type(exc).__name__, exc)
        return None
    return torch.stack(out) if out else torch.zeros_like(images)


def _clear_captured(model):
    """A wrapped model's latent hook may have captured outputs of the delta evaluations."""
    net = getattr(model, "network", None)
    captured = getattr(net, "_captured", None)
    if isinstance(captured, list):
        captured.clear()


def _concat_results(parts):
    """One `OnePixelResult` from the results of consecutive groups of images."""
    first = parts[0]
    fields = {}
    for f in dataclasses.fields(OnePixelResult):
        vals = [getattr(p, f.name) for p in parts]
        if f.name == "targeted":
            fields[f.name] = first.targeted
        elif vals[0] is None:
            fields[f.name] = None
        else:
            fields[f.name] = torch.cat(vals)
    return OnePixelResult(**fields)
