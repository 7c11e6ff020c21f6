"""Tests of ``galguard report`` / `galguard.report.make_report`: the figures hold what they
should, the HTML is self-contained and renders in headless Chromium."""

import base64
import importlib.util
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from _tiny import fragile_classifier  # tests/ is put on sys.path by conftest.py
from galguard import cli
from galguard.catalog import read_catalog
from galguard.errors import GalguardValueError
from galguard.report import fragility_score, make_report

_spec = importlib.util.spec_from_file_location("_cli_helpers", Path(__file__).with_name(
    "test_cli.py"))
_h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_h)

N = 12
K = 5  # noise realisations


def make_fragile_model(path):
    """The tiny test model with its class logits scaled up and centred, so that single pixels
    and shallower-depth noise flip a good share of its predictions."""
    from galguard.models import save

    return save(fragile_classifier(_h.galaxies(64, seed=1)), path)[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    model = make_fragile_model(d / "fragile.safetensors")
    files = _h.write_files(d / "in", N, seed=7)
    cat = d / "cat.parquet"
    assert cli.main(["check", str(d / "in"), "-o", str(cat), "--model", str(model),
                     "--noise-realisations", str(K), "--chunk-size", "4", "--quiet"]) == 0
    return d, model, files, cat


def _imgs(doc):
    return re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"([^>]*)>', doc)


def _png_array(b64):
    import matplotlib.image as mpimg
    raw = base64.b64decode(b64)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(io.BytesIO(raw), format="png")


def test_report_figures_hold_what_they_should(run, tmp_path):
    d, model, files, cat = run
    t = read_catalog(cat)
    before = t.copy()
    out = tmp_path / "report.html"
    rep = make_report(t, out, gallery=6, max_points=10)
    assert rep.notes == []
    doc = out.read_text(encoding="utf-8")
    # Self-contained: every image is an embedded PNG, nothing is fetched.
    assert not re.search(r'(src|href)="(?!data:)', doc)
    imgs = _imgs(doc)
    assert len(imgs) == 6 + 2  # gallery, histogram, latent map
    for b64, _ in imgs:
        a = _png_array(b64)
        assert a.shape[0] > 50 and a.shape[1] > 50 and a[..., :3].std() > 0.01
    # Counts.
    assert rep.counts["n"] == N and rep.counts["bad"] == 0
    assert rep.counts["fragile"] == int(np.sum(t["fragile"]))
    assert f'data-n="{N}"' in doc
    # Gallery: the 6 most fragile rows, in order, markers where the attack succeeded.
    score = fragility_score(t)
    expect = [r for r in np.argsort(-score, kind="stable") if t["fragile"][r]][:6]
    assert [e["row"] for e in rep.gallery] == [int(r) for r in expect]
    rows_in_html = [int(v) for v in re.findall(r'class="gallery-entry" data-row="(\d+)"', doc)]
    assert rows_in_html == [int(r) for r in expect]
    n_marked = 0
    for e in rep.gallery:
        r = e["row"]
        assert e["id"] == int(t["id"][r])
        if t["onepixel_success"][r]:
            assert e["marker"] == (float(t["onepixel_x"][r]), float(t["onepixel_y"][r]))
            m = re.search(rf'data-row="{r}" data-id="\d+" data-x="([\d.]+)" data-y="([\d.]+)"',
                          doc)
            assert (float(m.group(1)), float(m.group(2))) == e["marker"]
            n_marked += 1
        else:
            assert e["marker"] is None
    assert n_marked >= 1  # this model is fragile: some attacks succeed
    # Histogram: one bin per possible flip rate j/K, counts sum to the rows with a rate.
    assert len(rep.histogram["counts"]) == K + 1
    flip = np.asarray(t["noise_flip_rate"])
    assert sum(rep.histogram["counts"]) == np.isfinite(flip).sum() == N
    for j, c in enumerate(rep.histogram["counts"]):
        assert c == int(np.sum(np.isclose(flip, j / K)))
    m = re.search(r'alt="flip-rate histogram" data-counts="([\d,]+)"', doc)
    assert [int(v) for v in m.group(1).split(",")] == rep.histogram["counts"]
    # Latent map: a sample of max_points good rows.
    assert rep.latent_points == 10
    assert 'data-points="10"' in doc and 'data-method="isomap"' in doc
    _h.assert_same_rows(before, t)  # the catalog table is not modified
    assert dict(before.meta) == dict(t.meta)


def test_tsne_map_and_cli(run, tmp_path, capsys):
    d, model, files, cat = run
    out = tmp_path / "r.html"
    assert cli.main(["report", str(cat), "-o", str(out), "--method", "tsne", "--gallery", "2",
                     "--max-points", "8"]) == cli.EXIT_OK
    doc = out.read_text()
    assert 'data-points="8"' in doc and 'data-method="tsne"' in doc
    assert len(re.findall(r'class="gallery-entry"', doc)) == 2
    assert "wrote" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path / "none.parquet"), "-o",
                     str(tmp_path / "x.html")]) == cli.EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err


def test_missing_sources_and_wrong_model_leave_notes(run, tmp_path):
    d, model, files, cat = run
    t = read_catalog(cat)
    moved = t.copy()
    moved["source"] = [str(tmp_path / "gone" / Path(s).name) for s in t["source"]]
    rep = make_report(moved, tmp_path / "a.html", gallery=3)
    doc = (tmp_path / "a.html").read_text()
    assert len(rep.gallery) == 3 and all(e["marker"] is None for e in rep.gallery)
    assert doc.count('class="gallery-entry missing"') == 3
    assert rep.latent_points == 0 and any("latent map" in n for n in rep.notes)
    assert sum(rep.histogram["counts"]) == N  # the rest of the report is there
    other = _h.make_model(tmp_path / "other.safetensors")
    rep = make_report(t, tmp_path / "b.html", model=str(other))
    assert rep.gallery == [] and rep.latent_points == 0
    assert any("not the catalog's" in n for n in rep.notes)


def test_report_shows_the_exact_verdicts_of_a_certify_run(run, tmp_path):
    d, model, files, cat = run
    rep = make_report(cat, tmp_path / "plain.html", gallery=2, max_points=0)
    doc = (tmp_path / "plain.html").read_text()
    assert rep.counts["onepixel_verdicts"] is None        # no certify: no verdict section
    assert 'id="verdicts"' not in doc and "onepixel_verdicts" not in rep.figures
    assert "threat: pixel" in doc
    cat2 = tmp_path / "certified.parquet"
    assert cli.main(["check", str(d / "in"), "-o", str(cat2), "--model", str(model),
                     "--noise-realisations", str(K), "--threat", "band_pixel", "--preset",
                     "fast", "--certify", "--certify-boxes", "4000", "--quiet"]) in (0, 1)
    t = read_catalog(cat2)
    status = np.asarray(t["onepixel_status"]).astype(str)
    assert set(status) <= {"certified", "flip", "unknown"} and "certified" in status
    out = tmp_path / "r.html"
    rep = make_report(t, out, gallery=N, max_points=0)
    doc = out.read_text(encoding="utf-8")
    v = rep.counts["onepixel_verdicts"]
    assert v["threat"] == "band_pixel" and "threat: band_pixel" in doc
    assert v["total"] == {s: int(np.sum(status == s)) for s in ("certified", "flip", "unknown")}
    assert sum(v["total"].values()) == N
    classes = t.meta["classes"].split(",")
    for c, name in enumerate(classes):
        for s, n in v["per_class"][name].items():
            assert n == int(np.sum((status == s) & (np.asarray(t["pred_label"]) == c)))
            assert f'<td data-class="{name}" data-verdict="{s}">{n}</td>' in doc
    assert v["total"]["flip"] == int(np.sum(t["onepixel_success"]))
    m = re.search(r'alt="one-pixel verdicts" data-certified="(\d+)" data-flip="(\d+)" '
                  r'data-unknown="(\d+)"', doc)
    assert tuple(int(g) for g in m.groups()) == tuple(v["total"].values())
    assert "onepixel_verdicts" in rep.figures
    a = _png_array(re.search(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" '
                             r'alt="one-pixel verdicts"', doc).group(1))
    assert a.shape[0] > 50 and a[..., :3].std() > 0.01
    # every gallery galaxy's caption names its verdict
    shown = re.findall(r'class="gallery-entry" data-row="(\d+)".*?data-verdict="(\w+)"', doc,
                       flags=re.S)
    assert len(shown) == len(rep.gallery) >= 1
    assert all(status[int(r)] == s for r, s in shown)
    assert "one-pixel certified robust</td><td>" in doc


def test_report_argument_errors(run, tmp_path):
    d, model, files, cat = run
    with pytest.raises(GalguardValueError, match="method must be one of"):
        make_report(cat, tmp_path / "x.html", method="umap")
    with pytest.raises(GalguardValueError, match="gallery must be an integer >= 0, got -1"):
        make_report(cat, tmp_path / "x.html", gallery=-1)
    t = read_catalog(cat)
    t.remove_column("fragile")
    with pytest.raises(GalguardValueError, match=r"catalog lacks the column\(s\) \['fragile'\]"):
        make_report(t, tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("CI must install Debian's chromium package (apt-get install -y chromium)")
    pytest.skip("headless Chromium is not installed (apt-get install -y chromium)")


@pytest.mark.slow
@pytest.mark.browser
def test_report_renders_in_headless_chromium(run, tmp_path):
    exe = _chromium()
    d, model, files, cat = run
    out = tmp_path / "report.html"
    make_report(cat, out, gallery=4, max_points=12)
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(base + ["--dump-dom", out.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # The browser parsed the page: the title, tables and every embedded image are in its DOM.
    assert "<title>galguard report</title>" in dom.stdout
    assert len(re.findall(r"<img ", dom.stdout)) == 4 + 2
    assert 'id="counts"' in dom.stdout and 'id="latent-map"' in dom.stdout
    shot = tmp_path / "shot.png"
    r = subprocess.run(base + [f"--screenshot={shot}", "--window-size=1100,1800",
                               "--hide-scrollbars", out.as_uri()], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    import matplotlib.image as mpimg
    px = mpimg.imread(shot)[..., :3]
    assert px.shape[:2] == (1800, 1100)
    # Not blank: the page draws dark text and coloured images on its white background.
    assert px.std() > 0.05
    assert (px.min(axis=2) < 0.2).mean() > 0.005
    colour = px.max(axis=2) - px.min(axis=2)
    assert (colour > 0.3).mean() > 0.005
