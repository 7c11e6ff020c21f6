"""Self-contained HTML reports of a galguard catalog.

`make_report` turns a catalog written by ``galguard check`` (or a table from `galguard.check`
with the batch columns ``hdu`` and ``row``) into one HTML file with every figure embedded as a
base64 PNG ``data:`` URI, so it can be mailed or archived alone:

- counts: cutouts, good, bad inputs, fragile; per predicted class; per flag;
- a gallery of the most fragile galaxies: each shown as checked, with the attacking pixel of a
  successful one-pixel attack marked, and beside it noise realisation 0 of the check (the same
  binomial thinning, seed and row key that `galguard.check` used);
- the histogram of the noise flip rate (one bin per possible value ``j / K`` for K realisations);
- a latent-space map (Isomap or t-SNE from scikit-learn) of a sample of good rows, coloured by
  predicted class and by fragility;
- when the check ran with ``certify``: the exact one-pixel verdicts (certified robust, flip,
  unknown) in all and per predicted class, as a table and a bar chart, and each gallery
  galaxy's verdict in its caption.

Where the images come from (decision): catalogs hold no pixels and no latent vectors (both would
multiply a survey catalog's size by ~1000). The report reads the few cutouts it shows again from
the catalog's ``source``, ``hdu`` and ``row`` columns through `galguard.io`, with the model's
input size and bands (exactly as ``check`` read them), and recomputes the latent vectors of the
map's sample with the model the catalog names (``config['model']`` in the meta, or ``model=``);
it refuses a model whose sha256 differs from the catalog's ``model_sha256``. When the sources or
the model cannot be found, the gallery and the map are replaced by a note saying why, and the
rest of the report is still written.

Every figure's content is also written into the HTML as ``data-*`` attributes (gallery entries:
catalog row, id, drawn marker position; histogram: bin counts; map: number of points), which is
what the tests check.
"""

import base64
import dataclasses
import html
import io
import json
import logging
import os
from pathlib import Path

import numpy as np

from ._display import rgb
from ._files import atomic_write
from .errors import GalguardValueError
from .flags import VERDICT_FLAGS, Flag, count_rows

__all__ = ["make_report", "Report", "fragility_score", "METHODS", "VERDICTS"]

log = logging.getLogger(__name__)

#: Latent-map embeddings.
METHODS = ("isomap", "tsne")

#: The exact one-pixel verdicts (``onepixel_status`` of a ``certify`` run) as the report names
#: them, in its order.
VERDICTS = {"certified": "certified robust", "flip": "flip found",
            "unknown": "unknown"}


@dataclasses.dataclass
class Report:
    """What `make_report` wrote.

    Attributes
    ----------
    path : pathlib.Path
        The HTML file.
    counts : dict
        The summary counts shown in the report; ``onepixel_verdicts`` (None unless the check
        ran with ``certify``): ``threat``, ``total`` (verdict -> good rows) and ``per_class``
        (class -> verdict -> good rows).
    gallery : list of dict
        One entry per gallery galaxy: ``row`` (catalog row), ``id``, ``marker`` ((x, y) of the
        drawn pixel marker, or None when no attack succeeded).
    histogram : dict
        ``edges`` and ``counts`` of the flip-rate histogram.
    latent_points : int
        Points in the latent map (0 when it could not be made).
    notes : list of str
        Why a part of the report is missing, if any.
    figures : list of str
        Names of the figures embedded.
    """

    path: Path
    counts: dict
    gallery: list
    histogram: dict
    latent_points: int
    notes: list
    figures: list


def fragility_score(table):
    """Score to rank rows by fragility (higher = more fragile); bad rows get -inf.

    ``score = (number of verdict flags set) + noise_flip_rate + (1 - pred_prob)
    + 0.5 * onepixel_success``, with NaN terms counted as 0.
    """
    flags = np.asarray(table["flags"], np.int64)
    verdict = flags & int(VERDICT_FLAGS)
    nbits = np.zeros(len(flags))
    for f in Flag:
        if f.value and int(f.value) & int(VERDICT_FLAGS):
            nbits += (verdict & int(f.value)) != 0
    flip = np.nan_to_num(np.asarray(table["noise_flip_rate"], np.float64), nan=0.0)
    prob = np.nan_to_num(np.asarray(table["pred_prob"], np.float64), nan=1.0)
    succ = np.asarray(table["onepixel_success"], bool).astype(float)
    score = nbits + flip + (1.0 - prob) + 0.5 * succ
    bad = (flags & int(Flag.BAD_INPUT)) != 0
    score[bad] = -np.inf
    return score


def _png(fig):
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64, alt, **data):
    attrs = "".join(f' data-{k}="{html.escape(str(v))}"' for k, v in data.items())
    return (f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}"{attrs}>')


def _config(meta):
    try:
        return json.loads(meta.get("config", "{}"))
    except (TypeError, ValueError):
        return {}


def _threat_models(meta):
    """The table meta ``threat_models`` (JSON) as a list of dicts ([] where absent)."""
    tm = meta.get("threat_models")
    try:
        tm = json.loads(tm) if isinstance(tm, str) else tm
    except ValueError:
        return []
    return [t for t in tm if isinstance(t, dict)] if isinstance(tm, list) else []


def _verdicts(table, classes, meta):
    """The exact one-pixel verdicts of the good rows, in all and per predicted class, or None
    when the check did not certify."""
    tm = _threat_models(meta)
    if "onepixel_status" not in table.colnames or not any(t.get("certified") for t in tm):
        return None
    status = np.asarray(table["onepixel_status"]).astype(str)
    good = (np.asarray(table["flags"], np.int64) & int(Flag.BAD_INPUT)) == 0
    pred = np.asarray(table["pred_label"], np.int64)
    total = {v: int(np.sum(good & (status == v))) for v in VERDICTS}
    per_class = {name: {v: int(np.sum(good & (pred == c) & (status == v))) for v in VERDICTS}
                 for c, name in enumerate(classes)}
    threat = ", ".join(str(t.get("threat", "?")) for t in tm if t.get("certified"))
    return {"threat": threat, "total": total, "per_class": per_class}


def _verdict_chart(verdicts):
    """Horizontal stacked bars of the verdicts, all galaxies and per class."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [("all", verdicts["total"])] + list(verdicts["per_class"].items())
    colours = {"certified": "#2a8a2a", "flip": "#c62828", "unknown": "#9e9e9e"}
    fig, ax = plt.subplots(figsize=(6.5, 1.0 + 0.4 * len(rows)), dpi=100)
    for i, (name, c) in enumerate(rows):
        left = 0
        for v, label in VERDICTS.items():
            ax.barh(i, c[v], left=left, color=colours[v], label=label if i == 0 else None)
            left += c[v]
    ax.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"galaxies (threat {verdicts['threat']})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    return _png(fig)


def _hdu_arg(h):
    h = str(h).strip()
    if not h:
        return None
    parts = [p.strip() for p in h.split(",")]
    vals = [int(p) if p.lstrip("-").isdigit() else p for p in parts]
    return vals[0] if len(vals) == 1 else vals


def _load_images(table, rows, model):
    """Cutouts (len(rows), C, H, W), gain, sky and a bool 'found' per row, read again."""
    from .io import read_cutouts

    C = len(model.bands)
    H, W = model.input_hw
    data = np.zeros((len(rows), C, H, W), np.float32)
    gain = np.full((len(rows), C), np.nan)
    sky = np.full((len(rows), C), np.nan)
    found = np.zeros(len(rows), bool)
    groups = {}
    for j, r in enumerate(rows):
        groups.setdefault((str(table["source"][r]), str(table["hdu"][r])), []).append(j)
    for (source, hdu), js in groups.items():
        if not source or source.startswith("<") or not os.path.exists(source):
            continue
        try:
            cut = read_cutouts(source, hdu=_hdu_arg(hdu), size=(H, W), bands=tuple(model.bands))
        except Exception as exc:  # noqa: BLE001 - the report goes on without this image
            log.warning("cannot read %s again: %s", source, exc)
            continue
        ok = np.asarray(cut.meta["error"]) == ""
        pos = {int(rw): i for i, rw in enumerate(np.asarray(cut.meta["row"]))}
        for j in js:
            i = pos.get(int(table["row"][rows[j]]))
            if i is None or not ok[i]:
                continue
            data[j] = cut.data[i]
            gain[j] = np.asarray(cut.meta["gain"][i], np.float64)
            sky[j] = np.asarray(cut.meta["sky"][i], np.float64)
            found[j] = True
    return data, gain, sky, found


def _weights(img):
    """Per-band factors putting each band's 99.5th percentile at 1 (a common display scale)."""
    s = np.array([np.percentile(b, 99.5) for b in img], np.float64)
    return 1.0 / np.where(s > 0, s, 1.0)


def _gallery(table, rows, images, noisy, found, classes, verdicts=None):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    entries, html_parts = [], []
    for j, r in enumerate(rows):
        cid = int(table["id"][r])
        entry = {"row": int(r), "id": cid, "marker": None}
        pred = int(table["pred_label"][r])
        name = classes[pred] if 0 <= pred < len(classes) else str(pred)
        succ = bool(table["onepixel_success"][r])
        x = np.asarray(table["onepixel_x"][r]).reshape(-1)
        y = np.asarray(table["onepixel_y"][r]).reshape(-1)
        if not found[j]:
            html_parts.append(f'<figure class="gallery-entry missing" data-row="{r}" '
                              f'data-id="{cid}"><figcaption>id {cid}: image not found '
                              f'({html.escape(str(table["source"][r]))})</figcaption></figure>')
            entries.append(entry)
            continue
        fig, axes = plt.subplots(1, 2, figsize=(4.4, 2.4), dpi=100)
        weights = _weights(images[j])
        axes[0].imshow(rgb(images[j], weights=weights, stretch=0.05), origin="lower",
                       interpolation="nearest")
        marker = None
        if succ and x[0] >= 0:
            for xi, yi in zip(x, y):
                c = Circle((float(xi), float(yi)), radius=max(1.5, images.shape[-1] / 20),
                           fill=False, color="#00ff66", lw=1.5)
                axes[0].add_patch(c)
            marker = tuple(float(v) for v in c.center) if len(x) == 1 else \
                [(float(a), float(b)) for a, b in zip(x, y)]
            after = int(table["onepixel_label"][r])
            aname = classes[after] if 0 <= after < len(classes) else str(after)
            axes[0].set_title(f"{name} -> {aname} (1 px)", fontsize=8)
        else:
            axes[0].set_title(f"{name}; no 1-px flip", fontsize=8)
        axes[1].imshow(rgb(noisy[j], weights=weights, stretch=0.05), origin="lower",
                       interpolation="nearest")
        fr = float(table["noise_flip_rate"][r])
        axes[1].set_title("shallower depth" + (f"; flips {fr:.0%}" if np.isfinite(fr) else ""),
                          fontsize=8)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        b64 = _png(fig)
        entry["marker"] = marker
        entries.append(entry)
        mx, my = (marker if isinstance(marker, tuple) else (None, None))
        flags = ", ".join(f.name for f in Flag if f.value and int(table["flags"][r]) & f.value)
        cap = (f"id {cid} &middot; p={float(table['pred_prob'][r]):.2f} &middot; "
               f"{html.escape(flags or 'no flags')}")
        if verdicts is not None:
            v = str(table["onepixel_status"][r])
            cap += (f' &middot; <span class="verdict" data-verdict="{html.escape(v)}">one pixel: '
                    f'{html.escape(VERDICTS.get(v, v or "not checked"))}</span>')
        reason = str(table["ood_reason"][r]) if "ood_reason" in table.colnames else ""
        if reason:
            cap += f'<br><span class="ood-reason">out of distribution: {html.escape(reason)}</span>'

        html_parts.append(
            f'<figure class="gallery-entry" data-row="{r}" data-id="{cid}"'
            + (f' data-x="{mx:g}" data-y="{my:g}"' if mx is not None else "") + ">"
            + _img(b64, f"cutout {cid}: as checked and at shallower depth")
            + f"<figcaption>{cap}</figcaption></figure>")
    return entries, "\n".join(html_parts)


def _histogram(table, k):
    import matplotlib.pyplot as plt

    v = np.asarray(table["noise_flip_rate"], np.float64)
    v = v[np.isfinite(v)]
    k = max(int(k or 10), 1)
    edges = (np.arange(k + 2) - 0.5) / k
    counts, _ = np.histogram(v, bins=edges)
    fig, ax = plt.subplots(figsize=(5.5, 3.0), dpi=100)
    ax.bar((edges[:-1] + edges[1:]) / 2, counts, width=0.9 / k, color="#4a78b5")
    ax.set_xlabel(f"noise flip rate (fraction of {k} shallower-depth realisations)")
    ax.set_ylabel("cutouts")
    ax.set_xlim(-0.6 / k, 1 + 0.6 / k)
    fig.tight_layout()
    return edges, counts, _png(fig)


def _embed(latents, method, seed):
    """2-d embedding of the latents (n, D); None where they are degenerate (nearly all equal:
    the manifold methods find no structure)."""
    n = len(latents)
    spread = np.ptp(latents, axis=0) if n else np.zeros(1)
    if not np.isfinite(latents).all() or float(spread.max(initial=0.0)) <= 1e-9 * (
            1.0 + float(np.abs(latents).max(initial=0.0))):
        return None
    try:
        if method == "tsne":
            from sklearn.manifold import TSNE
            return TSNE(n_components=2, perplexity=float(min(30, max(2, (n - 1) / 3))),
                        random_state=seed, init="pca").fit_transform(latents)
        from sklearn.manifold import Isomap
        return Isomap(n_neighbors=min(10, n - 1), n_components=2).fit_transform(latents)
    except ValueError as exc:      # e.g. Isomap on a few nearly equal latents: no eigenvalue
        log.warning("latent map: %s embedding failed (%s)", method, exc)
        return None


def _latent_map(table, rows, latents, classes, method, seed):
    import matplotlib.pyplot as plt

    n = len(rows)
    emb = _embed(latents, method, seed)
    if emb is None:
        return None
    pred = np.asarray(table["pred_label"])[rows]
    fragile = np.asarray(table["fragile"], bool)[rows]
    flip = np.nan_to_num(np.asarray(table["noise_flip_rate"], np.float64)[rows], nan=0.0)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), dpi=100)
    cmap = plt.get_cmap("tab10")
    for c in range(max(len(classes), int(pred.max()) + 1 if n else 0)):
        sel = pred == c
        if sel.any():
            axes[0].scatter(emb[sel, 0], emb[sel, 1], s=10, color=cmap(c % 10),
                            label=classes[c] if c < len(classes) else str(c))
    axes[0].legend(fontsize=8, markerscale=1.5)
    axes[0].set_title("predicted class", fontsize=10)
    sc = axes[1].scatter(emb[:, 0], emb[:, 1], s=10, c=flip, cmap="viridis", vmin=0, vmax=1)
    axes[1].scatter(emb[fragile, 0], emb[fragile, 1], s=40, facecolors="none",
                    edgecolors="#d62728", linewidths=0.8, label="fragile")
    axes[1].legend(fontsize=8)
    fig.colorbar(sc, ax=axes[1], label="noise flip rate")
    axes[1].set_title("fragility", fontsize=10)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"latent space ({'t-SNE' if method == 'tsne' else 'Isomap'}, {n} cutouts)",
                 fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _counts(table, classes):
    flags = np.asarray(table["flags"], np.int64)
    bad = (flags & int(Flag.BAD_INPUT)) != 0
    fragile = np.asarray(table["fragile"], bool)
    pred = np.asarray(table["pred_label"], np.int64)
    per_flag = {f.name: int(np.count_nonzero(flags & int(f.value))) for f in Flag if f.value}
    per_class = {}
    for c, name in enumerate(classes):
        sel = (pred == c) & ~bad
        per_class[name] = {"n": int(sel.sum()), "fragile": int((fragile & sel).sum())}
    rows = count_rows(table)
    return {"n": rows["n"], "good": rows["n"] - rows["bad"], "bad": rows["bad"],
            "fragile": rows["fragile"], "fragile_checked": rows["fragile_checked"],
            "onepixel_flip": per_flag.get("ONEPIXEL_FLIP", 0),
            "noise_unstable": per_flag.get("NOISE_UNSTABLE", 0),
            "per_flag": per_flag, "per_class": per_class}


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;border-bottom:1px solid #ccc;
padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
.meta{color:#555;font-size:.9em}.note{background:#fff6e0;border-left:4px solid #e0a000;
padding:.5em 1em}.shift{background:#eef6ee;border-left:4px solid #2a8a2a;padding:.5em 1em}
.shift.alarm{background:#fdecea;border-left-color:#c62828;font-weight:bold}
.ood-reason{color:#c62828}
.gallery{display:flex;flex-wrap:wrap;gap:12px}.gallery-entry{margin:0;border:1px solid #ddd;
padding:4px;background:#fafafa}.gallery-entry figcaption{font-size:.8em;max-width:440px}
img{max-width:100%}
"""


def make_report(catalog, output, *, gallery=12, max_points=2000, method="isomap", model=None,
                seed=0, title=None):
    """Write a self-contained HTML report of a galguard catalog.

    Parameters
    ----------
    catalog : str, path-like or astropy.table.Table
        A catalog written by ``galguard check`` (any format; see `galguard.catalog`) or a table
        with its columns. Not modified.
    output : str or path-like
        HTML file to write (atomically: temporary file + rename).
    gallery : int, optional
        Number of most fragile galaxies in the gallery (default 12; 0 for none).
    max_points : int, optional
        At most this many good rows in the latent map (a seeded random sample; default 2000).
    method : {"isomap", "tsne"}, optional
        Embedding of the latent map.
    model : str, path-like or GalaxyClassifier, optional
        Model for the images and latents; default the one the catalog names (its sha256 must
        match the catalog's ``model_sha256``).
    seed : int, optional
        Seed of the latent-map sample and of t-SNE.
    title : str, optional

    Returns
    -------
    Report

    Raises
    ------
    GalguardValueError
        For invalid arguments or a catalog lacking the columns of `galguard.check`.
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    from astropy.table import Table

    from .catalog import read_catalog

    if method not in METHODS:
        raise GalguardValueError(f"method must be one of {METHODS}, got {method!r}")
    for name, v, lo in (("gallery", gallery, 0), ("max_points", max_points, 0),
                        ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise GalguardValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    table = catalog if isinstance(catalog, Table) else read_catalog(catalog)
    need = ("id", "source", "pred_label", "pred_prob", "noise_flip_rate", "onepixel_success",
            "onepixel_x", "onepixel_y", "flags", "fragile")
    missing = [c for c in need if c not in table.colnames]
    if missing:
        raise GalguardValueError(f"catalog lacks the column(s) {missing}; expected a galguard "
                                 f"check catalog")
    meta = dict(table.meta)
    cfg = _config(meta)
    classes = tuple(str(meta.get("classes", "")).split(",")) if meta.get("classes") else \
        tuple(str(c) for c in range(table["probs"].shape[1] if "probs" in table.colnames
                                    else 0))
    notes, figures = [], []
    counts = _counts(table, classes)
    verdicts = _verdicts(table, classes, meta)
    counts["onepixel_verdicts"] = verdicts

    # the model, for images and latents
    mod = None
    want = meta.get("model_sha256", "")
    spec = model if model is not None else cfg.get("model", meta.get("model_name"))
    try:
        from .checks import resolve_model
        mod, _, sha = resolve_model(spec)
        if want and sha and sha != want:
            notes.append(f"model {spec!r} has sha256 {sha[:12]}..., not the catalog's "
                         f"{want[:12]}...; gallery and latent map left out")
            mod = None
    except Exception as exc:  # noqa: BLE001 - the report goes on without the model
        notes.append(f"the model {spec!r} could not be loaded ({exc}); gallery and latent map "
                     f"left out")
    has_loc = "hdu" in table.colnames and "row" in table.colnames
    if mod is not None and not has_loc:
        notes.append("the catalog has no hdu/row columns (not written by galguard check); "
                     "gallery and latent map left out")
        mod = None

    # gallery
    score = fragility_score(table)
    order = np.argsort(-score, kind="stable")
    g_rows = [int(r) for r in order[:gallery] if np.isfinite(score[r])
              and bool(table["fragile"][r])]
    entries, gallery_html = [], ""
    if g_rows and mod is not None:
        images, gain, sky, found = _load_images(table, g_rows, mod)
        noisy = images.copy()
        ok = found & np.all(np.isfinite(gain) & (gain > 0), axis=1) & \
            np.all(np.isfinite(sky), axis=1)
        if ok.any():
            import torch

            from .robustness.noise import degrade
            sel = np.flatnonzero(ok)
            noisy[sel] = degrade(torch.from_numpy(images[sel]), gain=gain[sel], sky=sky[sel],
                                 p=float(cfg.get("depth_fraction", 0.1)),
                                 mode=cfg.get("noise_mode", "thin"),
                                 seed=int(cfg.get("seed", meta.get("seed", 0))),
                                 index=np.asarray(g_rows, np.int64)[sel],
                                 realisation=0).numpy()
        if not found.any():
            notes.append("none of the gallery's source files could be read again")
        entries, gallery_html = _gallery(table, g_rows, images, noisy, found, classes,
                                         verdicts)
        figures.append("gallery")
    elif not g_rows:
        notes.append("no fragile galaxy: the gallery is empty")

    # histogram
    edges, hcounts, hb64 = _histogram(table, cfg.get("noise_realisations", 10))
    figures.append("flip_rate_histogram")

    # exact one-pixel verdicts
    verdict_html = ""
    if verdicts is not None:
        figures.append("onepixel_verdicts")
        vt = verdicts["total"]
        head = "".join(f"<th>{html.escape(lab)}</th>" for lab in VERDICTS.values())
        body = "".join(
            f"<tr><td>{html.escape(name)}</td>" + "".join(
                f'<td data-class="{html.escape(name)}" data-verdict="{v}">{c[v]}</td>'
                for v in VERDICTS) + "</tr>"
            for name, c in [("all", vt)] + list(verdicts["per_class"].items()))
        chart = _img(_verdict_chart(verdicts), "one-pixel verdicts",
                     **{v: vt[v] for v in VERDICTS})
        verdict_html = f"""<h2 id="verdicts">Exact one-pixel verdicts</h2>
<p class="meta">Threat {html.escape(verdicts['threat'])}. Certified robust: no value of the
changed pixel(s) inside the bounds changes the class (proved by bounds over every position).
Flip found: a change that does (by the attack or the certificate). Unknown: neither, within
the per-galaxy budget (certify_boxes), or the model has an op without a bound rule (the log of
the check names it). Good rows only.</p>
<table id="verdict-table"><thead><tr><th>class</th>{head}</tr></thead><tbody>{body}</tbody>
</table>
<div id="verdict-chart">{chart}</div>"""

    # latent map
    latent_points, map_html = 0, ""
    good = np.flatnonzero(np.isfinite(score))
    if mod is not None and len(good) >= 4 and max_points >= 4:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(good, size=min(max_points, len(good)), replace=False))
        images, _, _, found = _load_images(table, [int(r) for r in rows], mod)
        rows = rows[found]
        if len(rows) >= 4:
            import torch
            from .robustness.latent import model_latent
            lat = []
            with torch.inference_mode():
                for i in range(0, len(rows), 256):
                    out = mod(torch.from_numpy(images[found][i:i + 256]))
                    z = model_latent(out)
                    lat.append(None if z is None else z.float().numpy())
            if any(z is None for z in lat):
                notes.append("the model returns no latent vectors; latent map left out")
            else:
                latents = np.concatenate(lat).astype(np.float64)
                mb64 = _latent_map(table, rows, latents, classes, method, seed)
                if mb64 is None:
                    notes.append(f"the latent vectors have no structure for a {method} map "
                                 f"(nearly all equal); latent map left out")
                else:
                    latent_points = len(rows)
                    map_html = _img(mb64, "latent-space map", points=latent_points,
                                    method=method)
                    figures.append("latent_map")
        else:
            notes.append("fewer than 4 cutouts could be read again; latent map left out")
    elif mod is not None:
        notes.append("fewer than 4 good rows; latent map left out")

    # HTML
    esc = html.escape
    title = title or "galguard report"
    src = table.meta.get("source_catalog", "") or (os.fspath(catalog) if not
                                                  isinstance(catalog, Table) else "")
    rows_html = "".join(
        f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in (
            ("cutouts", counts["n"]), ("good", counts["good"]), ("bad inputs", counts["bad"]),
            ("fragile (bad inputs included)", counts["fragile"]),
            ("fragile among the checked", counts["fragile_checked"]),
            ("one-pixel flip", counts["onepixel_flip"]),
            *((("one-pixel certified robust", verdicts["total"]["certified"]),
               ("one-pixel verdict unknown", verdicts["total"]["unknown"]))
              if verdicts is not None else ()),
            ("noise unstable", counts["noise_unstable"])))
    cls_html = "".join(
        f"<tr><td>{esc(c)}</td><td>{v['n']}</td><td>{v['fragile']}</td>"
        f"<td>{(v['fragile'] / v['n'] if v['n'] else 0):.1%}</td></tr>"
        for c, v in counts["per_class"].items())
    flag_html = "".join(f'<tr><td>{esc(k)}</td><td data-flag="{esc(k)}">{v}</td></tr>'
                        for k, v in counts["per_flag"].items())
    notes_html = "".join(f'<p class="note">{esc(n)}</p>' for n in notes)
    ds = meta.get("domain_shift")
    if isinstance(ds, str):
        try:
            ds = json.loads(ds)
        except ValueError:
            ds = None
    if isinstance(ds, dict) and ds:
        from .ood.reference import describe_shift

        cls = "shift alarm" if ds.get("shifted") else "shift"
        notes_html = (f'<p class="{cls}" id="domain-shift" data-shifted='
                      f'"{str(bool(ds.get("shifted"))).lower()}">{esc(describe_shift(ds))}</p>'
                      + notes_html)
    hist_html = _img(hb64, "flip-rate histogram", counts=",".join(map(str, hcounts)),
                     edges=",".join(f"{e:g}" for e in edges))
    meta_bits = [("galguard", meta.get("galguard_version", "?")),
                 ("model", f"{meta.get('model_name', '?')} "
                           f"(sha256 {str(meta.get('model_sha256', ''))[:12]})"),
                 ("preset", meta.get("preset", "?")), ("seed", meta.get("seed", "?")),
                 ("catalog", src)]
    tms = _threat_models(meta)
    if tms:
        meta_bits.insert(3, ("threat", ", ".join(str(t.get("threat", "?")) for t in tms)))
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>{_CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
<p class="meta">{" &middot; ".join(f"{esc(k)}: {esc(str(v))}" for k, v in meta_bits)}</p>
{notes_html}
<h2 id="summary">Summary</h2>
<table id="counts" data-n="{counts['n']}" data-fragile="{counts['fragile']}"
 data-bad="{counts['bad']}"><tbody>{rows_html}</tbody></table>
<h3>Per predicted class</h3>
<table id="classes"><thead><tr><th>class</th><th>cutouts</th><th>fragile</th>
<th>fraction</th></tr></thead><tbody>{cls_html}</tbody></table>
<h3>Flags</h3>
<table id="flags"><thead><tr><th>flag</th><th>cutouts</th></tr></thead>
<tbody>{flag_html}</tbody></table>
{verdict_html}
<h2 id="gallery-title">Most fragile galaxies</h2>
<p class="meta">Left: the cutout as checked (RGB from i, r, g; asinh stretch), the green circle
marks the pixel of a successful one-pixel attack and the title gives the class before and after.
Right: noise realisation 0 of the check at {float(cfg.get('depth_fraction', 0.1)):g} of the
exposure, same stretch.</p>
<div class="gallery" id="gallery">{gallery_html}</div>
<h2 id="histogram">Noise flip rate</h2>
<div id="flip-rate">{hist_html}</div>
<h2 id="latent">Latent space</h2>
<div id="latent-map">{map_html or '<p class="note">no latent map</p>'}</div>
</body></html>
"""
    output = atomic_write(output, lambda tmp: tmp.write_text(doc, encoding="utf-8"),
                          name="output")
    hist = {"edges": edges.tolist(), "counts": hcounts.tolist()}
    return Report(path=output, counts=counts, gallery=entries, histogram=hist,
                  latent_points=latent_points, notes=notes, figures=figures)
