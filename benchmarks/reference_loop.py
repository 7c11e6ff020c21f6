"""The DeepAdversaries study's one-pixel attack loop, reimplemented for benchmarking only.

This is what the reference code does (after Su et al.): a numpy differential evolution on one
galaxy at a time, every candidate in the [0, 1] normalised space of the preprocessed image
(position = round(p * 100), clipped to the image), DE rand/1 with F = 0.5 and no crossover,
greedy one-to-one selection, and every candidate run through the network on its own (a batch
of one). It is written here from the description in REFERENCE_FACTS.md, not copied.

It is not part of galguard: it exists so that ``bench_attack.py`` can measure the batched
attack against the loop it replaces, on the same model and galaxies.
"""

import numpy as np
import torch

__all__ = ["reference_attack"]


def _apply(norm_image, cand):
    """Copy of the normalised (C, H, W) image with candidate (x, y, v_0..v_C-1) written in."""
    C, H, W = norm_image.shape
    img = norm_image.clone()
    x = min(int(round(float(cand[0]) * W)), W - 1)
    y = min(int(round(float(cand[1]) * H)), H - 1)
    img[:, y, x] = torch.as_tensor(cand[2:], dtype=img.dtype)
    return img


def _prob(network, img, label):
    latent, logits = network(img[None])
    return float(torch.softmax(logits, dim=1)[0, label])


def reference_attack(network, norm_image, label, *, popsize=400, iterations=100, F=0.5,
                     stop_prob=None, seed=0):
    """Untargeted one-pixel attack on one preprocessed image, one candidate at a time.

    Parameters
    ----------
    network : torch.nn.Module
        Takes normalised (N, C, H, W) images, returns (latent, logits).
    norm_image : torch.Tensor
        (C, H, W) preprocessed image (values about [0.5, 0.9]).
    label : int
        Class to move away from.
    popsize, iterations, F
        The paper's DE settings.
    stop_prob : float or None
        Stop when the best candidate's p(label) falls below this (the paper's untargeted
        variant: 0.05); None stops when the predicted class changes.
    seed : int

    Returns
    -------
    dict
        success, candidate, prob, evaluations, generations.
    """
    rng = np.random.default_rng(seed)
    C = norm_image.shape[0]
    G = 2 + C
    evaluations = 0
    with torch.inference_mode():
        pop = rng.uniform(0.0, 1.0, (popsize, G))
        fit = np.empty(popsize)
        for i in range(popsize):
            fit[i] = _prob(network, _apply(norm_image, pop[i]), label)
            evaluations += 1

        def done(best):
            img = _apply(norm_image, pop[best])
            latent, logits = network(img[None])
            p = torch.softmax(logits, dim=1)[0]
            if stop_prob is not None:
                return float(p[label]) < stop_prob
            return int(p.argmax()) != label

        gen = 0
        best = int(np.argmin(fit))
        success = done(best)
        evaluations += 1
        while not success and gen < iterations:
            gen += 1
            for i in range(popsize):
                r = rng.choice(popsize - 1, 3, replace=False)
                r[r >= i] += 1
                trial = np.clip(pop[r[0]] + F * (pop[r[1]] - pop[r[2]]), 0.0, 1.0)
                f = _prob(network, _apply(norm_image, trial), label)
                evaluations += 1
                if f <= fit[i]:
                    pop[i], fit[i] = trial, f
            best = int(np.argmin(fit))
            success = done(best)
            evaluations += 1
    return {"success": bool(success), "candidate": pop[best].copy(), "prob": float(fit[best]),
            "evaluations": evaluations, "generations": gen}
