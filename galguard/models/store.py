"""Saving and loading models: safetensors weights + a JSON model card, never pickle.

A model ``NAME`` is two files: ``NAME.safetensors`` (every tensor: network weights, the frozen
preprocessing constants and the latent statistics) and ``NAME.json`` (the model card). The card
records the sha256 of the weights file; :func:`load` recomputes it and refuses a mismatch.
Files that hold pickled objects (``torch.save`` archives, ``.pt``/``.pth``/``.pkl``) are refused
before anything is read from them.
"""

import hashlib
import json
import logging
import os
import stat
import struct
from importlib import resources
from pathlib import Path

import numpy as np
from safetensors.torch import load_file, save_file

from ..errors import GalguardValueError
from .classifier import GalaxyClassifier, Preprocess
from .networks import build_network

__all__ = ["available", "load", "save", "weights_dir", "sha256_file", "CARD_FORMAT"]

log = logging.getLogger(__name__)

CARD_FORMAT = "galguard-model-card/1"
_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar", ".zip"}


def weights_dir():
    """Directory of the weights shipped inside the package."""
    return Path(str(resources.files("galguard.models") / "weights"))


def sha256_file(path, *, chunk=1 << 20):
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _index():
    p = weights_dir() / "index.json"
    if not p.exists():
        return {}
    with open(p) as fh:
        return json.load(fh)


def available():
    """Names of the models shipped with galguard (sorted), plus ``"default"`` if one is set.

    Returns
    -------
    list of str
    """
    d = weights_dir()
    names = sorted(p.stem for p in d.glob("*.safetensors") if (d / f"{p.stem}.json").exists())
    if _index().get("default") in names:
        names.append("default")
    return names


def _require_regular(path, what):
    """Only regular files are opened (a FIFO named as weights or card would block forever)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise GalguardValueError(f"{what} {str(path)!r} cannot be read: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise GalguardValueError(f"{what} {str(path)!r} is not a regular file")


def _read_card(path):
    """The model card at ``path``: a JSON object, checked field by field."""
    _require_regular(path, "model card")
    try:
        with open(path, encoding="utf-8") as fh:
            card = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GalguardValueError(f"model card {str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(card, dict):
        raise GalguardValueError(f"model card {str(path)!r} must hold a JSON object, got "
                                 f"{type(card).__name__}")
    return card


def _check_card(card, path):
    """The fields `load` needs, with their types (a clear error naming the card and field)."""
    where = f"model card {str(path)!r}"
    for key in ("architecture", "classes", "bands", "input_size", "sha256"):
        if key not in card:
            raise GalguardValueError(f"{where} lacks the key {key!r}")
    for key in ("classes", "bands"):
        v = card[key]
        if isinstance(v, str) and key == "bands":
            v = list(v)
        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
            raise GalguardValueError(f"{where}: {key} must be a non-empty list of names, got "
                                     f"{card[key]!r}")
    for key, lo in (("input_size", 1 if card.get("architecture") == "wrapped" else 8),
                    ("latent_dim", 1)):
        v = card.get(key, 256 if key == "latent_dim" else None)
        if card.get("architecture") == "wrapped":
            if key == "latent_dim" and v is None:
                continue
            if key == "input_size" and isinstance(v, list) and len(v) == 2:
                if all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 8192
                       for x in v):
                    continue
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= 1 << 20:
            raise GalguardValueError(f"{where}: {key} must be an integer in [{lo}, {1 << 20}], "
                                     f"got {v!r}")
    if not isinstance(card["architecture"], str):
        raise GalguardValueError(f"{where}: architecture must be a name, got "
                                 f"{card['architecture']!r}")
    if not isinstance(card["sha256"], str):
        raise GalguardValueError(f"{where}: sha256 must be a hex string, got {card['sha256']!r}")


def _safetensors_layout(path, head):
    """True when ``path`` starts as a safetensors file does: a u64 header length, then that many
    bytes of a JSON object."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    if not 0 < n <= min(path.stat().st_size - 8, 100 << 20):
        return False
    with open(path, "rb") as fh:
        fh.seek(8)
        raw = fh.read(n)
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def _refuse_pickle(path):
    """Raise if ``path`` is, by name or by content, a pickle or a torch.save (zip) archive."""
    path = Path(path)
    _require_regular(path, "weights")
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise GalguardValueError(
            f"refusing to load {str(path)!r}: {path.suffix} files hold pickled Python objects, "
            f"which can execute code; galguard loads only .safetensors weights with a .json card")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if _safetensors_layout(path, head):
        return  # read by safetensors, which never unpickles (its header length, a u64, may
        #         well start with byte 0x80 or "(")
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04" or head[:1] in (b"(", b"]", b"}"):
        raise GalguardValueError(
            f"refusing to load {str(path)!r}: it holds pickled objects (pickle or torch.save "
            f"archive), which can execute code; galguard loads only .safetensors weights")
    if len(head) < 9:
        raise GalguardValueError(f"{str(path)!r} is not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", head[:8])
    if n > path.stat().st_size - 8 or head[8:9] != b"{":
        raise GalguardValueError(f"{str(path)!r} is not a safetensors file (bad header)")


def _resolve(name_or_path):
    """-> (weights path, card path)."""
    if isinstance(name_or_path, str) and "/" not in name_or_path and "\\" not in name_or_path \
            and not name_or_path.endswith((".json", ".safetensors")) \
            and Path(name_or_path).suffix.lower() not in _PICKLE_SUFFIXES:
        name = name_or_path
        if name == "default":
            name = _index().get("default")
            if name is None:
                raise GalguardValueError("name_or_path 'default': no default model is shipped")
        d = weights_dir()
        w, c = d / f"{name}.safetensors", d / f"{name}.json"
        if not (w.exists() and c.exists()):
            raise GalguardValueError(
                f"name_or_path must be one of {available()} or a path to a .safetensors file "
                f"with its .json card, got {name_or_path!r}")
        return w, c
    try:
        p = Path(name_or_path)
    except TypeError:
        raise GalguardValueError(
            f"name_or_path must be a model name or a path, got {type(name_or_path).__name__}") \
            from None
    if not p.exists():
        raise GalguardValueError(f"name_or_path {str(p)!r} does not exist")
    if p.is_dir():
        raise GalguardValueError(
            f"name_or_path {str(p)!r} is a directory; give the .safetensors file or its .json card")
    if p.suffix.lower() == ".json":
        card_path = p
        card = _read_card(p)
        name = card.get("weights_file", p.with_suffix(".safetensors").name)
        if not isinstance(name, str) or os.path.basename(name) != name:
            raise GalguardValueError(f"model card {str(p)!r}: weights_file must be a file name "
                                     f"beside the card, got {name!r}")
        w = p.parent / name
    else:
        _refuse_pickle(p)
        w, card_path = p, p.with_suffix(".json")
        if not card_path.exists():
            raise GalguardValueError(
                f"name_or_path {str(p)!r} has no model card: expected {str(card_path)!r}")
    if not w.exists():
        raise GalguardValueError(f"the card {str(card_path)!r} names weights {str(w)!r}, which "
                                 f"do not exist")
    return w, card_path


def read_card(name_or_path="default"):
    """The model card (a dict) of a shipped model name or a saved model, without its weights."""
    _, card_path = _resolve(name_or_path)
    return _read_card(card_path)


def load(name_or_path="default", *, device="cpu"):
    """Load a model: a shipped one by name, or a ``.safetensors`` file with its ``.json`` card.

    Parameters
    ----------
    name_or_path : str or path-like, optional
        A name from :func:`available` (``"default"`` is the recommended model), or the path to a
        ``NAME.safetensors`` file (its card ``NAME.json`` must sit beside it) or to the card.
    device : str or torch.device, optional

    Returns
    -------
    GalaxyClassifier
        In evaluation mode, on ``device``, with ``.card``, ``.name``, ``.sha256`` and
        ``.latent_stats`` set.

    Raises
    ------
    GalguardValueError
        If the name is unknown, the file is a pickle (``.pt``/``.pth`` or any file holding pickled
        objects), the weights' sha256 differs from the card's, or the card and weights disagree.

    Notes
    -----
    Nothing is unpickled: tensors are read with ``safetensors`` and the card with ``json``.
    """
    w, card_path = _resolve(name_or_path)
    _refuse_pickle(w)
    card = _read_card(card_path)
    _check_card(card, card_path)
    digest = sha256_file(w)
    if digest != card["sha256"]:
        raise GalguardValueError(
            f"refusing to load {str(w)!r}: its sha256 is {digest} but its card "
            f"{str(card_path)!r} records {card['sha256']}; the file was modified or corrupted")
    try:
        tensors = load_file(str(w), device="cpu")
    except Exception as exc:  # noqa: BLE001 - any safetensors problem, named
        raise GalguardValueError(f"weights {str(w)!r} are not a valid safetensors file "
                                 f"({type(exc).__name__}: {exc})") from None
    if card["architecture"] == "wrapped":
        model = _load_wrapped(card, card_path, w, tensors, digest)
        log.info("loaded wrapped model %s (%s) sha256 %s", model.name, w, digest[:12])
        return model.to(device)
    for key in ("preprocess.lo", "preprocess.hi", "preprocess.scale"):
        if key not in tensors:
            raise GalguardValueError(f"weights {str(w)!r} lack the tensor {key!r} (card "
                                     f"{str(card_path)!r})")
    try:
        net = build_network(card["architecture"], in_channels=len(card["bands"]),
                            n_classes=len(card["classes"]), input_size=int(card["input_size"]),
                            latent_dim=int(card.get("latent_dim", 256)),
                            width=_card_width(card))
        pre = Preprocess(tensors["preprocess.lo"], tensors["preprocess.hi"],
                         tensors["preprocess.scale"])
    except GalguardValueError as exc:
        raise GalguardValueError(f"model card {str(card_path)!r}: {exc}") from None
    except (TypeError, ValueError, RuntimeError) as exc:
        raise GalguardValueError(f"model card {str(card_path)!r} and weights {str(w)!r} do "
                                 f"not make a model: {type(exc).__name__}: {exc}") from None
    pc = card.get("preprocessing", {})
    for key, t in (("clip_lo", pre.lo), ("clip_hi", pre.hi), ("scale", pre.scale)):
        if key in pc and not np.allclose(pc[key], t.numpy(), rtol=1e-6, atol=0):
            raise GalguardValueError(
                f"model card {str(card_path)!r}: preprocessing {key} {pc[key]} differs from the "
                f"weights' {t.tolist()}")
    stats = _latent_stats_from(tensors, w)
    try:
        model = GalaxyClassifier(net, pre, classes=card["classes"], bands=card["bands"],
                                 input_size=card["input_size"], card=card, latent_stats=stats,
                                 name=str(card.get("name", w.stem)), sha256=digest)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise GalguardValueError(f"model card {str(card_path)!r} and weights {str(w)!r} do "
                                 f"not make a model: {exc}") from None
    _attach_ood(model, tensors, w)
    try:
        model.load_state_dict(tensors, strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise GalguardValueError(f"weights {str(w)!r} do not match the architecture in "
                                 f"{str(card_path)!r}: {exc}") from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    log.info("loaded model %s (%s) sha256 %s", model.name, w, digest[:12])
    return model.to(device)


def _attach_ood(model, tensors, w):
    """Register the ``ood__<part>__<key>`` tensors of a weights file as buffers (the card's
    ``ood`` entry names the scorer), so that the strict state-dict load accepts them."""
    keys = [k for k in tensors if k.startswith("ood__")]
    if not keys:
        return
    if keys and not (model.card.get("ood") or {}).get("scorer"):
        raise GalguardValueError(f"weights {str(w)!r} hold out-of-distribution tensors but the "
                                 f"card has no 'ood' entry naming the scorer")
    state = {}
    for k in keys:
        parts = k.split("__")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise GalguardValueError(f"weights {str(w)!r}: bad tensor name {k!r}")
        state.setdefault(parts[1], {})[parts[2]] = tensors[k]
    model.set_ood_reference(model.card["ood"]["scorer"], state,
                            {k: v for k, v in model.card["ood"].items() if k != "scorer"})


def _latent_stats_from(tensors, w):
    if "latent_class_means" not in tensors:
        return None
    for key in ("latent_precision", "latent_centroid_separation"):
        if key not in tensors:
            raise GalguardValueError(f"weights {str(w)!r} lack the tensor {key!r}")
    return {"class_means": tensors["latent_class_means"],
            "precision": tensors["latent_precision"],
            "centroid_separation": tensors["latent_centroid_separation"]}


def _load_wrapped(card, card_path, w, tensors, digest):
    """A wrapped user model: its factory builds the module, then the tensors are loaded."""
    from .wrap import build_from_factory, wrap

    where = f"model card {str(card_path)!r}"
    if "factory" not in card:
        raise GalguardValueError(f"{where} lacks the key 'factory' (how to build the module)")
    module = build_from_factory(card["factory"], card.get("factory_kwargs", {}), card=where)
    pre = None
    if card.get("preprocess") == "galguard":
        for key in ("preprocess.lo", "preprocess.hi", "preprocess.scale"):
            if key not in tensors:
                raise GalguardValueError(f"weights {str(w)!r} lack the tensor {key!r} ({where})")
        pre = Preprocess(tensors["preprocess.lo"], tensors["preprocess.hi"],
                         tensors["preprocess.scale"])
    model = wrap(module, classes=card["classes"], bands=card["bands"],
                 input_size=card["input_size"], preprocess=pre,
                 latent_layer=card.get("latent_layer"), name=str(card.get("name", w.stem)))
    stats = _latent_stats_from(tensors, w)
    if stats is not None:
        model.set_latent_stats(stats)
    model.card = dict(card)
    _attach_ood(model, tensors, w)
    want = model.state_dict()
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    if missing or extra:
        raise GalguardValueError(
            f"weights {str(w)!r} do not fit the module built by {card['factory']!r} ({where}): "
            f"missing tensors {missing[:8]}, unexpected tensors {extra[:8]}")
    for key, t in want.items():
        if tuple(t.shape) != tuple(tensors[key].shape):
            raise GalguardValueError(
                f"weights {str(w)!r}: tensor {key!r} has shape {tuple(tensors[key].shape)} but "
                f"the module built by {card['factory']!r} needs {tuple(t.shape)} ({where})")
    model.load_state_dict(tensors, strict=True)
    model.card, model.sha256 = card, digest
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def save(model, path, *, card=None, factory=None, factory_kwargs=None):
    """Write ``model`` as ``path`` (.safetensors) and its card (same stem, .json).

    Parameters
    ----------
    model : GalaxyClassifier
    path : path-like
        Target ``NAME.safetensors`` (the suffix is added if missing).
    card : dict, optional
        Card entries (default ``model.card``); architecture, classes, bands, input size,
        preprocessing constants,
        weights file name and sha256 are filled in (and overwrite ``card``'s).
    factory : str, optional
        For a model made by `galguard.models.wrap`: ``"package.module:callable"``, the
        importable function that builds the module (your own installed code); required there.
        `load` imports it, calls it with ``factory_kwargs`` and loads the tensors.
    factory_kwargs : dict, optional
        JSON-serialisable keyword arguments of ``factory``.

    Returns
    -------
    (Path, Path)
        Weights and card paths.
    """
    from .wrap import WrappedNetwork, build_from_factory, check_json

    if not isinstance(model, GalaxyClassifier):
        raise GalguardValueError(f"model must be a GalaxyClassifier, got {type(model).__name__}")
    wrapped = isinstance(model.network, WrappedNetwork)
    if wrapped:
        if factory is None:
            raise GalguardValueError("factory must be given to save a wrapped model: "
                                     "'package.module:callable', the function that builds it")
        factory_kwargs = check_json({} if factory_kwargs is None else factory_kwargs,
                                    "factory_kwargs")
        build_from_factory(factory, factory_kwargs, card="factory")  # fails now, not at load
    elif factory is not None:
        raise GalguardValueError("factory is only for wrapped models (galguard.models.wrap); "
                                 f"{type(model.network).__name__} is built by its architecture")
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": CARD_FORMAT})
    path.chmod(0o644)  # readable like the rest of an installed package
    arch = "wrapped" if wrapped else {"ConvNet": "convnet", "ResNet18": "resnet18"}.get(
        type(model.network).__name__)
    if card is None:
        card = model.card
    out = dict(card or {})
    out.pop("sha256", None)
    out.update({
        "format": CARD_FORMAT,
        "name": out.get("name") or (model.name if wrapped else None) or path.stem,
        "architecture": arch,
        "classes": list(model.classes),
        "bands": list(model.bands),
        "input_size": (list(model.input_size) if isinstance(model.input_size, tuple)
                       else model.input_size),
        "latent_dim": model.latent_dim,
        **({"width": model.network.width} if hasattr(model.network, "width") else {}),
        "preprocessing": {
            "method": "clip to per-band [clip_lo, clip_hi]; y = (arcsinh(scale * x) + 1) / 2",
            **(card or {}).get("preprocessing", {}),
        },
        "weights_file": path.name,
        "sha256": sha256_file(path),
    })
    if isinstance(model.preprocess, Preprocess):
        out["preprocessing"].update(model.preprocess.constants())
    if wrapped:
        out.update({"factory": factory, "factory_kwargs": factory_kwargs,
                    "latent_layer": model.network.latent_layer,
                    "preprocess": "galguard" if isinstance(model.preprocess, Preprocess)
                    else "none"})
        if not isinstance(model.preprocess, Preprocess):
            out.pop("preprocessing", None)
    card_path = path.with_suffix(".json")
    with open(card_path, "w") as fh:
        json.dump(out, fh, indent=2, sort_keys=False)
        fh.write("\n")
    model.card, model.name, model.sha256 = out, out["name"], out["sha256"]
    return path, card_path


def _card_width(card):
    """A ResNet18 card's ``width`` (None: the default 64, as cards before it was recorded)."""
    width = card.get("width")
    if width is None:
        return None
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 4096:
        raise GalguardValueError(f"width must be an int in [1, 4096], got {width!r}")
    return width
