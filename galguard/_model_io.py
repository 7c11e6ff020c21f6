"""What every check needs from a model: its outputs parsed, its device, and eval mode.

A galguard model maps raw (N, C, H, W) images to logits or to ``(latent, logits)``. These
helpers are the one place that knows it.
"""

import contextlib

import torch

from .errors import GalguardValueError

__all__ = ["model_logits", "model_latent", "forward_probs", "model_device", "evaluating",
           "validate_device"]


def model_logits(output):
    """Return the logits from a model output that is either logits or ``(latent, logits)``.

    Parameters
    ----------
    output : torch.Tensor or tuple or list
        What the model returned.

    Returns
    -------
    torch.Tensor
        The (N, K) logits.
    """
    if isinstance(output, (tuple, list)):
        if len(output) != 2:
            raise GalguardValueError(
                f"model output must be logits or (latent, logits), got a sequence of length "
                f"{len(output)}")
        output = output[1]
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise GalguardValueError(f"model logits must have shape (N, K), got {shape}")
    return output


def model_latent(output):
    """Return the (N, D) latent from a model output ``(latent, logits)``, or None for logits."""
    if isinstance(output, (tuple, list)) and len(output) == 2:
        return output[0].reshape(output[0].shape[0], -1)
    return None


def forward_probs(model, x, batch_size):
    """``(latent or None, probs)`` of ``model`` on ``x`` in batches of ``batch_size``.

    The latent is None when the model returns bare logits. Call it under `evaluating`.
    """
    lat, probs = [], []
    for i in range(0, x.shape[0], batch_size):
        out = model(x[i:i + batch_size])
        probs.append(torch.softmax(model_logits(out).float(), dim=1))
        z = model_latent(out)
        lat.append(None if z is None else z.float())
    if not probs:
        return None, None
    latent = None if any(z is None for z in lat) else torch.cat(lat)
    return latent, torch.cat(probs)


def model_device(model):
    """The device of the model's first parameter or buffer (CPU for a module with neither)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def evaluating(model):
    """Run a block with ``model`` in eval mode under `torch.inference_mode`; the model's mode
    is restored afterwards, also when the block raises."""
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


def validate_device(device, *, name="device"):
    """``device`` as a `torch.device` that exists on this machine (None stays None)."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise GalguardValueError(f"{name} must be a torch device such as 'cpu', 'cuda' or "
                                 f"'cuda:1', got {device!r}") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise GalguardValueError(f"{name} {device!r}: no CUDA GPU is available here")
        if dev.index is not None and dev.index >= n:
            raise GalguardValueError(f"{name} {device!r}: this machine has {n} CUDA GPU(s)")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise GalguardValueError(f"{name} must be 'cpu' or a CUDA device, got {device!r}")
    return dev
