"""Back-substitution through interval relaxations (CROWN-IBP) for one-pixel boxes (for
`galguard.robustness.certify`): the interval pass of `galguard.robustness._bounds` records each
ReLU's and max pool's relaxation from its own intervals, and the class margins of the boxes it
leaves open are carried back through the cone as `galguard.robustness._linear_bounds` does
(CROWN), without its forward pass of linear bounds.
"""

import torch

from ._bounds import _IState, _interval_margins, _is_input
from ._linear_bounds import (SymbolicEvaluator, _pointwise_kind, _pool_choice, _relu_relaxation,
                             _SState)
from ._plan import window_region

__all__ = ["IntervalCrownEvaluator"]


class _Shape:
    """A window's shape: all that the back-substitution reads of a forward state but the
    variables'."""

    __slots__ = ("shape",)

    def __init__(self, shape):
        self.shape = shape


class IntervalCrownEvaluator(SymbolicEvaluator):
    """Interval bounds through the cone and, on the boxes they leave open, CROWN's
    back-substitution with the intervals as the ReLU and max-pool relaxations' pre-activation
    bounds (as CROWN-IBP does): the interval pass plus one backward pass, where
    `SymbolicEvaluator` first carries linear bounds forward through the cone. Its relaxations
    are looser, so `certify_onepixel` runs it between the two. For a cone that is not
    chain-shaped, or an elementwise op without a relaxation, it gives the interval bounds."""

    #: Whether the last back-substitution applied (a chain-shaped cone).
    backsubstituted = False

    def margins(self, b, ys, xs, lo, hi, labels, vary=None, track=None, tol=None):
        """As `SymbolicEvaluator.margins`; ``tol`` (n,), optional: boxes whose interval bounds
        are already above it are not back-substituted."""
        inc = self.inc
        n = lo.shape[0]
        self._setup(lo, hi, vary)
        env, sym = {}, {}       # intervals; the variables' linear states
        out = inc.out
        for node in inc.nodes:
            p = inc.plans[node]
            if _is_input(p) or (p.mode not in ("const", "skip") and p.kind == "pointwise" and
                                self._redefines(node, sym)):
                st = self._s_input(node, lo, ys, xs, track) if p.kind == "input" else \
                    self._s_redefine(node, {**env, **sym})
                sym[node] = st
                env[node] = _IState(*self._concretise(st.L, st.U), st.oy, st.ox)
            elif self._is_logits_linear(node, p):
                m = self._linear_margins(node, env, b, labels)
                return self._back(node, env, sym, m, b, ys, xs, labels, tol)
            elif p.mode == "window" and p.kind == "maxpool":
                env[node] = self._relaxed_maxpool(node, p, env, b, ys, xs)
            else:
                if p.mode == "window" and p.kind == "pointwise":
                    self._relax(node, env)
                env[node] = self._step(node, p, env, b, ys, xs, n)
        m = _interval_margins(env[out], labels)
        return self._back(out, env, sym, m, b, ys, xs, labels, tol)

    def _relax(self, node, env):
        """Record the relaxation of a windowed elementwise op from its input's interval."""
        src = next(a for a in node.all_input_nodes if isinstance(env[a], _IState))
        st = env[src]
        kind = _pointwise_kind(node, self.inc.modules, src)
        if kind == "relu":
            self.rec[node] = ("relu",) + _relu_relaxation(st.lo, st.hi)
        elif kind == "affine":
            self.rec[node] = ("affine",) + self._affine_coeffs(
                node, env, src, (1,) + tuple(st.lo.shape[1:]), st.lo)

    def _relaxed_maxpool(self, node, p, env, b, ys, xs):
        prm = p.params
        oy, ox = self.inc._origins(node, ys, xs)
        src = node.all_input_nodes[0]
        gy, gx, gh, gw, spec = window_region(p, oy, ox)
        lo, hi = self._region(src, env[src], b, gy, gx, gh, gw, spec, bool(p.inside.get(src)))
        n, C = lo.shape[:2]
        j, dominant, lmax, hmax, (ho, wo) = _pool_choice(prm, lo, hi)
        self.rec[node] = ("maxpool", j, dominant, hmax, (gh, gw))
        return _IState(lmax.reshape(n, C, ho, wo), hmax.reshape(n, C, ho, wo), oy, ox)

    def _back(self, out, env, sym, m, b, ys, xs, labels, tol):
        """The margins `m` raised by back-substitution on the boxes not above `tol`."""
        if tol is None:
            rows = torch.arange(m.shape[0], device=m.device)
        else:
            rows = torch.nonzero(~(m.amin(dim=1) > tol)).flatten()
        if not rows.numel():
            return m
        k = rows.numel()
        sub = (lambda t: t) if k == m.shape[0] else (lambda t: t.index_select(0, rows))  # noqa: E731
        states = {}
        for node, v in env.items():
            if node in sym:
                st = sym[node]
                states[node] = _SState(sub(st.L), sub(st.U), sub(st.oy), sub(st.ox))
            elif isinstance(v, _IState):
                states[node] = _SState(_Shape((k, self.vary.shape[1] + 1) + v.lo.shape[1:]),
                                       None, sub(v.oy), sub(v.ox))
        # the relaxations' per-box tensors: relu (alpha, s, t), maxpool (j, dominant, hmax);
        # affine coefficients are shared by all boxes
        rec = self.rec
        self.rec = {node: r if r[0] == "affine" else
                    (r[0],) + tuple(sub(t) for t in r[1:4]) + r[4:] for node, r in rec.items()}
        self.box = tuple(sub(t) for t in self.box)
        back = self._crown_margins(out, states, sub(b), sub(ys), sub(xs), sub(labels))
        self.backsubstituted = back is not None
        if back is None:
            return m
        m[rows] = torch.maximum(m[rows], back)
        return m
