"""The training loop: data checks, checkpoints, batch-norm recalibration, early stopping.
"""

import copy
import dataclasses
import json
import logging
import math
from pathlib import Path
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import GalguardValueError
from ..models.classifier import GalaxyClassifier, Preprocess, as_tensor, fit_latent_stats
from ..models.networks import build_network
from .config import TrainConfig
from .losses import mmd2, sinkhorn_divergence

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
def _labels(labels, n, k, name):
    y = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if y.shape != (n,):
        raise GalguardValueError(f"{name} must have shape ({n},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise GalguardValueError(f"{name} must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if n and (y.min() < 0 or y.max() >= k):
        raise GalguardValueError(f"{name} must be class indices in 0..{k - 1}, got values in "
                                 f"{y.min()}..{y.max()}")
    return torch.from_numpy(y)


def _images(x, name):
    t = as_tensor(x, name=name)
    if t.ndim != 4:
        raise GalguardValueError(f"{name} must have shape (N, C, H, W), got {tuple(t.shape)}")
    if t.shape[2] != t.shape[3]:
        raise GalguardValueError(f"{name} must hold square cutouts, got {tuple(t.shape)}")
    return t


class Checkpoint:
    """Checkpoint files in a directory: model tensors (safetensors), optimizer state
    (torch.save, read back with weights_only=True) and a JSON state."""

    def __init__(self, directory):
        self.dir = Path(directory)

    def exists(self):
        return (self.dir / "state.json").exists()

    def save(self, *, model, best_state, optimizer, state):
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        tensors = {f"model.{k}": v.detach().cpu().contiguous()
                   for k, v in model.state_dict().items()}
        if best_state is not None:
            tensors.update({f"best.{k}": v.detach().cpu().contiguous()
                            for k, v in best_state.items()})
        save_file(tensors, str(self.dir / "model.safetensors.tmp"))
        torch.save(optimizer.state_dict(), self.dir / "optimizer.pt.tmp")
        with open(self.dir / "state.json.tmp", "w") as fh:
            json.dump(state, fh, indent=1)
        for f in ("model.safetensors", "optimizer.pt", "state.json"):
            (self.dir / f"{f}.tmp").replace(self.dir / f)

    def load(self):
        from safetensors.torch import load_file

        with open(self.dir / "state.json") as fh:
            state = json.load(fh)
        tensors = load_file(str(self.dir / "model.safetensors"))
        model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
        opt = torch.load(self.dir / "optimizer.pt", weights_only=True)
        return model, best, opt, state


def _prepare_data(source, source_labels, target, validation, validation_labels, cfg):
    """The training tensors, checked: source, validation (given, or a seeded split of the
    source), target (for domain adaptation), class counts and class weights."""
    bands, k, da, seed, val_fraction = cfg.bands, len(cfg.classes), cfg.da, cfg.seed, \
        cfg.val_fraction
    classes = cfg.classes
    xs = _images(source, "source")
    if xs.shape[1] != len(bands):
        raise GalguardValueError(f"source must have {len(bands)} bands ({','.join(bands)}), got "
                                 f"shape {tuple(xs.shape)}")
    ys = _labels(source_labels, xs.shape[0], k, "source_labels")
    if validation is None:
        perm = np.random.default_rng([seed, 7]).permutation(xs.shape[0])
        nv = max(1, int(round(val_fraction * xs.shape[0])))
        vi, ti = torch.from_numpy(np.sort(perm[:nv])), torch.from_numpy(np.sort(perm[nv:]))
        xv, yv, xs, ys = xs[vi], ys[vi], xs[ti], ys[ti]
    else:
        xv = _images(validation, "validation")
        yv = _labels(validation_labels, xv.shape[0], k, "validation_labels")
    if tuple(xv.shape[1:]) != tuple(xs.shape[1:]):
        raise GalguardValueError(f"validation must have shape (N, {', '.join(map(str, xs.shape[1:]))}),"
                                 f" got {tuple(xv.shape)}")
    xt = None
    if da != "none":
        if target is None:
            raise GalguardValueError(f"target (unlabelled target-domain images) is needed for "
                                     f"da={da!r}")
        xt = _images(target, "target")
        if tuple(xt.shape[1:]) != tuple(xs.shape[1:]):
            raise GalguardValueError(f"target must have shape (M, {', '.join(map(str, xs.shape[1:]))}),"
                                     f" got {tuple(xt.shape)}")
    ns = xs.shape[0]
    counts = torch.bincount(ys, minlength=k)
    if bool((counts == 0).any()):
        raise GalguardValueError(f"source_labels must contain every class, got counts "
                                 f"{counts.tolist()} for {classes}")
    class_weights = (ns / (k * counts.double())).float()
    return xs, ys, xv, yv, xt, counts, class_weights


def _batch_loss(model, xb, yb, tb, cfg, class_weights, loss_w, weights_ready):
    """One batch's losses: class-weighted cross-entropy on the source, plus the domain term on
    the source and target latents (``tb`` None: no domain term). Returns ``(ce, domain, loss,
    logits, weights_ready)``; SIDDA's learned weights ``loss_w`` are started from the first
    adapted batch (``init_loss_weights="data"``)."""
    if tb is not None:
        latent, logits = model(torch.cat([xb, tb], 0))
        zs, zt, logits = latent[:len(xb)], latent[len(xb):], logits[:len(xb)]
    else:
        latent, logits = model(xb)
    ce = F.cross_entropy(logits, yb, weight=class_weights)
    dom = torch.zeros(())
    if tb is not None and cfg.da == "mmd":
        dom = mmd2(zs, zt)
        loss = ce + cfg.mmd_weight * dom
    elif tb is not None and cfg.da == "sinkhorn":
        dom, _ = sinkhorn_divergence(zs, zt)
        if not weights_ready:
            # start each learned weight where it is heading (e_i^2 = L_i minimises
            # L_i / (2 e_i^2) + log e_i), so that neither term swamps the other
            with torch.no_grad():
                loss_w.copy_(torch.stack([ce.detach(), dom.detach()]).clamp_min(1e-6).sqrt())
                loss_w[0].clamp_(min=1e-3)
                loss_w[1].clamp_(min=0.25 * float(loss_w[0]))
            weights_ready = True
        e1, e2 = loss_w[0], loss_w[1]
        loss = ce / (2 * e1 ** 2) + dom / (2 * e2 ** 2) + torch.log(e1.abs() * e2.abs())
    else:
        loss = ce
    return ce, dom, loss, logits, weights_ready


def train(source, source_labels, *, target=None, validation=None, validation_labels=None,
          config=None, checkpoint_dir=None, resume=False, progress=True, num_threads=None,
          name=None, card=None, **options):
    """Train a `GalaxyClassifier` on labelled source data, optionally adapting to a target domain.

    Parameters
    ----------
    source : array-like, tensor or Cutouts, shape (N, C, H, W)
        Labelled training images, raw flux (e.g. Y10 depth). Not modified.
    source_labels : array-like of int, shape (N,)
    target : array-like, tensor or Cutouts, shape (M, C, H, W), optional
        Unlabelled images of the target domain (e.g. Y1 depth); needed when ``da != "none"``.
    validation, validation_labels : optional
        Labelled validation images (source domain) for early stopping; if omitted,
        ``val_fraction`` of ``source`` is held out (a seeded random split).
    config : TrainConfig, optional
        The run's settings (architecture, domain adaptation, epochs, optimiser, seed, ...;
        default ``TrainConfig()``), validated before anything is computed.
    **options
        Any `TrainConfig` field, overriding ``config`` (e.g. ``da="mmd", epochs=10``).
    checkpoint_dir : path-like, optional
        Write a checkpoint after every epoch; with ``resume=True`` continue from it.
    resume : bool
    progress : bool
        Show a tqdm progress bar.
    num_threads : int, optional
        ``torch.set_num_threads`` for the duration of training.
    name : str, optional
        Model name for the card.
    card : dict, optional
        Extra card entries (e.g. the command line and the data description).

    Returns
    -------
    GalaxyClassifier
        The model with the best validation loss, in evaluation mode, with latent statistics
        fitted on the source training set and ``card["training"]`` holding the settings and the
        per-epoch history.

    Notes
    -----
    After every epoch the batch-norm running statistics are recomputed from ``bn_samples``
    fixed training galaxies (source, plus as many target galaxies when the domain loss is on,
    passed together as in training). With a learning rate of 1e-3 the usual exponential running
    averages lag behind the weights, and because the preprocessed images are a small signal on
    a constant 0.5 offset this lag made evaluation-mode predictions far worse than
    training-mode ones (validation accuracy 0.58 vs 0.81 in a test run).
    """
    from tqdm.auto import tqdm

    if config is None:
        config = TrainConfig()
    if not isinstance(config, TrainConfig):
        raise GalguardValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise GalguardValueError(f"unknown training option(s) {unknown}; known: {fields}")
    cfg = dataclasses.replace(config, **options)
    (architecture, width, da, classes, bands, epochs, batch_size, lr, weight_decay, betas, patience,
     min_delta, warmup_epochs, mmd_weight, grad_clip, seed, val_fraction, bn_samples,
     loss_weight_lr, init_loss_weights) = (getattr(cfg, f) for f in fields)
    if resume and checkpoint_dir is None:
        raise GalguardValueError("resume=True needs checkpoint_dir")
    classes, bands = tuple(classes), tuple(bands)
    k = len(classes)

    xs, ys, xv, yv, xt, counts, class_weights = _prepare_data(
        source, source_labels, target, validation, validation_labels, cfg)
    ns = xs.shape[0]

    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        torch.manual_seed(seed)
        size = int(xs.shape[2])
        preprocess = Preprocess.from_data(xs)
        net = build_network(architecture, in_channels=len(bands), n_classes=k, input_size=size,
                            width=width)
        model = GalaxyClassifier(net, preprocess, classes=classes, bands=bands, input_size=size)
        loss_w = None
        groups = [{"params": list(model.network.parameters())}]
        if da == "sinkhorn":
            loss_w = torch.nn.Parameter(torch.ones(2))  # SIDDA's (e1, e2), learned, not decayed
            groups.append({"params": [loss_w], "weight_decay": 0.0,
                           "lr": 10.0 * lr if loss_weight_lr is None else float(loss_weight_lr)})
        opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas))

        ckpt = Checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
        config = {"architecture": architecture, **({} if width is None else {"width": width}),
                  "da": da, "epochs": int(epochs),
                  "batch_size": int(batch_size), "lr": float(lr),
                  "weight_decay": float(weight_decay), "betas": list(map(float, betas)),
                  "patience": int(patience), "min_delta": float(min_delta),
                  "warmup_epochs": int(warmup_epochs),
                  "mmd_weight": float(mmd_weight),
                  "grad_clip": None if grad_clip is None else float(grad_clip),
                  "bn_samples": int(bn_samples),
                  "init_loss_weights": init_loss_weights if da == "sinkhorn" else None,
                  "loss_weight_lr": (None if da != "sinkhorn" else
                                     10.0 * lr if loss_weight_lr is None else float(loss_weight_lr)),
                  "seed": int(seed), "n_source": int(ns), "n_validation": int(xv.shape[0]),
                  "n_target": 0 if xt is None else int(xt.shape[0])}
        history, start_epoch = [], 0
        best = {"epoch": None, "val_loss": math.inf, "state": None, "bad": 0}
        if ckpt is not None and resume and ckpt.exists():
            mstate, bstate, ostate, st = ckpt.load()
            if st["config"] != config:
                raise GalguardValueError(
                    f"checkpoint_dir {str(checkpoint_dir)!r} holds a run with different settings "
                    f"{st['config']}; this run has {config}")
            model.load_state_dict(mstate)
            opt.load_state_dict(ostate)
            if loss_w is not None:
                loss_w.data.copy_(torch.tensor(st["loss_weights"]))
            history, start_epoch = st["history"], st["epoch"] + 1
            best.update(epoch=st["best_epoch"], val_loss=st["best_val_loss"], state=bstate,
                        bad=st["bad_epochs"])
            log.info("resumed from %s at epoch %d", checkpoint_dir, start_epoch)
        elif ckpt is not None and ckpt.exists():
            raise GalguardValueError(f"checkpoint_dir {str(checkpoint_dir)!r} already holds a "
                                     f"checkpoint; pass resume=True or use a new directory")

        steps = max(1, ns // batch_size)
        weights_ready = init_loss_weights == "ones" or start_epoch > warmup_epochs
        # fixed galaxies for the batch-norm recalibration before each validation
        brng = np.random.default_rng([seed, 11])
        bn_order = (torch.from_numpy(brng.permutation(ns)[:bn_samples]),
                    None if xt is None else
                    torch.from_numpy(brng.permutation(xt.shape[0])[:bn_samples]))
        t0 = time.time()
        stopped = best["bad"] >= patience
        for epoch in range(start_epoch, epochs):
            if stopped:
                break
            rng = np.random.default_rng([seed, epoch])
            torch.manual_seed(seed * 1_000_003 + epoch)
            order = torch.from_numpy(rng.permutation(ns))
            tord = None
            if xt is not None:
                reps = -(-steps * batch_size // xt.shape[0])
                tord = torch.from_numpy(np.concatenate(
                    [rng.permutation(xt.shape[0]) for _ in range(reps)]))
            use_da = da != "none" and epoch >= warmup_epochs
            model.train()
            sums = {"ce": 0.0, "domain": 0.0, "loss": 0.0, "correct": 0, "n": 0}
            bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{epochs} [{da}]",
                       disable=not progress, leave=False, unit="batch")
            for step in bar:
                idx = order[step * batch_size:(step + 1) * batch_size]
                xb, yb = xs[idx], ys[idx]
                tb = xt[tord[step * batch_size:(step + 1) * batch_size]] if use_da else None
                ce, dom, loss, logits, weights_ready = _batch_loss(
                    model, xb, yb, tb, cfg, class_weights, loss_w, weights_ready)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.network.parameters(), grad_clip)
                opt.step()
                if loss_w is not None:
                    with torch.no_grad():
                        loss_w[0].clamp_(min=1e-3)
                        loss_w[1].clamp_(min=0.25 * float(loss_w[0]))
                ce, dom, loss = ce.detach(), dom.detach(), loss.detach()
                sums["ce"] += float(ce) * len(idx)
                sums["domain"] += float(dom) * len(idx)
                sums["loss"] += float(loss) * len(idx)
                sums["correct"] += int((logits.argmax(1) == yb).sum())
                sums["n"] += len(idx)
                bar.set_postfix(ce=f"{float(ce):.3f}", dom=f"{float(dom):.3g}")
            bar.close()
            _recalibrate_bn(model, xs, xt if use_da else None, bn_order, batch_size)
            val_loss, val_acc = _validate(model, xv, yv, class_weights, batch_size)
            rec = {"epoch": epoch, "train_ce": sums["ce"] / sums["n"],
                   "train_domain": sums["domain"] / sums["n"],
                   "train_loss": sums["loss"] / sums["n"],
                   "train_accuracy": sums["correct"] / sums["n"], "val_loss": val_loss,
                   "val_accuracy": val_acc, "domain_loss_on": bool(use_da),
                   "elapsed_s": round(time.time() - t0, 1)}
            if loss_w is not None:
                rec["loss_weights"] = loss_w.detach().tolist()
            history.append(rec)
            eligible = da == "none" or epoch >= warmup_epochs
            if eligible and val_loss < best["val_loss"] - min_delta:
                best.update(epoch=epoch, val_loss=val_loss, bad=0,
                            state=copy.deepcopy({kk: v.detach().clone()
                                                 for kk, v in model.state_dict().items()}))
            elif eligible:
                best["bad"] += 1
            log.info("epoch %d: train ce %.4f domain %.4g acc %.3f | val loss %.4f acc %.3f%s",
                     epoch, rec["train_ce"], rec["train_domain"], rec["train_accuracy"],
                     val_loss, val_acc, " *" if best["epoch"] == epoch else "")
            if progress:
                tqdm.write(f"epoch {epoch + 1}/{epochs} [{da}] train ce {rec['train_ce']:.4f} "
                           f"acc {rec['train_accuracy']:.3f} domain {rec['train_domain']:.4g} | "
                           f"val loss {val_loss:.4f} acc {val_acc:.3f}"
                           f"{' (best)' if best['epoch'] == epoch else ''}")
            stopped = best["bad"] >= patience
            if ckpt is not None:
                ckpt.save(model=model, best_state=best["state"], optimizer=opt, state={
                    "config": config, "epoch": epoch, "history": history,
                    "best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
                    "bad_epochs": best["bad"],
                    "loss_weights": None if loss_w is None else loss_w.detach().tolist()})
        if best["state"] is not None:
            model.load_state_dict(best["state"])
        model.eval()
        lat = model.embed(xs, batch_size=256)
        stats = fit_latent_stats(lat, ys.numpy(), k)
        shrink = stats.pop("shrinkage")
        model.set_latent_stats(stats)
    finally:
        torch.set_num_threads(old_threads)
    for p in model.parameters():
        p.requires_grad_(False)

    out_card = dict(card or {})
    out_card.setdefault("name", name or f"{architecture}_{da}")
    out_card.update({"architecture": architecture, "domain_adaptation": da,
                     "classes": list(classes), "bands": list(bands), "input_size": size})
    tr = dict(out_card.get("training", {}))
    tr.update({
        "config": config,
        "optimizer": "AdamW",
        "class_weights": class_weights.tolist(),
        "class_counts": counts.tolist(),
        "best_epoch": best["epoch"],
        "best_val_loss": best["val_loss"],
        "epochs_run": len(history),
        "stopped_early": bool(len(history) < epochs),
        "history": history,
        "duration_s": round(time.time() - t0, 1),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "num_threads": torch.get_num_threads() if num_threads is None else int(num_threads),
        "latent_stats": {"fitted_on": "source training set (eval mode)",
                         "covariance": "tied within-class, Ledoit-Wolf shrinkage",
                         "shrinkage": shrink},
    })
    if loss_w is not None:
        e1, e2 = loss_w.detach().tolist()
        tr["loss_weights"] = {"e1": e1, "e2": e2}
    out_card["training"] = tr
    model.card = out_card
    model.name = out_card["name"]
    return model


@torch.no_grad()
def _recalibrate_bn(model, xs, xt, order, batch_size):
    """Recompute the batch-norm running statistics with the final weights of the epoch.

    The running averages kept during an epoch lag behind weights that change quickly (lr 1e-3):
    the preprocessed images sit on a constant 0.5 offset with a small signal, so a small lag in
    the running mean is large compared with the batch standard deviation, and evaluation-mode
    outputs drift away from training-mode ones. Recomputing the statistics as a plain average
    over fixed training batches (the same source/target mix as in training) removes the lag
    ("precise batch norm").
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    try:
        src, tgt = order
        for i in range(0, len(src), batch_size):
            xb = xs[src[i:i + batch_size]]
            if xt is not None:
                xb = torch.cat([xb, xt[tgt[i:i + batch_size]]], 0)
            model(xb)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.train(was_training)


@torch.inference_mode()
def _validate(model, x, y, class_weights, batch_size):
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, x.shape[0], batch_size):
        _, logits = model(x[i:i + batch_size])
        yb = y[i:i + batch_size]
        loss += float(F.cross_entropy(logits, yb, weight=class_weights, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    # weighted CE with reduction="sum" is sum_i w_{y_i} l_i; normalise by sum of weights
    wsum = float(class_weights[y].sum())
    return loss / wsum, correct / x.shape[0]
