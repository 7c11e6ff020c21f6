"""Exact one-pixel verdicts: prove that no single pixel inside the bounds can flip a galaxy.

For each galaxy and each pixel position, the logits are bounded over the whole box of that
pixel's values (per band [lo, hi]) by interval bound propagation through the pixel's *cone*:
the windows that delta inference (`galguard.robustness._incremental`) plans for a change at that
position, then the dense rest of the network. Outside its window every activation is the clean
image's, exactly, so the intervals are only as wide as the change's own reach. A position whose
bounds prove that the predicted class stays on top (the lower bound of ``logit[pred] -
logit[j]`` exceeds a stated floating-point margin for every other class j) is *settled*.
Unsettled boxes are split (bisection of their widest band), their corners and centres are
evaluated exactly (a flip there is a real flip, re-verified with the full model), and the
halves bounded again, until every box is settled (the galaxy is **certified**: no pixel value
inside the bounds can change its class), a flip is found (**flip**), or the galaxy's budget of
box evaluations runs out (**unknown**).

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
single-band change), not the other way round.
"""

import dataclasses
import logging
import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ._incremental import (_NOPAD, _POINTWISE_FUNCTIONS, _POINTWISE_METHODS, _POINTWISE_MODULES,
                           IncrementalEvaluator, _arg, _describe, _is_flatten, _write,
                           _write_inside)

__all__ = ["certify_onepixel", "CertifyResult", "THREATS", "Unsupported"]

log = logging.getLogger(__name__)

THREATS = ("pixel", "band_pixel")

#: activations with one minimum: name -> argmin
_QUASICONVEX_MODULES = {nn.GELU: -0.7517916, nn.SiLU: -1.2784645, nn.Mish: -1.1923546,
                        nn.Hardswish: -1.5}
_QUASICONVEX_FUNCTIONS = {F.gelu: -0.7517916, F.silu: -1.2784645, F.mish: -1.1923546,
                          F.hardswish: -1.5, torch.abs: 0.0, torch.square: 0.0}
_QUASICONVEX_METHODS = {"abs": 0.0, "square": 0.0}
_NOT_MONOTONE_FUNCTIONS = {torch.sinh: False}   # (sinh is monotone; listed for clarity)
_STRUCT_METHODS = {"flatten", "view", "reshape", "contiguous", "float", "clone", "squeeze",
                   "unsqueeze", "permute", "transpose"}
_STRUCT_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze,
                     torch.permute, torch.transpose}


class Unsupported(Exception):
    """An op that interval bound propagation has no rule for."""


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
        the bounds without splitting.
    boxes : numpy.ndarray
        (B,) int64 boxes bounded (the work spent).
    reason : list of str
        Per galaxy: why it is "unknown" ("" otherwise).
    threat : str
        The threat model.
    """

    status: list
    x: np.ndarray
    y: np.ndarray
    values: np.ndarray
    settled: np.ndarray
    boxes: np.ndarray
    reason: list
    threat: str

    @property
    def certified(self):
        """(B,) bool: galaxies proved robust."""
        return np.array([s == "certified" for s in self.status], dtype=bool)


# ---------------------------------------------------------------------------------------------
class _IState:
    """An interval window: lower and upper values (n, C, h, w) at origins (oy, ox) (n,)."""

    __slots__ = ("lo", "hi", "oy", "ox")

    def __init__(self, lo, hi, oy, ox):
        self.lo, self.hi, self.oy, self.ox = lo, hi, oy, ox


class _IFull:
    """An interval over whole values (n, ...)."""

    __slots__ = ("lo", "hi")

    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi


class IntervalEvaluator:
    """Bounds of one-pixel boxes through an `IncrementalEvaluator`'s plan."""

    def __init__(self, inc):
        self.inc = inc
        self.abs_weights = {}

    def _absw(self, key, w):
        if key not in self.abs_weights:
            self.abs_weights[key] = w.abs()
        return self.abs_weights[key]

    def margins(self, b, ys, xs, lo, hi, labels):
        """Lower bounds (n, K) of ``logit[label] - logit[j]`` over the boxes: candidate image
        ``b`` (n,), pixel ``ys, xs`` (n,), per-band value bounds ``lo, hi`` (n, C); +inf at
        j == label. Raises `Unsupported` for an op without a rule."""
        inc = self.inc
        env = {}
        n = b.shape[0]
        out = inc.out
        for node in inc.nodes:
            p = inc.plans[node]
            if p.mode == "const":
                env[node] = inc.consts[node]
            elif p.mode == "skip":
                env[node] = None
            elif p.kind == "input":
                env[node] = _IState(lo.reshape(n, -1, 1, 1), hi.reshape(n, -1, 1, 1), ys, xs)
            elif p.kind == "flatlin":
                env[node] = self._flatlin(node, p, env, b, n)
            elif node is out and self._is_linear(node):
                return self._linear_margins(node, env, b, labels)
            elif p.mode == "window":
                env[node] = self._window(node, p, env, b, ys, xs, n)
            elif p.kind == "gap":
                env[node] = self._gap(node, p, env, b, n)
            elif p.kind == "shape":
                env[node] = inc._call(node, self._dense_args(node, env, b, n, meta=True))
            else:
                env[node] = self._dense(node, env, b, n)
        v = env[out]
        if not isinstance(v, _IFull):
            raise Unsupported("the logits are not an interval")
        lab = labels[:, None]
        lo_p = torch.gather(v.lo, 1, lab)
        m = lo_p - v.hi
        return m.scatter(1, lab, float("inf"))

    # -- helpers
    def _is_linear(self, node):
        inc = self.inc
        if node.op == "call_module":
            return isinstance(inc.modules[node.target], nn.Linear)
        return node.op == "call_function" and node.target is F.linear

    def _linear_params(self, node, env):
        inc = self.inc
        if node.op == "call_module":
            m = inc.modules[node.target]
            return m.weight, m.bias
        w = _arg(node, 1, "weight", None)
        bias = _arg(node, 2, "bias", None)
        w = env[w] if isinstance(w, fx.Node) else w
        bias = env[bias] if isinstance(bias, fx.Node) else bias
        if isinstance(w, (_IFull, _IState)) or isinstance(bias, (_IFull, _IState)):
            raise Unsupported(f"node {node.name!r}: linear weights depend on the image")
        return w, bias

    def _linear_margins(self, node, env, b, labels):
        src = node.args[0]
        z = self._full(src, env[src], b)
        w, bias = self._linear_params(node, env)
        c = (z.lo + z.hi) / 2
        r = (z.hi - z.lo) / 2
        d = w[labels][:, None, :] - w[None, :, :]                      # (n, K, D)
        lb = torch.einsum("nkd,nd->nk", d, c) - torch.einsum("nkd,nd->nk", d.abs(), r)
        if bias is not None:
            lb = lb + (bias[labels][:, None] - bias[None, :])
        return lb.scatter(1, labels[:, None], float("inf"))

    def _full(self, node, v, b):
        if isinstance(v, _IFull):
            return v
        if isinstance(v, _IState):
            return self._materialise(node, v, b)
        if isinstance(v, torch.Tensor):
            return _IFull(v, v)
        raise Unsupported(f"node {node.name!r}: no interval")

    def _materialise(self, node, st, b):
        inc = self.inc
        H, W = inc.plans[node].shape[2:]
        lo = inc.padded[node, _NOPAD][:, :, :H, :W].index_select(0, b)
        hi = lo.clone()
        _write_inside(lo, st.lo, st.oy, st.ox)
        _write_inside(hi, st.hi, st.oy, st.ox)
        return _IFull(lo, hi)

    def _dense_args(self, node, env, b, n, meta=False):
        def load(a):
            v = env[a]
            if isinstance(v, (_IState, _IFull)):
                shape = (n,) + tuple(self.inc.plans[a].shape[1:])
                return torch.empty(shape, device="meta")
            return v

        return fx.node.map_arg(node.args, load), fx.node.map_arg(node.kwargs, load)

    def _region(self, src, st, b, gy, gx, h, w, spec, inside):
        """Interval of `src`'s changed map on regions (gy, gx, h, w) -> (lo, hi)."""
        inc = self.inc
        if inside:
            lo = inc._region(src, spec, b, gy, gx, h, w)
            hi = lo.clone()
            _write_inside(lo, st.lo, st.oy - gy, st.ox - gx)
            _write_inside(hi, st.hi, st.oy - gy, st.ox - gx)
            return lo, hi
        lo = inc._region(src, spec, b, gy, gx, h + 1, w + 1)
        hi = lo.clone()
        _write(lo, st.lo, st.oy - gy, st.ox - gx)
        _write(hi, st.hi, st.oy - gy, st.ox - gx)
        return lo[:, :, :h, :w].contiguous(), hi[:, :, :h, :w].contiguous()

    def _window(self, node, p, env, b, ys, xs, n):
        inc = self.inc
        oy, ox = inc._origins(node, ys, xs)
        h, w = p.ay.win, p.ax.win
        if p.kind == "pointwise":
            src = next(a for a in node.all_input_nodes if isinstance(env[a], _IState))
            st = env[src]
            lo, hi = self._pointwise(node, env, src, st.lo, st.hi)
            return _IState(lo, hi, st.oy, st.ox)
        if p.kind in ("join", "cat"):
            vals = {}
            for a in node.all_input_nodes:
                if isinstance(env[a], _IState):
                    vals[a] = _IFull(*self._region(a, env[a], b, oy, ox, h, w, _NOPAD,
                                                   bool(p.inside.get(a))))
            out = self._join(node, env, vals)
            return _IState(out.lo, out.hi, oy, ox)
        prm = p.params
        src = node.all_input_nodes[0]
        (pt, _), (pl, _) = prm["pads"]
        (kh, kw), (sh, sw), (dh, dw) = prm["kernel"], prm["stride"], prm["dilation"]
        gh = (h - 1) * sh + dh * (kh - 1) + 1
        gw = (w - 1) * sw + dw * (kw - 1) + 1
        gy, gx = oy * sh - pt, ox * sw - pl
        spec = prm["pads"][0] + prm["pads"][1] + (float("-inf") if p.kind == "maxpool" else 0.0,)
        lo, hi = self._region(src, env[src], b, gy, gx, gh, gw, spec, bool(p.inside.get(src)))
        if p.kind == "conv":
            c, r = (lo + hi) / 2, (hi - lo) / 2
            oc = F.conv2d(c, prm["weight"], prm["bias"], prm["stride"], 0, prm["dilation"],
                          prm["groups"])
            orr = F.conv2d(r, self._absw(node, prm["weight"]), None, prm["stride"], 0,
                           prm["dilation"], prm["groups"])
            return _IState(oc - orr, oc + orr, oy, ox)
        if p.kind == "maxpool":
            f = lambda t: F.max_pool2d(t, prm["kernel"], prm["stride"], 0, prm["dilation"])  # noqa: E731
        else:
            f = lambda t: F.avg_pool2d(t, prm["kernel"], prm["stride"], 0)  # noqa: E731
        return _IState(f(lo), f(hi), oy, ox)

    def _flatlin(self, node, p, env, b, n):
        inc = self.inc
        src = p.params["src"]
        st = env[src]
        lin_clean = inc.clean[node].index_select(0, b)
        h, w = st.lo.shape[2:]
        clean = inc._region(src, _NOPAD, b, st.oy, st.ox, h, w)
        c = ((st.lo + st.hi) / 2 - clean).permute(0, 2, 3, 1).reshape(n, -1)
        r = ((st.hi - st.lo) / 2).permute(0, 2, 3, 1).reshape(n, -1)
        Wp = inc.flat_weights[node]
        Wa = self._absw(("flat", node), Wp)
        Ws = inc.plans[src].shape[3]
        key = st.oy * Ws + st.ox
        order = torch.argsort(key, stable=True)
        uniq, counts = torch.unique_consecutive(key[order], return_counts=True)
        c, r = c[order], r[order]
        mid = lin_clean[order].clone()
        rad = torch.zeros_like(mid)
        start = 0
        for kk, cnt in zip(uniq.tolist(), counts.tolist()):
            y0, x0 = divmod(kk, Ws)
            blk = Wp[y0:y0 + h, x0:x0 + w].reshape(-1, Wp.shape[3])
            ablk = Wa[y0:y0 + h, x0:x0 + w].reshape(-1, Wp.shape[3])
            mid[start:start + cnt] += c[start:start + cnt] @ blk
            rad[start:start + cnt] += r[start:start + cnt] @ ablk
            start += cnt
        lo = torch.empty_like(mid)
        hi = torch.empty_like(mid)
        lo[order] = mid - rad
        hi[order] = mid + rad
        return _IFull(lo, hi)

    def _gap(self, node, p, env, b, n):
        inc = self.inc
        src = p.params["src"]
        st = env[src]
        out = inc.clean[node].index_select(0, b)
        Hs, Ws = inc.plans[src].shape[2:]
        h, w = st.lo.shape[2:]
        clean = inc._region(src, _NOPAD, b, st.oy, st.ox, h, w)
        dlo = (st.lo - clean).sum(dim=(2, 3)) / (Hs * Ws)
        dhi = (st.hi - clean).sum(dim=(2, 3)) / (Hs * Ws)
        return _IFull(out + dlo.reshape(out.shape), out + dhi.reshape(out.shape))

    # -- rules on values
    def _pointwise(self, node, env, src, lo, hi):
        """An elementwise op of one interval argument `src` (the others constants)."""
        inc = self.inc
        xstar = None
        if node.op == "call_module":
            m = inc.modules[node.target]
            for cls, xs in _QUASICONVEX_MODULES.items():
                if isinstance(m, cls):
                    xstar = xs
            if isinstance(m, nn.PReLU) and bool((m.weight < 0).any()):
                raise Unsupported(f"node {node.name!r}: PReLU with negative slopes")
            if not (isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d) + _POINTWISE_MODULES)):
                raise Unsupported(f"node {node.name!r}: {type(m).__name__} has no bound rule")
        elif node.op == "call_function":
            t = node.target
            xstar = _QUASICONVEX_FUNCTIONS.get(t)
            if t in (F.leaky_relu,) and _arg(node, 1, "negative_slope", 0.01) < 0:
                raise Unsupported(f"node {node.name!r}: leaky ReLU with a negative slope")
            if t in (operator.truediv, torch.div) and node.args and node.args[0] is not src:
                raise Unsupported(f"node {node.name!r}: division by an interval")
            if t in (torch.sqrt, torch.log) or not (
                    t in _POINTWISE_FUNCTIONS or t in _BINARY_CONST or t is F.batch_norm):
                raise Unsupported(f"node {node.name!r}: {_describe(node, inc.modules)} has no "
                                  "bound rule")
        else:
            xstar = _QUASICONVEX_METHODS.get(node.target)
            if node.target not in _POINTWISE_METHODS and node.target not in _BINARY_CONST_METHODS:
                raise Unsupported(f"node {node.name!r}: method {node.target!r} has no bound rule")
            if node.target in ("div", "div_") and node.args[0] is not src:
                raise Unsupported(f"node {node.name!r}: division by an interval")
        fl = self._call_with(node, env, {src: lo})
        fh = self._call_with(node, env, {src: hi})
        out_lo, out_hi = torch.minimum(fl, fh), torch.maximum(fl, fh)
        if xstar is not None:
            mid = torch.clamp(torch.full_like(lo, xstar), lo, hi)
            out_lo = torch.minimum(out_lo, self._call_with(node, env, {src: mid}))
        return out_lo, out_hi

    def _call_with(self, node, env, subst):
        inc = self.inc

        def load(a):
            if a in subst:
                return subst[a]
            v = env[a]
            if isinstance(v, (_IState, _IFull, _SState, _SFull)):
                raise Unsupported(f"node {node.name!r}: more than one interval argument")
            return v

        args = fx.node.map_arg(node.args, load)
        kwargs = fx.node.map_arg(node.kwargs, load)
        if node.op == "call_module" and getattr(inc.modules[node.target], "inplace", False):
            args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
        if node.op == "call_method" and node.target.endswith("_"):
            args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
        return inc._call(node, (args, kwargs))

    def _join(self, node, env, vals):
        """An op of several interval arguments `vals` (node -> _IFull)."""
        t = node.target
        if node.op == "call_method":
            t = {"add": torch.add, "add_": torch.add, "sub": torch.sub, "sub_": torch.sub,
                 "mul": torch.mul, "mul_": torch.mul, "maximum": torch.maximum,
                 "minimum": torch.minimum}.get(t)
        if t in (torch.cat, torch.concat):
            parts = _arg(node, 0, "tensors", ())
            dim = _arg(node, 1, "dim", 0)
            los = [vals[a].lo if a in vals else self._const(a, env) for a in parts]
            his = [vals[a].hi if a in vals else self._const(a, env) for a in parts]
            return _IFull(torch.cat(los, dim), torch.cat(his, dim))
        if len(vals) == 1:
            (a, v), = vals.items()
            lo, hi = self._pointwise(node, env, a, v.lo, v.hi)
            return _IFull(lo, hi)
        a, c = [x for x in node.args if isinstance(x, fx.Node)][:2]
        if not (a in vals and c in vals):
            raise Unsupported(f"node {node.name!r}: join of intervals and other values")
        if any(k == "alpha" for k in node.kwargs):
            raise Unsupported(f"node {node.name!r}: alpha")
        x, y = vals[a], vals[c]
        if t in (operator.add, torch.add, operator.iadd):
            return _IFull(x.lo + y.lo, x.hi + y.hi)
        if t in (operator.sub, torch.sub, operator.isub):
            return _IFull(x.lo - y.hi, x.hi - y.lo)
        if t in (operator.mul, torch.mul, operator.imul):
            p = torch.stack([x.lo * y.lo, x.lo * y.hi, x.hi * y.lo, x.hi * y.hi])
            return _IFull(p.amin(0), p.amax(0))
        if t is torch.maximum:
            return _IFull(torch.maximum(x.lo, y.lo), torch.maximum(x.hi, y.hi))
        if t is torch.minimum:
            return _IFull(torch.minimum(x.lo, y.lo), torch.minimum(x.hi, y.hi))
        raise Unsupported(f"node {node.name!r}: {_describe(node, self.inc.modules)} of two "
                          "intervals has no bound rule")

    def _const(self, a, env):
        v = env[a]
        if isinstance(v, (_IState, _IFull)):
            raise Unsupported("mixed interval arguments")
        return v

    def _dense(self, node, env, b, n):
        """A node of the dense part, on whole intervals."""
        inc = self.inc
        ivals = {a: self._full(a, env[a], b) for a in node.all_input_nodes
                 if isinstance(env[a], (_IState, _IFull))}
        if not ivals:
            return inc._call(node, (fx.node.map_arg(node.args, lambda a: env[a]),
                                    fx.node.map_arg(node.kwargs, lambda a: env[a])))
        env2 = dict(env)
        for a, v in ivals.items():
            env2[a] = v
        rule, prm = _dense_rule(node, inc.modules)
        if rule is None:
            raise Unsupported(f"node {node.name!r}: {_describe(node, inc.modules)} has no "
                              "bound rule")
        if rule == "affine":           # conv or linear: centre / radius with |W|
            (a, v), = ivals.items()
            c, r = (v.lo + v.hi) / 2, (v.hi - v.lo) / 2
            w, bias, fn, kw = prm(self, node, env)
            oc = fn(c, w, bias, **kw)
            orr = fn(r, self._absw(node, w), None, **kw)
            return _IFull(oc - orr, oc + orr)
        if rule == "monotone_inc":     # pools, means, sums, structural ops: apply to both ends
            (a, v), = ivals.items()
            return _IFull(self._call_with(node, env, {a: v.lo}),
                          self._call_with(node, env, {a: v.hi}))
        if rule == "join":
            return self._join(node, env, ivals)
        if rule == "pointwise":
            (a, v), = ivals.items()
            lo, hi = self._pointwise(node, env, a, v.lo, v.hi)
            return _IFull(lo, hi)
        raise Unsupported(f"node {node.name!r}: no bound rule")


_BINARY_CONST = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add,
                 torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum, operator.neg,
                 operator.iadd, operator.isub, operator.imul, operator.itruediv}
_BINARY_CONST_METHODS = {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_",
                         "maximum", "minimum"}


def _conv_prm(self, node, env):
    inc = self.inc
    if node.op == "call_module":
        m = inc.modules[node.target]
        if m.padding_mode != "zeros":
            raise Unsupported(f"node {node.name!r}: padding mode {m.padding_mode!r}")
        return m.weight, m.bias, F.conv2d, dict(stride=m.stride, padding=m.padding,
                                                dilation=m.dilation, groups=m.groups)
    w = env[node.args[1]] if isinstance(node.args[1], fx.Node) else node.args[1]
    bias = _arg(node, 2, "bias", None)
    bias = env[bias] if isinstance(bias, fx.Node) else bias
    if isinstance(w, (_IState, _IFull)) or isinstance(bias, (_IState, _IFull)):
        raise Unsupported(f"node {node.name!r}: weights depend on the image")
    return w, bias, F.conv2d, dict(stride=_arg(node, 3, "stride", 1),
                                   padding=_arg(node, 4, "padding", 0),
                                   dilation=_arg(node, 5, "dilation", 1),
                                   groups=_arg(node, 6, "groups", 1))


def _linear_prm(self, node, env):
    w, bias = self._linear_params(node, env)
    return w, bias, F.linear, {}


def _dense_rule(node, modules):
    """(rule, params-function) for a dense node with interval arguments."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, nn.Conv2d):
            return "affine", _conv_prm
        if isinstance(m, nn.Linear):
            return "affine", _linear_prm
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten,
                          nn.AdaptiveMaxPool2d)):
            return "monotone_inc", None
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d) + _POINTWISE_MODULES):
            return "pointwise", None
        return None, None
    t = node.target
    if node.op == "call_function":
        if t is F.conv2d:
            return "affine", _conv_prm
        if t is F.linear:
            return "affine", _linear_prm
        if t in (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
                 torch.max_pool2d, torch.mean, torch.sum) or t in _STRUCT_FUNCTIONS or \
                _is_flatten(node) or t is operator.getitem:
            return "monotone_inc", None
        if t in (torch.cat, torch.concat):
            return "join", None
        if t in _BINARY_CONST:
            return "join", None
        if t in _POINTWISE_FUNCTIONS or t is F.batch_norm:
            return "pointwise", None
        return None, None
    if node.op == "call_method":
        if t in _STRUCT_METHODS or t in ("mean", "sum"):
            return "monotone_inc", None
        if t in _BINARY_CONST_METHODS:
            return "join", None
        if t in _POINTWISE_METHODS:
            return "pointwise", None
    return None, None


# ---------------------------------------------------------------------------------------------
# symbolic (linear) bounds: every activation of the cone bounded by linear functions of the
# changed pixel's values (V variables), L(v) <= a(v) <= U(v); tensors (n, V + 1, C, h, w) with
# the constant term last. Affine layers are exact on them, ReLU gets the CROWN relaxation, other
# ops fall back to intervals.
class _SState:
    __slots__ = ("L", "U", "oy", "ox")

    def __init__(self, L, U, oy, ox):
        self.L, self.U, self.oy, self.ox = L, U, oy, ox


class _SFull:
    __slots__ = ("L", "U")

    def __init__(self, L, U):
        self.L, self.U = L, U


_RELU_MODULES = (nn.ReLU,)
_RELU_FUNCTIONS = {torch.relu, F.relu}


def _pos(t):
    return t.clamp(min=0)


def _neg(t):
    return t.clamp(max=0)


class SymbolicEvaluator(IntervalEvaluator):
    """Linear bounds in the pixel's values through the cone (the dense rest in intervals)."""

    def margins(self, b, ys, xs, lo, hi, labels):
        inc = self.inc
        n, V = lo.shape
        self.box = (lo, hi)
        self.pure = set()       # nodes whose window is exactly the variables
        env = {}
        out = inc.out
        for node in inc.nodes:
            p = inc.plans[node]
            if p.mode == "const":
                env[node] = inc.consts[node]
            elif p.mode == "skip":
                env[node] = None
            elif p.kind == "input":
                eye = torch.eye(V, device=lo.device, dtype=lo.dtype)
                L = torch.zeros(n, V + 1, V, 1, 1, device=lo.device, dtype=lo.dtype)
                L[:, :V, :, 0, 0] = eye
                env[node] = _SState(L, L.clone(), ys, xs)
                self.pure.add(node)
            elif p.kind == "pointwise" and self._redefines(node, env):
                # an elementwise op of the pixel's own values, read by nothing else: the box
                # of the variables maps through it exactly (per band, monotone or with one
                # minimum), and the variables become its output
                src = next(a for a in node.all_input_nodes if isinstance(env.get(a), _SState))
                blo, bhi = self.box
                flo, fhi = self._pointwise(node, env, src, blo.reshape(n, -1, 1, 1),
                                           bhi.reshape(n, -1, 1, 1))
                self.box = (flo.reshape(n, -1), fhi.reshape(n, -1))
                env[node] = env[src]
                self.pure.add(node)
            elif p.kind == "flatlin":
                env[node] = self._s_flatlin(node, p, env, b, n)
            elif node is out and self._is_linear(node):
                return self._s_linear_margins(node, env, b, labels)
            elif p.mode == "window":
                env[node] = self._s_window(node, p, env, b, ys, xs, n)
            elif p.kind == "gap":
                env[node] = self._s_gap(node, p, env, b, n)
            elif p.kind == "shape":
                env[node] = inc._call(node, self._dense_args(node, env, b, n, meta=True))
            elif self._is_linear(node) and isinstance(env[node.args[0]], _SFull):
                env[node] = self._s_linear(node, env)
            elif _is_flatten(node) and isinstance(env[node.args[0]], _SFull):
                v = env[node.args[0]]
                env[node] = _SFull(v.L.flatten(2), v.U.flatten(2))
            else:
                ienv = {a: self._to_interval(a, env[a], b) for a in node.all_input_nodes}
                env2 = dict(env)
                env2.update(ienv)
                env[node] = self._dense(node, env2, b, n)
        v = env[out]
        if isinstance(v, _SFull):
            v = _IFull(*self._concretise(v.L, v.U))
        if not isinstance(v, _IFull):
            raise Unsupported("the logits are not an interval")
        lab = labels[:, None]
        m = torch.gather(v.lo, 1, lab) - v.hi
        return m.scatter(1, lab, float("inf"))

    def _redefines(self, node, env):
        deps = [a for a in node.all_input_nodes if isinstance(env.get(a), _SState)]
        return len(deps) == 1 and deps[0] in self.pure and len(deps[0].users) == 1 and \
            self.inc.plans[node].shape[1] == self.inc.plans[deps[0]].shape[1]

    # -- concretisation
    def _concretise(self, L, U):
        lo, hi = self.box
        shape = (L.shape[0], L.shape[1] - 1) + (1,) * (L.ndim - 2)
        blo, bhi = lo.reshape(shape), hi.reshape(shape)
        sl, su = L[:, :-1], U[:, :-1]
        low = (_pos(sl) * blo + _neg(sl) * bhi).sum(1) + L[:, -1]
        upp = (_pos(su) * bhi + _neg(su) * blo).sum(1) + U[:, -1]
        return low, upp

    def _to_interval(self, node, v, b):
        if isinstance(v, _SState):
            lo, hi = self._concretise(v.L, v.U)
            return _IState(lo, hi, v.oy, v.ox)
        if isinstance(v, _SFull):
            return _IFull(*self._concretise(v.L, v.U))
        return v

    # -- regions
    def _s_region(self, src, st, b, gy, gx, h, w, spec, inside):
        inc = self.inc
        n, V1 = st.L.shape[:2]
        extra = 0 if inside else 1
        clean = inc._region(src, spec, b, gy, gx, h + extra, w + extra)    # (n, C, h', w')
        L = torch.zeros((n, V1) + tuple(clean.shape[1:]), device=clean.device,
                        dtype=clean.dtype)
        L[:, -1] = clean
        U = L.clone()
        # write the window's components (all V + 1 of them) at the window's place
        for T, S in ((L, st.L), (U, st.U)):
            flat = T.reshape(n, -1, *T.shape[3:])
            src_w = S.reshape(n, -1, *S.shape[3:])
            if inside:
                _write_inside(flat, src_w, st.oy - gy, st.ox - gx)
            else:
                _write(flat, src_w, st.oy - gy, st.ox - gx)
        if not inside:
            L, U = L[..., :h, :w], U[..., :h, :w]
        return L, U

    def _s_window(self, node, p, env, b, ys, xs, n):
        inc = self.inc
        oy, ox = inc._origins(node, ys, xs)
        h, w = p.ay.win, p.ax.win
        if p.kind == "pointwise":
            src = next(a for a in node.all_input_nodes if isinstance(env[a], _SState))
            st = env[src]
            L, U = self._s_pointwise(node, env, src, st.L, st.U)
            return _SState(L, U, st.oy, st.ox)
        if p.kind in ("join", "cat"):
            vals = {a: _SFull(*self._s_region(a, env[a], b, oy, ox, h, w, _NOPAD,
                                               bool(p.inside.get(a))))
                    for a in node.all_input_nodes if isinstance(env[a], _SState)}
            L, U = self._s_join(node, env, vals)
            return _SState(L, U, oy, ox)
        prm = p.params
        src = node.all_input_nodes[0]
        (pt, _), (pl, _) = prm["pads"]
        (kh, kw), (sh, sw), (dh, dw) = prm["kernel"], prm["stride"], prm["dilation"]
        gh = (h - 1) * sh + dh * (kh - 1) + 1
        gw = (w - 1) * sw + dw * (kw - 1) + 1
        gy, gx = oy * sh - pt, ox * sw - pl
        spec = prm["pads"][0] + prm["pads"][1] + (float("-inf") if p.kind == "maxpool" else 0.0,)
        L, U = self._s_region(src, env[src], b, gy, gx, gh, gw, spec, bool(p.inside.get(src)))
        if p.kind == "conv":
            L, U = self._s_conv(node, L, U, prm["weight"], prm["bias"],
                                dict(stride=prm["stride"], padding=0,
                                     dilation=prm["dilation"], groups=prm["groups"]))
        elif p.kind == "avgpool":
            f = lambda t: F.avg_pool2d(t, prm["kernel"], prm["stride"], 0)  # noqa: E731
            L, U = _per_component(f, L), _per_component(f, U)
        else:
            L, U = self._s_maxpool(L, U, prm)
        return _SState(L, U, oy, ox)

    def _s_conv(self, node, L, U, weight, bias, kw):
        n, V1 = L.shape[:2]
        wp, wn = self._split(node, weight)
        fl = lambda t, w_: F.conv2d(t.reshape(n * V1, *t.shape[2:]), w_, None, **kw)  # noqa: E731
        Lo = fl(L, wp) + fl(U, wn)
        Uo = fl(U, wp) + fl(L, wn)
        Lo = Lo.reshape(n, V1, *Lo.shape[1:])
        Uo = Uo.reshape(n, V1, *Uo.shape[1:])
        if bias is not None:
            Lo[:, -1] += bias.view(1, -1, 1, 1)
            Uo[:, -1] += bias.view(1, -1, 1, 1)
        return Lo, Uo

    def _split(self, key, w):
        k = ("split", key)
        if k not in self.abs_weights:
            self.abs_weights[k] = (_pos(w), _neg(w))
        return self.abs_weights[k]

    def _s_maxpool(self, L, U, prm):
        """Max pool of linear bounds: the lower bound of the input with the largest lower
        bound; its upper bound too where it dominates its pooling window (its lower bound is
        above every other input's upper bound), else the largest upper bound (a constant)."""
        lo, hi = self._concretise(L, U)
        n, V1, C, h, w = L.shape
        kw = dict(kernel_size=prm["kernel"], dilation=prm["dilation"], padding=0,
                  stride=prm["stride"])
        ho = (h - prm["dilation"][0] * (prm["kernel"][0] - 1) - 1) // prm["stride"][0] + 1
        wo = (w - prm["dilation"][1] * (prm["kernel"][1] - 1) - 1) // prm["stride"][1] + 1
        unf = lambda t, m: F.unfold(t.reshape(m, C, h, w), **kw).reshape(m, C, -1, ho * wo)  # noqa: E731
        lo_u, hi_u = unf(lo, n), unf(hi, n)                              # (n, C, kk, P)
        j = lo_u.argmax(dim=2, keepdim=True)                             # (n, C, 1, P)
        lmax = lo_u.gather(2, j)
        others = hi_u.scatter(2, j, float("-inf")).amax(dim=2, keepdim=True)
        dominant = (lmax >= others)[:, :, 0]                             # (n, C, P)
        Lu = unf(L, n * V1).reshape(n, V1, C, -1, ho * wo)
        Uu = unf(U, n * V1).reshape(n, V1, C, -1, ho * wo)
        jj = j.unsqueeze(1).expand(-1, V1, -1, -1, -1)
        Lo = Lu.gather(3, jj)[:, :, :, 0]                                # (n, V1, C, P)
        Ud = Uu.gather(3, jj)[:, :, :, 0]
        Uc = torch.zeros_like(Ud)
        Uc[:, -1] = hi_u.amax(dim=2)
        Uo = torch.where(dominant.unsqueeze(1), Ud, Uc)
        return Lo.reshape(n, V1, C, ho, wo), Uo.reshape(n, V1, C, ho, wo)

    def _affine_coeffs(self, node, env, src, shape, like):
        """(a, b) of an elementwise affine op: f(x) = a x + b."""
        zero = torch.zeros(shape, device=like.device, dtype=like.dtype)
        f0 = self._call_with(node, env, {src: zero})
        f1 = self._call_with(node, env, {src: zero + 1})
        return f1 - f0, f0

    def _s_pointwise(self, node, env, src, L, U):
        inc = self.inc
        kind = _pointwise_kind(node, inc.modules, src)
        n, V1 = L.shape[:2]
        if kind == "affine":
            a, b0 = self._affine_coeffs(node, env, src, (1,) + tuple(L.shape[2:]), L)
            a = a.unsqueeze(1)
            Lo = _pos(a) * L + _neg(a) * U
            Uo = _pos(a) * U + _neg(a) * L
            Lo[:, -1] += b0
            Uo[:, -1] += b0
            return Lo, Uo
        lo, hi = self._concretise(L, U)
        if kind == "relu":
            zero = torch.zeros_like(lo)
            dead = hi <= 0
            live = lo >= 0
            s = torch.where(dead | live, (live).to(lo.dtype),
                            hi / (hi - lo).clamp(min=1e-30))
            # CROWN's lower line: slope 1 or 0, whichever the interval favours; 0 for a
            # neuron without slopes (its constant lower bound 0 is then the tighter one)
            has_slope = (L[:, :-1] != 0).any(dim=1)
            alpha = torch.where(live, torch.ones_like(lo),
                                torch.where(dead | ~has_slope, zero,
                                            (hi > -lo).to(lo.dtype)))
            Uo = s.unsqueeze(1) * U
            Uo[:, -1] -= torch.where(dead | live, zero, s * lo)
            Lo = alpha.unsqueeze(1) * L
            return Lo, Uo
        # any other elementwise op: its interval image, as constants
        flo, fhi = self._pointwise(node, env, src, lo, hi)
        Lo = torch.zeros_like(L)
        Uo = torch.zeros_like(U)
        Lo[:, -1] = flo
        Uo[:, -1] = fhi
        return Lo, Uo

    def _s_join(self, node, env, vals):
        t = node.target
        if node.op == "call_method":
            t = {"add": torch.add, "add_": torch.add, "sub": torch.sub,
                 "sub_": torch.sub}.get(t, t)
        if t in (torch.cat, torch.concat):
            parts = _arg(node, 0, "tensors", ())
            dim = _arg(node, 1, "dim", 0)
            d = dim + 1 if dim >= 0 else dim
            return (torch.cat([vals[a].L for a in parts], d),
                    torch.cat([vals[a].U for a in parts], d))
        ins = [x for x in node.args if isinstance(x, fx.Node)]
        if len(vals) == 2 and len(ins) == 2 and all(a in vals for a in ins) and \
                not node.kwargs and t in (operator.add, torch.add, operator.iadd, operator.sub,
                                          torch.sub, operator.isub):
            x, y = vals[ins[0]], vals[ins[1]]
            if t in (operator.add, torch.add, operator.iadd):
                return x.L + y.L, x.U + y.U
            return x.L - y.U, x.U - y.L
        ivals = {a: _IFull(*self._concretise(v.L, v.U)) for a, v in vals.items()}
        out = self._join(node, env, ivals)
        Lo = torch.zeros((out.lo.shape[0], next(iter(vals.values())).L.shape[1])
                         + tuple(out.lo.shape[1:]), device=out.lo.device, dtype=out.lo.dtype)
        Uo = Lo.clone()
        Lo[:, -1], Uo[:, -1] = out.lo, out.hi
        return Lo, Uo

    def _s_flatlin(self, node, p, env, b, n):
        inc = self.inc
        src = p.params["src"]
        st = env[src]
        V1 = st.L.shape[1]
        lin_clean = inc.clean[node].index_select(0, b)                  # (n, D)
        h, w = st.L.shape[3:]
        clean = inc._region(src, _NOPAD, b, st.oy, st.ox, h, w)        # (n, C, h, w)
        dL = st.L.clone()
        dU = st.U.clone()
        dL[:, -1] -= clean
        dU[:, -1] -= clean
        dL = dL.permute(0, 1, 3, 4, 2).reshape(n, V1, -1)
        dU = dU.permute(0, 1, 3, 4, 2).reshape(n, V1, -1)
        Wp = inc.flat_weights[node]                                     # (H, W, C, D)
        Wpos, Wneg = self._split(("flat", node), Wp)
        Ws = inc.plans[src].shape[3]
        key = st.oy * Ws + st.ox
        order = torch.argsort(key, stable=True)
        uniq, counts = torch.unique_consecutive(key[order], return_counts=True)
        dL, dU = dL[order], dU[order]
        D = Wp.shape[3]
        Lo = torch.zeros(n, V1, D, device=dL.device, dtype=dL.dtype)
        Uo = torch.zeros_like(Lo)
        start = 0
        for kk, cnt in zip(uniq.tolist(), counts.tolist()):
            y0, x0 = divmod(kk, Ws)
            bp = Wpos[y0:y0 + h, x0:x0 + w].reshape(-1, D)
            bn = Wneg[y0:y0 + h, x0:x0 + w].reshape(-1, D)
            sl = slice(start, start + cnt)
            Lo[sl] = dL[sl] @ bp + dU[sl] @ bn
            Uo[sl] = dU[sl] @ bp + dL[sl] @ bn
            start += cnt
        L = torch.empty_like(Lo)
        U = torch.empty_like(Uo)
        L[order], U[order] = Lo, Uo
        L[:, -1] += lin_clean
        U[:, -1] += lin_clean
        return _SFull(L, U)

    def _s_gap(self, node, p, env, b, n):
        inc = self.inc
        src = p.params["src"]
        st = env[src]
        out = inc.clean[node].index_select(0, b)
        Hs, Ws = inc.plans[src].shape[2:]
        h, w = st.L.shape[3:]
        clean = inc._region(src, _NOPAD, b, st.oy, st.ox, h, w)
        L = st.L.sum(dim=(3, 4)) / (Hs * Ws)
        U = st.U.sum(dim=(3, 4)) / (Hs * Ws)
        base = out.reshape(n, -1) - clean.sum(dim=(2, 3)) / (Hs * Ws)
        L[:, -1] += base
        U[:, -1] += base
        shape = (n, L.shape[1]) + tuple(out.shape[1:])
        return _SFull(L.reshape(shape), U.reshape(shape))

    def _s_linear(self, node, env):
        v = env[node.args[0]]
        w, bias = self._linear_params(node, env)
        wp, wn = self._split(node, w)
        L = v.L @ wp.T + v.U @ wn.T
        U = v.U @ wp.T + v.L @ wn.T
        if bias is not None:
            L[:, -1] += bias
            U[:, -1] += bias
        return _SFull(L, U)

    def _s_linear_margins(self, node, env, b, labels):
        v = env[node.args[0]]
        if not isinstance(v, _SFull) or v.L.ndim != 3:
            iv = self._to_interval(node.args[0], v, b)
            env2 = dict(env)
            env2[node.args[0]] = iv
            return IntervalEvaluator._linear_margins(self, node, env2, b, labels)
        w, bias = self._linear_params(node, env)
        d = w[labels][:, None, :] - w[None, :, :]                        # (n, K, D)
        # lower bound of d . z with L <= z <= U: positive d takes L, negative d takes U
        Lm = torch.einsum("nkd,nvd->nvk", _pos(d), v.L) + torch.einsum("nkd,nvd->nvk",
                                                                          _neg(d), v.U)
        if bias is not None:
            Lm[:, -1] += bias[labels][:, None] - bias[None, :]
        lo, hi = self.box
        sl = Lm[:, :-1]                                                  # (n, V, K)
        low = (_pos(sl) * lo[..., None] + _neg(sl) * hi[..., None]).sum(1) + Lm[:, -1]
        return low.scatter(1, labels[:, None], float("inf"))


def _per_component(f, T):
    n, V1 = T.shape[:2]
    out = f(T.reshape(n * V1, *T.shape[2:]))
    return out.reshape(n, V1, *out.shape[1:])


def _pointwise_kind(node, modules, src):
    """"affine", "relu" or "other" for an elementwise op of the interval argument `src`."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, _RELU_MODULES):
            return "relu"
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.Identity, nn.Dropout,
                          nn.Dropout2d, nn.AlphaDropout)):
            return "affine"
        return "other"
    t = node.target
    if node.op == "call_function":
        if t in _RELU_FUNCTIONS:
            return "relu"
        if t is F.batch_norm or t in (F.dropout, F.dropout2d, operator.neg, torch.neg):
            return "affine"
        if t in (operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul,
                 operator.iadd, operator.isub, operator.imul):
            return "affine"
        if t in (operator.truediv, torch.div, operator.itruediv) and node.args and \
                node.args[0] is src:
            return "affine"
        return "other"
    if t in ("relu", "relu_"):
        return "relu"
    if t in ("add", "sub", "mul", "add_", "sub_", "mul_", "neg", "float", "contiguous",
             "clone"):
        return "affine"
    if t in ("div", "div_") and node.args[0] is src:
        return "affine"
    return "other"


# ---------------------------------------------------------------------------------------------
def certify_onepixel(model, images, labels, *, bounds, threat="pixel", max_boxes=60_000,
                     margin=1e-3, chunk=1024, plan=None, bounds_method="linear"):
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
    threat : {"pixel", "band_pixel"}
        All bands of one pixel, or one band of one pixel (the others unchanged).
    max_boxes : int
        Budget per galaxy: most boxes bounded (the first pass over the positions counts; a
        galaxy whose first pass alone exceeds it is still given that pass).
    margin : float
        Floating-point margin, relative to ``1 + max |clean logit|``.
    chunk : int
        Boxes bounded per call.
    bounds_method : {"linear", "interval"}
        Linear bounds in the pixel's values through the cone (CROWN-style relaxation of ReLU;
        tighter) or plain interval bound propagation.

    Returns
    -------
    CertifyResult
    """
    if threat not in THREATS:
        raise ValueError(f"threat must be one of {THREATS}, got {threat!r}")
    B, C, H, W = images.shape
    dev = images.device
    lo_b, hi_b = bounds
    res = CertifyResult(status=["unknown"] * B, x=np.full(B, -1, np.int64),
                        y=np.full(B, -1, np.int64), values=np.full((B, C), np.nan, np.float32),
                        settled=np.zeros(B), boxes=np.zeros(B, np.int64), reason=[""] * B,
                        threat=threat)
    if B == 0:
        return res
    with torch.inference_mode():
        inc = IncrementalEvaluator.build(model, images, plan=plan)
        if inc is None:
            res.reason = ["the model has no delta-inference plan (untraceable, or no "
                          "convolution runs on windows)"] * B
            return res
        ie = (SymbolicEvaluator if bounds_method == "linear" else IntervalEvaluator)(inc)
        out = model(images)
        clean = out[1] if isinstance(out, (tuple, list)) else out
        tol = (margin * (1.0 + clean.abs().amax(dim=1))).to(dev)        # (B,)
        # the boxes: per galaxy every position (and band for band_pixel)
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
                queue.append((bi, yy, xx, blo, bhi))
            else:
                pix = images[i, :, yy, xx].T                             # (P, C)
                for band in range(C):
                    blo, bhi = pix.clone(), pix.clone()
                    blo[:, band] = lo_b[i, band]
                    bhi[:, band] = hi_b[i, band]
                    queue.append((bi, yy, xx, blo, bhi))
        q = [torch.cat(t) for t in zip(*queue)]
        q.append(torch.ones(q[0].shape[0], dtype=torch.bool, device=dev))   # first pass
        first = np.bincount(q[0].cpu().numpy(), minlength=B)
        budget = np.maximum(first, max_boxes)
        settled_first = np.zeros(B, np.int64)
        done = np.zeros(B, bool)
        failed = [None] * B
        while q[0].numel():
            # drop the boxes of galaxies already decided
            keep = torch.as_tensor(~done, device=dev)[q[0]]
            if not bool(keep.all()):
                q = [t[keep] for t in q]
            if not q[0].numel():
                break
            nb, ny, nx, nlo, nhi, ng = (t[:chunk] for t in q)
            q = [t[chunk:] for t in q]
            try:
                m = ie.margins(nb, ny, nx, nlo, nhi, labels[nb])
            except Unsupported as exc:
                for i in set(nb.tolist()):
                    failed[i] = str(exc)
                    done[i] = True
                continue
            ok = m.amin(dim=1) > tol[nb]
            nbn = nb.cpu().numpy()
            res.boxes += np.bincount(nbn, minlength=B)
            settled_first += np.bincount(nbn[(ok & ng).cpu().numpy()], minlength=B)
            bad = ~ok
            if not bool(bad.any()):
                continue
            ub, uy, ux, ulo, uhi = nb[bad], ny[bad], nx[bad], nlo[bad], nhi[bad]
            # exact evaluation at the centre and the corners of each unsettled box
            flips = _exact_flips(inc, model, images, labels, ub, uy, ux, ulo, uhi)
            for i, (y, x, v) in flips.items():
                if not done[i]:
                    res.status[i] = "flip"
                    res.y[i], res.x[i] = y, x
                    res.values[i] = v
                    done[i] = True
            # over budget: unknown; otherwise split each box's widest band in two
            for i in np.unique(ub.cpu().numpy()):
                if not done[i] and res.boxes[i] >= budget[i]:
                    res.status[i] = "unknown"
                    res.reason[i] = f"budget of {int(budget[i])} boxes spent"
                    done[i] = True
            keep = torch.as_tensor(~done, device=dev)[ub]
            ub, uy, ux, ulo, uhi = ub[keep], uy[keep], ux[keep], ulo[keep], uhi[keep]
            if not ub.numel():
                continue
            band = (uhi - ulo).argmax(dim=1, keepdim=True)
            mid = (ulo.gather(1, band) + uhi.gather(1, band)) / 2
            hi1 = uhi.scatter(1, band, mid)
            lo2 = ulo.scatter(1, band, mid)
            no = torch.zeros(2 * ub.shape[0], dtype=torch.bool, device=dev)
            q = [torch.cat([a, t]) for a, t in zip(
                (torch.cat([ub, ub]), torch.cat([uy, uy]), torch.cat([ux, ux]),
                 torch.cat([ulo, lo2]), torch.cat([hi1, uhi]), no), q)]
        res.settled = settled_first / np.maximum(first, 1)
        for i in range(B):
            if failed[i] is not None and res.status[i] != "flip":
                res.status[i] = "unknown"
                res.reason[i] = failed[i]
            elif not done[i]:
                res.status[i] = "certified"
    return res


def _exact_flips(inc, model, images, labels, b, ys, xs, lo, hi):
    """Evaluate the centre and corners of the boxes; {image: (y, x, values)} of verified
    flips."""
    n, C = lo.shape
    pts = [(lo + hi) / 2]
    corners = torch.tensor(list(np.ndindex(*(2,) * C)), device=lo.device, dtype=torch.bool)
    for cm in corners[: min(len(corners), 8)]:
        pts.append(torch.where(cm, hi, lo))
    flips = {}
    for v in pts:
        logits = inc.logits(b, ys, xs, v)
        cand = torch.nonzero(logits.argmax(1) != labels[b]).flatten()
        if not cand.numel():
            continue
        # the first candidate per image, verified with the full model
        seen = set()
        for j in cand.tolist():
            i = int(b[j])
            if i in seen or i in flips:
                continue
            seen.add(i)
            adv = images[i:i + 1].clone()
            adv[0, :, ys[j], xs[j]] = v[j]
            out = model(adv)
            lg = out[1] if isinstance(out, (tuple, list)) else out
            if int(lg.argmax(1)) != int(labels[i]):
                flips[i] = (int(ys[j]), int(xs[j]), v[j].float().cpu().numpy())
    return flips
