"""Evaluation: accuracy, per-class precision/recall/F1, confusion matrix, calibration error, Brier score and their plot.
"""

from pathlib import Path

import numpy as np

from ..errors import GalguardValueError
from ..models.classifier import GalaxyClassifier
from .losses import CLASSES


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------
def classification_metrics(probs, labels, *, classes=CLASSES, n_bins=15):
    """Accuracy, per-class precision/recall/F1, confusion matrix, ECE and Brier score.

    Parameters
    ----------
    probs : array-like, shape (N, K)
        Predicted class probabilities.
    labels : array-like of int, shape (N,)
        True classes in ``0..K-1``.
    classes : sequence of str, optional
    n_bins : int, optional
        Equal-width confidence bins for the expected calibration error.

    Returns
    -------
    dict
        ``n``, ``accuracy``, ``per_class`` {name: {precision, recall, f1, support}},
        ``confusion`` (K x K list, rows = true class, columns = predicted), ``ece``, ``brier``
        (mean over galaxies of ``sum_k (p_k - [y = k])^2``), ``reliability`` (per bin: lower edge,
        count, mean confidence, accuracy).

    Notes
    -----
    ECE = sum_b (n_b / N) |acc_b - conf_b| over confidence bins b of the top-class probability;
    a bin's interval is (lo, hi], the first includes 0.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    k = len(classes)
    if p.ndim != 2 or p.shape[1] != k:
        raise GalguardValueError(f"probs must have shape (N, {k}), got {p.shape}")
    if y.shape != (p.shape[0],):
        raise GalguardValueError(f"labels must have shape ({p.shape[0]},), got {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= k):
        raise GalguardValueError(f"labels must be in 0..{k - 1}, got values in "
                                 f"{y.min()}..{y.max()}")
    n = y.size
    pred = p.argmax(1) if n else np.zeros(0, np.int64)
    conf = p.max(1) if n else np.zeros(0)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y, pred), 1)
    per = {}
    for i, c in enumerate(classes):
        tp = cm[i, i]
        prec = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
        rec = tp / cm[i].sum() if cm[i].sum() else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per[c] = {"precision": float(prec), "recall": float(rec), "f1": float(f1),
                  "support": int(cm[i].sum())}
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    ece = 0.0
    rel = []
    for b in range(n_bins):
        sel = bins == b
        nb = int(sel.sum())
        if nb:
            acc_b, conf_b = correct[sel].mean(), conf[sel].mean()
            ece += nb / n * abs(acc_b - conf_b)
        else:
            acc_b = conf_b = float("nan")
        rel.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": nb,
                    "confidence": float(conf_b), "accuracy": float(acc_b)})
    onehot = np.eye(k)[y] if n else np.zeros((0, k))
    return {
        "n": int(n),
        "accuracy": float(correct.mean()) if n else float("nan"),
        "per_class": per,
        "confusion": cm.tolist(),
        "ece": float(ece) if n else float("nan"),
        "brier": float(((p - onehot) ** 2).sum(1).mean()) if n else float("nan"),
        "reliability": rel,
        "classes": list(classes),
    }


def evaluate(model, data, *, batch_size=256, n_bins=15):
    """Evaluate a model on one or several labelled data sets.

    Parameters
    ----------
    model : GalaxyClassifier
    data : dict
        ``name -> (images, labels)``; images are raw flux (N, C, H, W) arrays, tensors or
        `Cutouts`; labels (N,) ints.
    batch_size : int, optional
    n_bins : int, optional

    Returns
    -------
    dict
        ``name -> metrics`` (see :func:`classification_metrics`).
    """
    if not isinstance(model, GalaxyClassifier):
        raise GalguardValueError(f"model must be a GalaxyClassifier, got {type(model).__name__}")
    if not isinstance(data, dict) or not data:
        raise GalguardValueError(f"data must be a non-empty dict name -> (images, labels), got "
                                 f"{type(data).__name__}")
    out = {}
    for name, (images, labels) in data.items():
        probs = model.predict(images, batch_size=batch_size)
        out[name] = classification_metrics(probs, labels, classes=model.classes, n_bins=n_bins)
    return out


def plot_evaluation(results, path, *, title=None):
    """Confusion matrices and reliability diagrams, one column per data set, saved as PNG."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 8.2), squeeze=False)
    for j, name in enumerate(names):
        r = results[name]
        cm = np.asarray(r["confusion"], dtype=float)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax = axes[0, j]
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        for a in range(cm.shape[0]):
            for b in range(cm.shape[1]):
                ax.text(b, a, f"{int(cm[a, b])}\n{norm[a, b]:.2f}", ha="center", va="center",
                        color="white" if norm[a, b] > 0.5 else "black", fontsize=8)
        ax.set_xticks(range(len(r["classes"])), r["classes"], rotation=30)
        ax.set_yticks(range(len(r["classes"])), r["classes"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name}: accuracy {r['accuracy']:.3f} (N={r['n']})")
        ax = axes[1, j]
        rel = [b for b in r["reliability"] if b["count"]]
        lo = np.array([b["lo"] for b in rel])
        width = np.array([b["hi"] - b["lo"] for b in rel])
        ax.bar(lo, [b["accuracy"] for b in rel], width=width, align="edge", alpha=0.7,
               edgecolor="k", label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.plot([b["confidence"] for b in rel], [b["accuracy"] for b in rel], "o", color="C3",
                ms=3, label="(confidence, accuracy)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-class probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"ECE {r['ece']:.3f}, Brier {r['brier']:.3f}")
        ax.legend(loc="upper left", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
