"""Bounds of one-pixel boxes through delta-inference cones (for `galguard.robustness.certify`).

`IntervalEvaluator`: interval bound propagation (its linear refinement is
`galguard.robustness._linear_bounds.SymbolicEvaluator`). Both return lower bounds of the class
margins.
"""

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from ._incremental import _write, _write_inside
from ._plan import (_NOPAD, _POINTWISE_FUNCTIONS, _POINTWISE_METHODS, _POINTWISE_MODULES, _arg,
                    _describe, _is_flatten, window_region)

__all__ = ["IntervalEvaluator", "Unsupported"]

#: activations with one minimum: name -> argmin
_QUASICONVEX_MODULES = {nn.GELU: -0.7517916, nn.SiLU: -1.2784645, nn.Mish: -1.1923546,
                        nn.Hardswish: -1.5}
_QUASICONVEX_FUNCTIONS = {F.gelu: -0.7517916, F.silu: -1.2784645, F.mish: -1.1923546,
                          F.hardswish: -1.5, torch.abs: 0.0, torch.square: 0.0}
_QUASICONVEX_METHODS = {"abs": 0.0, "square": 0.0}
_STRUCT_METHODS = {"flatten", "view", "reshape", "contiguous", "float", "clone", "squeeze",
                   "unsqueeze", "permute", "transpose"}
_STRUCT_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze,
                     torch.permute, torch.transpose}



def track_window(track, vary, lo, hi):
    """The input window's (lo, hi) (n, C, fh, fw) of an artefact box (`margins`' ``track``)."""
    mask, clean = track
    n, C = lo.shape
    band = torch.zeros(n, C, dtype=torch.bool, device=lo.device).scatter_(1, vary, True)
    var = band[:, :, None, None] & mask[None, None]
    blo = lo.gather(1, vary)[:, :, None, None]
    bhi = hi.gather(1, vary)[:, :, None, None]
    return torch.where(var, blo, clean), torch.where(var, bhi, clean)


def _is_input(p):
    return p.kind == "input" and p.mode not in ("const", "skip")


def _interval_margins(v, labels):
    """Lower bounds of the margins from the logits' interval `v`; +inf at the label."""
    if not isinstance(v, _IFull):
        raise Unsupported("the logits are not an interval")
    lab = labels[:, None]
    return (torch.gather(v.lo, 1, lab) - v.hi).scatter(1, lab, float("inf"))


class Unsupported(Exception):
    """An op that interval bound propagation has no rule for."""



# ---------------------------------------------------------------------------------------------
class _Bound:
    """Base of the bound values (intervals here, linear bounds in `_linear_bounds`)."""

    __slots__ = ()


class _IState(_Bound):
    """An interval window: lower and upper values (n, C, h, w) at origins (oy, ox) (n,)."""

    __slots__ = ("lo", "hi", "oy", "ox")

    def __init__(self, lo, hi, oy, ox):
        self.lo, self.hi, self.oy, self.ox = lo, hi, oy, ox


class _IFull(_Bound):
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

    def margins(self, b, ys, xs, lo, hi, labels, vary=None, track=None):
        """Lower bounds (n, K) of ``logit[label] - logit[j]`` over the boxes: candidate image
        ``b`` (n,), pixel ``ys, xs`` (n,), per-band value bounds ``lo, hi`` (n, C); +inf at
        j == label. ``vary`` (which bands vary) is a hint for `SymbolicEvaluator`; intervals
        need none. ``track`` = (mask, clean): an artefact instead of one pixel, the pixels
        ``mask`` (fh, fw) bool of the fh x fw block at (ys, xs), whose clean values are
        ``clean`` (n, C, fh, fw), all set to one value of band ``vary`` (n, 1) in its [lo, hi]
        (the plan's footprint must be fh x fw). Raises `Unsupported` for an op without a
        rule."""
        inc = self.inc
        env = {}
        n = b.shape[0]
        out = inc.out
        for node in inc.nodes:
            p = inc.plans[node]
            if _is_input(p):
                env[node] = _IState(*track_window(track, vary, lo, hi), ys, xs) \
                    if track is not None else \
                    _IState(lo.reshape(n, -1, 1, 1), hi.reshape(n, -1, 1, 1), ys, xs)
            elif self._is_logits_linear(node, p):
                return self._linear_margins(node, env, b, labels)
            else:
                env[node] = self._step(node, p, env, b, ys, xs, n)
        return _interval_margins(env[out], labels)

    def _step(self, node, p, env, b, ys, xs, n):
        """The interval value of a node that is neither the input nor the logits' linear
        layer."""
        inc = self.inc
        if p.mode == "const":
            return inc.consts[node]
        if p.mode == "skip":
            return None
        if p.kind == "flatlin":
            return self._flatlin(node, p, env, b, n)
        if p.mode == "window":
            return self._window(node, p, env, b, ys, xs, n)
        if p.kind == "gap":
            return self._gap(node, p, env, b, n)
        if p.kind == "shape":
            return inc._call(node, self._dense_args(node, env, b, n, meta=True))
        return self._dense(node, env, b, n)

    def _is_logits_linear(self, node, p):
        """The logits as a linear layer of a dense value (not a flattened window's)."""
        return node is self.inc.out and p.mode not in ("const", "skip") and \
            p.kind != "flatlin" and self._is_linear(node)

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
        gy, gx, gh, gw, spec = window_region(p, oy, ox)
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
            if isinstance(v, _Bound):
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
