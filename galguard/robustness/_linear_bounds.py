"""Linear bounds of one-pixel boxes through delta-inference cones (for
`galguard.robustness.certify`): every activation of the cone bounded by linear functions of the
changed pixel's values, CROWN-style relaxation of ReLU, max-pool dominance, the preprocessing
mapping the box exactly; intervals (`galguard.robustness._bounds`) in the dense rest
(`SymbolicEvaluator`). `galguard.robustness._crown_ibp` back-substitutes the margins through
relaxations taken from the interval pass instead: cheaper, looser.
"""

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from ._bounds import IntervalEvaluator, Unsupported, _Bound, _IFull, _IState, _is_flatten
from ._incremental import _write, _write_inside
from ._plan import _NOPAD, _arg, window_region

__all__ = ["SymbolicEvaluator"]


# ---------------------------------------------------------------------------------------------
# symbolic (linear) bounds: every activation of the cone bounded by linear functions of the
# changed pixel's values (V variables), L(v) <= a(v) <= U(v); tensors (n, V + 1, C, h, w) with
# the constant term last. Affine layers are exact on them, ReLU gets the CROWN relaxation, other
# ops fall back to intervals.
class _SState(_Bound):
    __slots__ = ("L", "U", "oy", "ox")

    def __init__(self, L, U, oy, ox):
        self.L, self.U, self.oy, self.ox = L, U, oy, ox


class _SFull(_Bound):
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
    """Linear bounds in the pixel's values through the cone (the dense rest in intervals).

    With ``backward`` (default) and a chain-shaped cone (convolutions, pools, ReLU and affine
    elementwise ops from the pixel to a linear layer on the flattened map, then the logits),
    the margins are also bounded by back-substitution (CROWN): the margin's coefficients are
    carried back through the cone with each ReLU's and max pool's relaxation chosen by the sign
    of its coefficient, and the larger of the two lower bounds is kept."""

    backward = True

    def margins(self, b, ys, xs, lo, hi, labels, vary=None, track=None):
        """As `IntervalEvaluator.margins`; ``vary`` (n, V) int64, optional: the bands that vary
        (the others are fixed at ``lo == hi``), so that the bounds carry V variables instead of
        C (a single-band box: one; an artefact's ``track``: one, shared by its pixels)."""
        inc = self.inc
        n = lo.shape[0]
        self._setup(lo, hi, vary)
        self.env = env = {}
        out = inc.out
        for node in inc.nodes:
            p = inc.plans[node]
            if p.mode == "const":
                env[node] = inc.consts[node]
            elif p.mode == "skip":
                env[node] = None
            elif p.kind == "input":
                env[node] = self._s_input(node, lo, ys, xs, track)
            elif p.kind == "pointwise" and self._redefines(node, env):
                env[node] = self._s_redefine(node, env)
            elif p.kind == "flatlin" and node is out and self.backward:
                # the logits are the linear layer on the flattened windows
                env[node] = self._s_flatlin(node, p, env, b, n)
                v = env[node]
                lo_, hi_ = self._concretise(v.L, v.U)
                lab = labels[:, None]
                m = (torch.gather(lo_, 1, lab) - hi_).scatter(1, lab, float("inf"))
                back = self._crown_margins(node, env, b, ys, xs, labels)
                return m if back is None else torch.maximum(m, back)
            elif p.kind == "flatlin":
                env[node] = self._s_flatlin(node, p, env, b, n)
            elif node is out and self._is_linear(node):
                m = self._s_linear_margins(node, env, b, labels)
                if self.backward:
                    back = self._crown_margins(node, env, b, ys, xs, labels)
                    if back is not None:
                        m = torch.maximum(m, back)
                return m
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

    # -- the variables
    def _setup(self, lo, hi, vary):
        n, C = lo.shape
        if vary is None:
            vary = torch.arange(C, device=lo.device).expand(n, C)
        self.vary = vary
        self.fixed = lo.scatter(1, vary, 0.0)               # (n, C) the fixed bands' values
        self.box = (lo.gather(1, vary), hi.gather(1, vary))
        self.pure = set()       # nodes whose window is exactly the variables
        self.rec = {}           # per node: what the backward pass needs (relaxations)

    def _s_input(self, node, lo, ys, xs, track):
        """The input's window: the V variables (one-hot coefficients) and the fixed bands."""
        vary = self.vary
        n, C = lo.shape
        V = vary.shape[1]
        if track is None:
            L = torch.zeros(n, V + 1, C, device=lo.device, dtype=lo.dtype)
            L[:, :V].scatter_(2, vary[:, :, None], 1.0)
            L[:, V] = self.fixed
            L = L[..., None, None]
        else:
            if V != 1:
                raise ValueError("an artefact box has one variable (vary: (n, 1))")
            mask, clean = track
            band = torch.zeros(n, C, dtype=torch.bool, device=lo.device) \
                .scatter_(1, vary, True)
            var = band[:, :, None, None] & mask[None, None]
            L = torch.stack([var.to(lo.dtype),
                             torch.where(var, torch.zeros_like(clean), clean)], dim=1)
        self.pure.add(node)
        return _SState(L, L.clone(), ys, xs)

    def _s_redefine(self, node, env):
        """An elementwise op of the pixel's own values, read by nothing else: the box of the
        variables maps through it exactly (per band, monotone or with one minimum), and the
        variables become its output."""
        src = next(a for a in node.all_input_nodes if isinstance(env.get(a), _SState))
        st = env[src]
        coef, const = st.L[:, :-1], st.L[:, -1]        # one-hot 0/1 coefficients
        blo, bhi = self.box
        wlo = const + (coef * blo[:, :, None, None, None]).sum(1)
        whi = const + (coef * bhi[:, :, None, None, None]).sum(1)
        flo, fhi = self._pointwise(node, env, src, wlo, whi)
        isvar = coef.sum(1) > 0
        on = coef > 0                                   # (n, V, C, h, w)
        nlo, lo2 = _var_range(on, flo)
        nhi, hi2 = _var_range(on, fhi)
        # one map for all of a variable's pixels, or no exact mapping
        if bool((lo2 != nlo).any()) or bool((hi2 != nhi).any()):
            raise Unsupported(f"node {node.name!r}: an elementwise op that differs "
                              f"between the artefact's pixels")
        self.box = (nlo, nhi)
        L = st.L.clone()
        L[:, -1] = torch.where(isvar, torch.zeros_like(flo), flo)
        self.pure.add(node)
        return _SState(L, L.clone(), st.oy, st.ox)

    def _redefines(self, node, env):
        deps = [a for a in node.all_input_nodes if isinstance(env.get(a), _SState)]
        return len(deps) == 1 and deps[0] in self.pure and len(deps[0].users) == 1 and \
            self.inc.plans[node].shape[1] == self.inc.plans[deps[0]].shape[1]

    # -- back-substitution (CROWN) for chain-shaped cones
    def _chain(self, out):
        """The windowed nodes from the flattened linear layer back to the variables, or None.
        `out` is the logits: a linear layer of the flattened linear layer's output, or that
        layer itself."""
        inc = self.inc
        src = out if inc.plans[out].kind == "flatlin" else out.args[0]
        p = inc.plans.get(src)
        if p is None or p.kind != "flatlin":
            return None
        flat, chain = src, []
        node = p.params["src"]
        while node not in self.pure:
            q = inc.plans[node]
            if q.mode != "window" or q.kind not in ("conv", "maxpool", "avgpool", "pointwise"):
                return None
            if q.kind == "pointwise" and node not in self.rec:
                return None            # an elementwise op without a linear relaxation
            deps = [a for a in node.all_input_nodes if inc.plans[a].mode == "window"]
            if len(deps) != 1:
                return None
            chain.append(node)
            node = deps[0]
        return flat, chain, node

    def _to_window(self, lam, src, st, b, gy, gx, spec):
        """Coefficients on a region (n, K, C, gh, gw) at (gy, gx) -> on `src`'s window, plus the
        clean part's contribution (n, K)."""
        inc = self.inc
        n, K, C, gh, gw = lam.shape
        h, w = st.L.shape[3:]
        clean = inc._region(src, spec, b, gy, gx, gh, gw)                   # (n, C, gh, gw)
        clean = torch.where(torch.isfinite(clean), clean, torch.zeros_like(clean))
        const = torch.einsum("nkchw,nchw->nk", lam, clean)
        win = _crop(lam.reshape(n, K * C, gh, gw), st.oy - gy, st.ox - gx, h, w)
        win = win.reshape(n, K, C, h, w)
        # the clean values under the window (zero outside the region, where win is zero too)
        cw = _crop(clean, st.oy - gy, st.ox - gx, h, w)
        const = const - torch.einsum("nkchw,nchw->nk", win, cw)
        return win, const

    def _crown_margins(self, out, env, b, ys, xs, labels):
        found = self._chain(out)
        if found is None:
            return None
        inc = self.inc
        flat, chain, var = found
        clean_z = inc.clean[flat].index_select(0, b)                        # (n, D)
        if flat is out:     # the margin is a difference of the flattened layer's outputs
            n, D = clean_z.shape
            w = torch.eye(D, device=clean_z.device, dtype=clean_z.dtype)
            bias = None
        else:
            w, bias = self._linear_params(out, env)
        # the margins against the other classes only (the label's own is +inf)
        n, Kall = clean_z.shape[0], w.shape[0]
        ar = torch.arange(Kall - 1, device=labels.device)
        others = ar[None, :] + (ar[None, :] >= labels[:, None]).long()        # (n, K - 1)
        d = w[labels][:, None, :] - w[others]                                # (n, K, D)
        const = (bias[labels][:, None] - bias[others]) if bias is not None else \
            torch.zeros(d.shape[:2], device=d.device, dtype=d.dtype)
        n, K, D = d.shape
        # the flattened linear layer: z = clean_z + W[:, window] (a - clean_a)
        fp = inc.plans[flat]
        src = fp.params["src"]
        st = env[src]
        h, wd = st.L.shape[3:]
        C = st.L.shape[2]
        const = const + torch.einsum("nkd,nd->nk", d, clean_z)
        Wp = inc.flat_weights[flat]                                        # (H, W, C, D)
        Ws = inc.plans[src].shape[3]
        lam = torch.empty(n, K, h * wd * C, device=d.device, dtype=d.dtype)
        key = st.oy * Ws + st.ox
        for kk in torch.unique(key).tolist():
            rows = torch.nonzero(key == kk).flatten()
            y0, x0 = divmod(kk, Ws)
            blk = Wp[y0:y0 + h, x0:x0 + wd].reshape(-1, D)
            lam[rows] = d[rows] @ blk.T
        lam = lam.reshape(n, K, h, wd, C).permute(0, 1, 4, 2, 3).contiguous()
        cw = inc._region(src, _NOPAD, b, st.oy, st.ox, h, wd)
        const = const - torch.einsum("nkchw,nchw->nk", lam, cw)
        # back through the chain
        for node in chain:
            p = inc.plans[node]
            rec = self.rec.get(node)
            if p.kind == "pointwise":
                if rec[0] == "relu":
                    _, alpha, s, t = rec
                    lp, ln = _pos(lam), _neg(lam)
                    const = const + (ln * t.unsqueeze(1)).sum(dim=(2, 3, 4))
                    lam = lp * alpha.unsqueeze(1) + ln * s.unsqueeze(1)
                else:
                    _, a, b0 = rec
                    const = const + (lam * b0.unsqueeze(1)).sum(dim=(2, 3, 4))
                    lam = lam * a.unsqueeze(1)
                continue
            prev = node.all_input_nodes[0] if p.kind != "conv" else \
                [a for a in node.all_input_nodes if inc.plans[a].mode == "window"][0]
            oy, ox = inc._origins(node, ys, xs)
            gy, gx, gh, gw, spec = window_region(p, oy, ox)
            prm = p.params
            nK = n * K
            if p.kind == "conv":
                Cout = lam.shape[2]
                if prm["bias"] is not None:
                    const = const + torch.einsum("nkchw,c->nk", lam, prm["bias"])
                reg = F.conv_transpose2d(lam.reshape(nK, Cout, *lam.shape[3:]), prm["weight"],
                                         None, prm["stride"], 0, 0, prm["groups"],
                                         prm["dilation"])
            elif p.kind == "avgpool":
                Cc = lam.shape[2]
                kh, kw = prm["kernel"]
                ones = torch.full((Cc, 1, kh, kw), 1.0 / (kh * kw), device=lam.device,
                                  dtype=lam.dtype)
                reg = F.conv_transpose2d(lam.reshape(nK, Cc, *lam.shape[3:]), ones, None,
                                         prm["stride"], 0, 0, Cc)
            else:   # max pool: the relaxation's input, chosen by the coefficient's sign
                _, j, dominant, hmax, (ih, iw) = rec
                Cc = lam.shape[2]
                P = lam.shape[3] * lam.shape[4]
                lf = lam.reshape(n, K, Cc, P)
                lp, ln = _pos(lf), _neg(lf)
                dom = dominant.unsqueeze(1).to(lf.dtype)
                const = const + (ln * (1 - dom) * hmax.unsqueeze(1)).sum(dim=(2, 3))
                coef = lp + ln * dom                                       # (n, K, C, P)
                reg = torch.zeros(n, K, Cc, ih * iw, device=lam.device, dtype=lam.dtype)
                reg = reg.scatter_add_(3, j.unsqueeze(1).expand(-1, K, -1, -1), coef) \
                    .reshape(nK, Cc, ih, iw)
            reg = reg.reshape(n, K, *reg.shape[1:])
            if reg.shape[3:] != (gh, gw):
                return None
            lam, c2 = self._to_window(reg, prev, env[prev], b, gy, gx, spec)
            const = const + c2
        # the variables
        lo, hi = self.box
        Lv = env[var].L                                          # (n, V + 1, C, h, w)
        const = const + torch.einsum("nkchw,nchw->nk", lam, Lv[:, -1])
        lv = torch.einsum("nkchw,nvchw->nkv", lam, Lv[:, :-1])          # (n, K, V)
        low = const + (_pos(lv) * lo[:, None, :] + _neg(lv) * hi[:, None, :]).sum(2)
        full = torch.full((n, Kall), float("inf"), device=low.device, dtype=low.dtype)
        return full.scatter(1, others, low)

    # -- concretisation
    def _concretise(self, L, U):
        """Interval of linear bounds over the box: ``c+ lo + c- hi`` and ``c+ hi + c- lo``,
        each a contraction over the variables (the variables' own one-hot coefficients give
        the box's ends exactly)."""
        lo, hi = self.box
        n, V1 = L.shape[:2]

        def ends(T, a, z):
            c = T[:, :-1].reshape(n, V1 - 1, -1)
            cp = c.clamp(min=0)
            m = torch.bmm(a[:, None, :], cp) + torch.bmm(z[:, None, :], c - cp)
            return m.reshape(T[:, -1].shape) + T[:, -1]
        return ends(L, lo, hi), ends(U, hi, lo)

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
        gy, gx, gh, gw, spec = window_region(p, oy, ox)
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
            self.rec[node] = ("maxpool",) + self._last_pool
        return _SState(L, U, oy, ox)

    def _s_conv(self, node, L, U, weight, bias, kw):
        """Centre and radius form: ``W (L + U) / 2 -+ |W| (U - L) / 2``, which is
        ``W+ L + W- U`` and ``W+ U + W- L`` in exact arithmetic, in two convolutions."""
        n, V1 = L.shape[:2]
        fl = lambda t, w_: F.conv2d(t.reshape(n * V1, *t.shape[2:]), w_, None, **kw)  # noqa: E731
        Mo = fl((L + U) * 0.5, weight)
        Ro = fl((U - L) * 0.5, self._absw(node, weight))
        Lo = (Mo - Ro).reshape(n, V1, *Mo.shape[1:])
        Uo = (Mo + Ro).reshape(n, V1, *Mo.shape[1:])
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
        j, dominant, _, hmax, (ho, wo) = _pool_choice(prm, lo, hi)
        jj = j.unsqueeze(1).expand(-1, V1, -1, -1)
        Lo = L.reshape(n, V1, C, h * w).gather(3, jj)                   # (n, V1, C, P)
        Ud = U.reshape(n, V1, C, h * w).gather(3, jj)
        Uc = torch.zeros_like(Ud)
        Uc[:, -1] = hmax
        Uo = torch.where(dominant.unsqueeze(1), Ud, Uc)
        self._last_pool = (j, dominant, hmax, (h, w))
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
            self.rec[node] = ("affine", a[:, 0], b0)
            return Lo, Uo
        lo, hi = self._concretise(L, U)
        if kind == "relu":
            alpha, s, t = _relu_relaxation(lo, hi, (L[:, :-1] != 0).any(dim=1))
            Uo = s.unsqueeze(1) * U
            Uo[:, -1] += t
            Lo = alpha.unsqueeze(1) * L
            self.rec[node] = ("relu", alpha, s, t)
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


def _relu_relaxation(lo, hi, has_slope=None):
    """CROWN's relaxation of ReLU on pre-activation bounds [lo, hi]: alpha z <= relu(z) <=
    s z + t. The lower line has slope 1 or 0, whichever the interval favours; 0 for a neuron
    without slopes (``has_slope`` False: its constant lower bound 0 is then the tighter one)."""
    # one formula for the three cases: s = 1, t = 0 where live (lo >= 0); s = t = 0 where
    # dead (hi <= 0); the chord where the sign changes (a neuron fixed at 0 may get either)
    hp, ln = hi.clamp(min=0), lo.clamp(max=0)
    s = hp / (hp - ln).clamp(min=1e-30)
    t = -s * ln
    alpha = (lo + hi > 0).to(lo.dtype)
    if has_slope is not None:
        alpha = torch.where(has_slope, alpha, (lo >= 0).to(lo.dtype))
    return alpha, s, t


def _pool_choice(prm, lo, hi):
    """A max pool's relaxation from its inputs' bounds lo, hi (m, C, h, w): per pooling window
    the input with the largest lower bound (its flat index into h * w) j (m, C, P), whether it
    dominates (its lower bound at or above every other input's upper bound) (m, C, P), the
    largest lower and upper bounds (m, C, P), and the output size (ho, wo)."""
    kw = dict(kernel_size=prm["kernel"], stride=prm["stride"], padding=0,
              dilation=prm["dilation"])
    lmax, j = F.max_pool2d(lo, return_indices=True, **kw)
    hmax = F.max_pool2d(hi, **kw)
    m, C, ho, wo = lmax.shape
    h, w = hi.shape[2:]
    j = j.reshape(m, C, ho * wo)
    span = [d * (k - 1) + 1 for k, d in zip(prm["kernel"], prm["dilation"])]
    if all(e <= s for e, s in zip(span, prm["stride"])):
        # disjoint windows: each input is in at most one, so masking the chosen inputs leaves
        # every window's others
        masked = hi.reshape(m, C, h * w).scatter(2, j, float("-inf")).reshape(m, C, h, w)
        others = F.max_pool2d(masked, **kw).reshape(m, C, ho * wo)
    else:
        # overlapping windows: the others of each window from its own entries
        pos = torch.arange(h * w, device=hi.device, dtype=torch.float64).reshape(1, 1, h, w)
        pos = F.unfold(pos, **kw).long()                                     # (1, kk, P)
        hi_u = F.unfold(hi.reshape(m, C, h, w), **kw).reshape(m, C, -1, ho * wo)
        others = hi_u.masked_fill(pos[:, None] == j[:, :, None], float("-inf")).amax(dim=2)
    lmax = lmax.reshape(m, C, ho * wo)
    return j, lmax >= others, lmax, hmax.reshape(m, C, ho * wo), (ho, wo)


def _var_range(on, f):
    """(max, min) (n, V) of `f` (n, C, h, w) over each variable's entries `on` (n, V, C, h, w)."""
    v = f[:, None].expand_as(on)
    hi = torch.where(on, v, float("-inf")).flatten(2).amax(dim=2)
    lo = torch.where(on, v, float("inf")).flatten(2).amin(dim=2)
    return hi, lo


def _crop(t, oy, ox, h, w):
    """``t[i, :, oy[i]:oy[i] + h, ox[i]:ox[i] + w]`` for each i, zero outside t: (n, C, h, w)."""
    n, C, gh, gw = t.shape
    ry = oy[:, None] + torch.arange(h, device=t.device)                   # (n, h)
    rx = ox[:, None] + torch.arange(w, device=t.device)                   # (n, w)
    rows = t.gather(2, ry.clamp(0, gh - 1)[:, None, :, None].expand(n, C, h, gw))
    out = rows.gather(3, rx.clamp(0, gw - 1)[:, None, None, :].expand(n, C, h, w))
    inside = ((ry >= 0) & (ry < gh))[:, :, None] & ((rx >= 0) & (rx < gw))[:, None, :]
    return out * inside[:, None].to(t.dtype)


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
