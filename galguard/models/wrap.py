"""Your own CNN as a `GalaxyClassifier`: `wrap` any torch module, and rebuild it from a factory.

A wrapped model keeps the user's module as it is (``model.network.module``); galguard adds the
class and band names, the input size, optional frozen preprocessing, and the latent vector (the
module's own ``(latent, logits)`` output, or the output of ``latent_layer`` captured with a
forward hook). `galguard.models.save` writes it with the factory that rebuilds the module;
`galguard.models.load` imports that factory, builds the module and loads the tensors: nothing
is unpickled.
"""

import importlib
import json

import torch
from torch import nn

from .._validate import validate_int
from ..errors import GalguardValueError
from .classifier import GalaxyClassifier, Preprocess

__all__ = ["wrap", "WrappedNetwork", "NoPreprocess", "build_from_factory"]


class NoPreprocess(nn.Module):
    """The identity: for modules that do their own preprocessing (most users' models)."""

    def forward(self, x):
        return x


class WrappedNetwork(nn.Module):
    """A user module as a galguard network: preprocessed images -> ``(latent, logits)``.

    Parameters
    ----------
    module : torch.nn.Module
        Maps (N, C, H, W) float images to logits (N, K) or to ``(latent, logits)``.
    latent_layer : str, optional
        Name of a submodule (``module.named_modules()``) whose output, flattened, is the
        latent vector; None: the module's own latent output, or none.
    """

    def __init__(self, module, latent_layer=None):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise GalguardValueError(f"module must be a torch.nn.Module, got "
                                     f"{type(module).__name__}")
        self.module = module
        self.latent_layer = latent_layer
        self._captured = []
        if latent_layer is not None:
            layers = dict(module.named_modules())
            if not isinstance(latent_layer, str) or latent_layer not in layers or not latent_layer:
                names = [n for n in layers if n][:40]
                raise GalguardValueError(f"latent_layer must name a submodule of the module, got "
                                         f"{latent_layer!r}; available: {names}")
            layers[latent_layer].register_forward_hook(self._capture)

    def _capture(self, _module, _inputs, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        self._captured.append(out)

    def forward(self, x):
        self._captured.clear()
        out = self.module(x)
        latent = None
        if isinstance(out, (tuple, list)):
            if len(out) != 2:
                raise GalguardValueError(f"the module must return logits or (latent, logits), "
                                         f"got a sequence of length {len(out)}")
            latent, logits = out
        else:
            logits = out
        if self.latent_layer is not None:
            if not self._captured:
                raise GalguardValueError(f"latent_layer {self.latent_layer!r} was not run by the "
                                         "module's forward")
            latent = self._captured[-1]
            self._captured.clear()
        if latent is None:
            return logits
        return latent.reshape(latent.shape[0], -1), logits


def _size(input_size):
    if isinstance(input_size, (tuple, list)):
        if len(input_size) != 2:
            raise GalguardValueError(f"input_size must be an int or (H, W), got {input_size!r}")
        h, w = (validate_int("input_size", v, minimum=1, maximum=8192) for v in input_size)
        return h if h == w else (h, w)
    return validate_int("input_size", input_size, minimum=1, maximum=8192)


def _names(name, value):
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")] if "," in value else list(value)
    try:
        value = tuple(value)
    except TypeError:
        value = ()
    if not value or not all(isinstance(v, str) and v for v in value):
        raise GalguardValueError(f"{name} must be a non-empty sequence of names, got {value!r}")
    return value


def wrap(module, *, classes, bands, input_size, preprocess=None, latent_layer=None, name=None):
    """A `GalaxyClassifier` around any torch module mapping (N, C, H, W) images to logits or to
    ``(latent, logits)``.

    Parameters
    ----------
    module : torch.nn.Module
        Your network; it is used as it is (not copied).
    classes, bands : sequence of str
        Class names (in the order of the logits) and band names (in the order of the planes).
    input_size : int or (int, int)
        The cutout size the module takes: an int (square) or (height, width).
    preprocess : Preprocess, optional
        galguard's frozen clip + arcsinh (`Preprocess.from_data` on reference images), applied
        before the module; None when the module does its own.
    latent_layer : str, optional
        Submodule whose output is the latent vector (for modules that return logits only).
    name : str, optional

    Returns
    -------
    GalaxyClassifier
        ``model.network`` is a `WrappedNetwork` holding ``module``.

    Raises
    ------
    GalguardValueError
        For an argument of the wrong kind or value (an unknown ``latent_layer`` lists the
        available ones), or a module whose output on a (1, C, H, W) probe does not have one
        logit per class.
    """
    classes, bands = _names("classes", classes), _names("bands", bands)
    size = _size(input_size)
    if preprocess is None:
        preprocess = NoPreprocess()
    elif not isinstance(preprocess, Preprocess):
        raise GalguardValueError(f"preprocess must be a galguard.models.Preprocess or None, got "
                                 f"{type(preprocess).__name__}")
    net = WrappedNetwork(module, latent_layer)
    model = GalaxyClassifier(net, preprocess, classes=classes, bands=bands, input_size=size,
                             name=name or type(module).__name__)
    was_training = module.training
    try:
        module.eval()
        with torch.inference_mode():
            device = next((p.device for p in module.parameters()), torch.device("cpu"))
            out = model(torch.zeros(1, len(bands), *model.input_hw, device=device))
    except GalguardValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's module failed on its input shape
        raise GalguardValueError(f"module {type(module).__name__} fails on a "
                                 f"(1, {len(bands)}, {', '.join(map(str, model.input_hw))}) "
                                 f"input: "
                                 f"{type(exc).__name__}: {exc}") from None
    finally:
        module.train(was_training)
    logits = out[1] if isinstance(out, tuple) else out
    if logits.ndim != 2 or logits.shape[1] != len(classes):
        raise GalguardValueError(f"module {type(module).__name__} returns logits of shape "
                                 f"{tuple(logits.shape)} for one image; expected (1, "
                                 f"{len(classes)}) for classes {classes}")
    model.set_latent_dim(int(out[0].shape[1]) if isinstance(out, tuple) else None)
    return model


def build_from_factory(spec, kwargs, *, card="the card"):
    """Import ``"package.module:callable"`` and call it with ``kwargs``; the module it returns."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise GalguardValueError(f"{card}: factory must be 'package.module:callable', got "
                                 f"{spec!r}")
    mod_name, attr = spec.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as exc:  # noqa: BLE001 - an import failure of the user's code, named
        raise GalguardValueError(f"{card}: the factory {spec!r} cannot be imported "
                                 f"({type(exc).__name__}: {exc}); install the package that "
                                 "provides it") from None
    fn = mod
    for part in attr.split("."):
        fn = getattr(fn, part, None)
    if not callable(fn):
        raise GalguardValueError(f"{card}: the factory {spec!r} is not a callable")
    if not isinstance(kwargs, dict):
        raise GalguardValueError(f"{card}: factory_kwargs must be a JSON object, got "
                                 f"{type(kwargs).__name__}")
    try:
        module = fn(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's factory failed
        raise GalguardValueError(f"{card}: the factory {spec!r} failed with {kwargs}: "
                                 f"{type(exc).__name__}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise GalguardValueError(f"{card}: the factory {spec!r} returned "
                                 f"{type(module).__name__}, not a torch.nn.Module")
    return module


def check_json(value, name):
    """``value`` if it is JSON-serialisable (and finite)."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise GalguardValueError(f"{name} must be JSON-serialisable, got {value!r} ({exc})") \
            from None
    return json.loads(text)

