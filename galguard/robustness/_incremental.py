"""Delta inference: one- and k-pixel candidates through any traceable CNN, recomputing only
what a changed pixel can reach.

A change at pixel (y, x) only alters the activations inside its receptive field. The model
(a `galguard.models.GalaxyClassifier`: its preprocessing and network; a wrapped user module; or
any module mapping images to logits or ``(latent, logits)``) is traced once with `torch.fx`, and
every node of the graph gets one of three modes:

``window``
    The node's output differs from the clean image's only inside a rectangle whose size is fixed
    per node and whose origin is a function of the changed pixel (a lookup table per axis). The
    rectangle is planned layer by layer from the interval of rows (and columns) each changed
    pixel can reach: convolutions of any kernel, stride, zero padding (numbers or "same"),
    dilation and groups; max and average pooling; eval-mode batch norm and dropout; pointwise
    functions (ReLU, LeakyReLU, GELU, SiLU, ELU, tanh, sigmoid, arcsinh, clamp, nan_to_num,
    scaling and offsets by scalars or per-channel constants: preprocessing); residual additions
    and other elementwise joins and channel concatenations of branches (the union of the
    branches' intervals). Each candidate computes only its rectangles: a layer gathers its input
    window from the cached clean map (zero or -inf outside the map, as the layer pads), writes the
    previous layer's changed windows into it and applies the layer without padding: the values
    the full network computes, up to floating-point summation order.
``dense``
    From the first node that is not spatial (flatten, global or adaptive pooling, attention, an
    op this module does not know) or whose window would cover its whole map, the rest of the
    graph runs in full on the candidates' rows: the windowed inputs are materialised once (the
    clean map's rows with the windows written in). A linear layer on the flattened windowed map
    (the ConvNet's bottleneck) is applied as ``clean + W[:, window] @ (new - clean)``.
    Every op that makes the evaluator leave the window mode early is named once in the log.
``const``
    Nodes that do not depend on the image (weights, buffers, shapes of constants).

The clean activations of the nodes that a later node reads (inputs of windowed convolutions,
pools and joins, and the inputs of the first dense nodes) are computed once per image, each image
alone (batch 1) so that they do not depend on which images share a call. Their memory is
``4 * B * sum(C_n * H_n * W_n)`` bytes over those nodes (`IncrementalEvaluator.bytes_per_image`
times B), which the attack bounds by splitting large calls.

An evaluator is used only after it reproduces the full model's logits on probe candidates (the
corners among them) to a relative tolerance of 1e-4 (of the largest logit); otherwise the attack
uses full evaluations. With k changed pixels each candidate carries k windows per node (they may
overlap; overlapping windows hold the same values).
"""


import logging
import math

import torch
import torch.nn.functional as F
from torch import fx, nn

from ._plan import _NOPAD, PROBE_RTOL, _arg, _clean_values, plan_model, window_region

__all__ = ["IncrementalEvaluator", "plan_model"]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# window arithmetic
def _write_inside(region, win, dy, dx):
    """Write `win` (n, C, h, w) into `region` (n, C, R, S) in place at per-row offsets
    (dy, dx) (n,) that keep it inside."""
    h, w = win.shape[2:]
    dev = region.device
    if _scatters(region, win):
        _scatter_window(region, win, dy[:, None] + torch.arange(h, device=dev),
                        dx[:, None] + torch.arange(w, device=dev))
        return region
    view = region.unfold(2, h, 1).unfold(3, w, 1)
    view[torch.arange(region.shape[0], device=dev), :, dy, dx] = win
    return region


def _write(region, win, dy, dx):
    """Write `win` (n, C, h, w) into `region` (n, C, R, S) in place at per-row offsets
    (dy, dx) (n,). The last row and column of `region` are trash: entries that fall outside
    the rest of it go there."""
    n, Cc, R, S = region.shape
    h, w = win.shape[2:]
    dev = region.device
    if h < R and w < S and bool(((dy >= 0) & (dy + h < R) & (dx >= 0) & (dx + w < S)).all()):
        return _write_inside(region, win, dy, dx)
    ty = dy[:, None] + torch.arange(h, device=dev)          # (n, h)
    tx = dx[:, None] + torch.arange(w, device=dev)
    ty = torch.where((ty >= 0) & (ty < R - 1), ty, torch.full_like(ty, R - 1))
    tx = torch.where((tx >= 0) & (tx < S - 1), tx, torch.full_like(tx, S - 1))
    if _scatters(region, win):
        _scatter_window(region, win, ty, tx)
        return region
    rows = torch.arange(n, device=dev)[:, None, None]
    region[rows, :, ty[:, :, None], tx[:, None, :]] = win.permute(0, 2, 3, 1)
    return region


def _scatters(region, win):
    """Whether `_scatter_window` applies: a contiguous region of the window's dtype."""
    return region.is_contiguous() and region.dtype == win.dtype


def _scatter_window(region, win, ty, tx):
    """``region[i, :, ty[i]][:, :, tx[i]] = win[i]`` for each i, in place, by one scatter
    along the flattened map (3-6x faster than indexing an unfolded view); `region` (n, C, R,
    S) contiguous, rows ty (n, h), columns tx (n, w) (repeated entries: the trash row and
    column, whose value is left undefined)."""
    n, Cc, R, S = region.shape
    idx = _flat_positions(ty, tx, S).expand(n, Cc, -1)
    region.view(n, Cc, R * S).scatter_(2, idx, win.reshape(n, Cc, -1))


def _flat_positions(ty, tx, S):
    """(n, 1, h * w) positions in a flattened map of width S of rows ty (n, h) x columns
    tx (n, w)."""
    return (ty[:, :, None] * S + tx[:, None, :]).reshape(ty.shape[0], 1, -1)


class _State:
    """A windowed value for a candidate batch: n candidates x k windows."""

    __slots__ = ("win", "oy", "ox")

    def __init__(self, win, oy, ox):
        self.win = win        # (n, k, C, h, w)
        self.oy = oy          # (n, k) window origins
        self.ox = ox


# ---------------------------------------------------------------------------------------------
class IncrementalEvaluator:
    """Evaluates candidates (image, k pixels, values) through `model` by delta inference.

    Use `IncrementalEvaluator.build(model, images)`, which returns None when the model cannot be
    traced, nothing is gained (the first node already runs dense), or the evaluator fails the
    probe check.

    Attributes
    ----------
    bytes_per_image : int
        Memory of one image's cached clean activations.
    windowed : int
        Number of graph nodes evaluated on windows.
    """

    def __init__(self, model, images, *, plan=None):
        self.model = model
        B, C, H, W = images.shape
        self.shape = (C, H, W)
        dev = images.device
        if plan is None:
            plan = plan_model(model, (C, H, W), device=dev)
        self.gm, self.plans, self.out, self.x_node = plan
        self.modules = dict(self.gm.named_modules())
        self.nodes = [n for n in self.gm.graph.nodes if n.op != "output"]
        self.tables = {}
        for node, p in self.plans.items():
            if p.mode in ("window",) or p.kind == "flatlin":
                self.tables[node] = (torch.as_tensor(p.ay.origin, device=dev),
                                     torch.as_tensor(p.ax.origin, device=dev))
        self.windowed = sum(p.mode == "window" and p.kind != "input"
                            for p in self.plans.values())
        dense = [math.prod(p.shape[1:]) for p in self.plans.values()
                 if p.mode == "dense" and p.shape is not None]
        #: candidates per call that keep the dense part's largest map near 64 MiB
        self.chunk = int(min(1024, max(16, (64 << 20) // (4 * max(dense, default=1)))))
        keep = [n for n, p in self.plans.items() if p.cache]
        outs = [n for n, p in self.plans.items() if p.kind in ("flatlin", "gap")]
        # clean activations, image by image; each kept map padded as its readers pad, plus a
        # trash row and column (bottom, right) that out-of-region writes go to
        per = {n: [] for n in keep + outs}
        for i in range(B):
            env = _clean_values(self.gm, self.x_node, images[i:i + 1])
            for n in per:
                per[n].append(env[n].clone())
            if i == 0:
                self.consts = {n: env[n] for n, p in self.plans.items() if p.mode == "const"}
        self.padded = {}
        self.clean = {}
        for n, v in per.items():
            v = torch.cat(v)
            if n in outs:
                self.clean[n] = v
            for spec in self.plans[n].pads:
                t, bt, lft, r, fill = spec
                self.padded[n, spec] = F.pad(v, (lft, r + 1, t, bt + 1), value=fill)
        self.bytes_per_image = int(sum(t[0].numel() * t.element_size()
                                       for t in list(self.padded.values())
                                       + list(self.clean.values())))
        mat = [math.prod(p.shape[1:]) for p in self.plans.values()
               if p.materialise and p.shape is not None]
        self.chunk = int(min(self.chunk, max(16, (64 << 20) // (4 * max(mat, default=1)))))
        self.flat_weights = {}
        for n in outs:
            p = self.plans[n]
            if p.kind != "flatlin":
                continue
            src = p.params["src"]
            Cs, Hs, Ws = self.plans[src].shape[1:]
            w = p.params["weight"]
            self.flat_weights[n] = w.reshape(w.shape[0], Cs, Hs, Ws).permute(2, 3, 1, 0) \
                .contiguous()

    @classmethod
    def build(cls, model, images, *, probe=6, pixels=1, plan=None):
        """An evaluator for `model` on `images`, or None (the reason logged at debug level)."""
        try:
            ev = cls(model, images, plan=plan)
        except Exception as exc:  # noqa: BLE001 - any tracing problem means the full path
            log.debug("delta inference unavailable for %s: %s: %s", type(model).__name__,
                      type(exc).__name__, exc)
            return None
        if not any(p.mode == "window" and p.kind in ("conv", "maxpool", "avgpool")
                   for p in ev.plans.values()):
            log.debug("delta inference gains nothing for %s", type(model).__name__)
            return None
        try:
            ok, err = ev._probe(images, probe, pixels)
        except Exception as exc:  # noqa: BLE001
            log.debug("delta inference probe failed for %s: %s: %s", type(model).__name__,
                      type(exc).__name__, exc)
            return None
        if not ok:
            log.info("delta inference disagrees with the full model of %s (relative error "
                     "%.2g); full evaluations are used", type(model).__name__, err)
            return None
        return ev

    def _probe(self, images, n, pixels):
        B, (C, H, W) = images.shape[0], self.shape
        dev = images.device
        g = torch.Generator().manual_seed(1234)
        b = torch.randint(0, B, (n,), generator=g).to(dev)
        corners = torch.tensor([[0, 0], [H - 1, W - 1], [0, W - 1], [H - 1, 0]])
        pos = torch.stack([torch.randint(0, H, (n, pixels), generator=g),
                           torch.randint(0, W, (n, pixels), generator=g)], -1)
        for i in range(min(n, 4)):
            pos[i, 0] = corners[i]
        ys, xs = pos[..., 0].to(dev), pos[..., 1].to(dev)
        lo = images.amin(dim=(0, 2, 3))
        hi = images.amax(dim=(0, 2, 3))
        vals = (lo + (hi - lo) * torch.rand(n, pixels, C, generator=g).to(dev)).to(images.dtype)
        fast = self.logits(b, ys, xs, vals)
        full_in = images[b].clone()
        for j in range(pixels):
            full_in[torch.arange(n, device=dev), :, ys[:, j], xs[:, j]] = vals[:, j]
        out = self.model(full_in)
        full = out[1] if isinstance(out, (tuple, list)) else out
        scale = float(full.abs().max()) + 1.0
        err = float((fast - full).abs().max()) / scale
        return err <= PROBE_RTOL, err

    # -----------------------------------------------------------------------------------------
    def logits(self, b, ys, xs, values):
        """Logits (n, K) of candidates: image index ``b`` (n,), pixel rows and columns ``ys``,
        ``xs`` (n,) or (n, k), values (n, C) or (n, k, C)."""
        b = b.long()
        if ys.ndim == 1:
            ys, xs, values = ys[:, None], xs[:, None], values[:, None, :]
        ys, xs = ys.long(), xs.long()
        n, k = ys.shape
        env = {}
        for node in self.nodes:
            p = self.plans[node]
            if p.mode == "const":
                env[node] = self.consts[node]
            elif p.mode == "skip":
                continue
            elif p.kind == "input":
                win = values.reshape(n, k, -1, 1, 1)
                env[node] = _State(win, ys, xs)
            elif p.mode == "window":
                env[node] = self._window(node, p, env, b, ys, xs, n, k)
            elif p.kind == "flatlin":
                env[node] = self._flatlin(node, p, env, b, n, k)
            elif p.kind == "gap":
                env[node] = self._gap(node, p, env, b, n, k)
            elif p.kind == "shape":
                env[node] = self._call(node, self._dense_args(node, env, b, n, meta=True))
            else:
                env[node] = self._call(node, self._dense_args(node, env, b, n))
        return env[self.out]

    def _origins(self, node, ys, xs):
        ty, tx = self.tables[node]
        return ty[ys], tx[xs]

    def _region(self, src, spec, b, gy, gx, h, w):
        """Clean map of `src` on regions (gy, gx, h, w) in map coordinates (the padded copy
        `spec` covers them) -> (len(b), C, h, w)."""
        maps = self.padded[src, spec]
        n = b.shape[0]
        if maps.device.type == "cpu" and n and bool((b == b[0]).all()):
            # one image (most chunks of boxes): one gather along its flattened map, 4-6x
            # faster than indexing an unfolded view (on CUDA the check would synchronise)
            _, C, Hp, Wp = maps.shape
            ry = (gy + spec[0])[:, None] + torch.arange(h, device=maps.device)
            rx = (gx + spec[2])[:, None] + torch.arange(w, device=maps.device)
            pos = _flat_positions(ry, rx, Wp).expand(n, C, -1)
            flat = maps.index_select(0, b[:1]).reshape(1, C, Hp * Wp)
            return flat.expand(n, C, -1).gather(2, pos).reshape(n, C, h, w)
        view = maps.unfold(2, h, 1).unfold(3, w, 1)
        return view[b, :, gy + spec[0], gx + spec[2]]

    def _assemble(self, src, st, b, gy, gx, h, w, spec, inside=False):
        """The changed map of `src` on the regions (gy, gx, h, w) (n, k) -> (n*k, C, h, w).

        With ``inside`` (one pixel, and the plan proved that `src`'s window lies in the region)
        the windows are written directly; otherwise pass h, w one larger than needed: the last
        row and column are trash that out-of-region entries go to."""
        n, k = gy.shape
        if inside and k == 1:
            region = self._region(src, spec, b, gy[:, 0], gx[:, 0], h, w)
            _write_inside(region, st.win[:, 0], st.oy[:, 0] - gy[:, 0], st.ox[:, 0] - gx[:, 0])
            return region
        bb = b.repeat_interleave(k)
        region = self._region(src, spec, bb, gy.reshape(-1), gx.reshape(-1), h, w)
        for j in range(st.win.shape[1]):
            dy = st.oy[:, j:j + 1] - gy                      # (n, k)
            dx = st.ox[:, j:j + 1] - gx
            wj = st.win[:, j] if k == 1 else \
                st.win[:, j:j + 1].expand(-1, k, -1, -1, -1).reshape(n * k, *st.win.shape[2:])
            _write(region, wj, dy.reshape(-1), dx.reshape(-1))
        return region

    def _window(self, node, p, env, b, ys, xs, n, k):
        oy, ox = self._origins(node, ys, xs)               # (n, k)
        h, w = p.ay.win, p.ax.win
        if p.kind == "pointwise":
            args = fx.node.map_arg(node.args, lambda a: _unwrap(env[a]))
            kwargs = fx.node.map_arg(node.kwargs, lambda a: _unwrap(env[a]))
            src = next(a for a in node.all_input_nodes if isinstance(env[a], _State))
            st = env[src]
            shape = st.win.shape
            flat = lambda v: v.t.reshape(n * k, *shape[2:]) if isinstance(v, _Win) else v  # noqa: E731
            args = tuple(_map(args, flat))
            kwargs = {kk: _map1(v, flat) for kk, v in kwargs.items()}
            out = self._call(node, (args, kwargs))
            return _State(out.reshape(n, k, *out.shape[1:]), st.oy, st.ox)
        if p.kind in ("join", "cat"):
            srcs = [a for a in _flat_nodes(node.args) + _flat_nodes(node.kwargs)
                    if isinstance(env[a], _State)]
            parts = {}
            for a in srcs:
                if k == 1 and p.inside.get(a):
                    parts[a] = _Win(self._assemble(a, env[a], b, oy, ox, h, w, _NOPAD, True))
                else:
                    parts[a] = _Win(self._assemble(a, env[a], b, oy, ox, h + 1, w + 1, _NOPAD)
                                    [:, :, :h, :w])
            args = _map(fx.node.map_arg(node.args, lambda a: parts.get(a, env[a])), _unwin)
            kwargs = {kk: _map1(v, _unwin) for kk, v in
                      fx.node.map_arg(node.kwargs, lambda a: parts.get(a, env[a])).items()}
            out = self._call(node, (tuple(args), kwargs))
            return _State(out.reshape(n, k, *out.shape[1:]), oy, ox)
        # conv and pools: gather the input region in unpadded coordinates
        prm = p.params
        src = node.all_input_nodes[0]
        gy, gx, gh, gw, spec = window_region(p, oy, ox)
        if k == 1 and p.inside.get(src):
            inp = self._assemble(src, env[src], b, gy, gx, gh, gw, spec, True)
        else:
            inp = self._assemble(src, env[src], b, gy, gx, gh + 1, gw + 1, spec)[:, :, :gh, :gw] \
                .contiguous()
        if p.kind == "conv":
            out = F.conv2d(inp, prm["weight"], prm["bias"], prm["stride"], 0, prm["dilation"],
                           prm["groups"])
        elif p.kind == "maxpool":
            out = F.max_pool2d(inp, prm["kernel"], prm["stride"], 0, prm["dilation"])
        else:
            out = F.avg_pool2d(inp, prm["kernel"], prm["stride"], 0)
        return _State(out.reshape(n, k, *out.shape[1:]), oy, ox)

    def _materialise(self, node, st, b, n):
        """The full changed map (n, C, H, W) of windowed `node`."""
        H, W = self.plans[node].shape[2:]
        full = self.padded[node, _NOPAD][:, :, :H, :W].index_select(0, b)
        for j in range(st.win.shape[1]):   # windows always lie inside their map
            _write_inside(full, st.win[:, j], st.oy[:, j], st.ox[:, j])
        return full

    def _dense_args(self, node, env, b, n, meta=False):
        cache = env.setdefault("__materialised__", {})

        def load(a):
            v = env[a]
            if not isinstance(v, _State):
                return v
            if meta:
                shape = (n,) + tuple(self.clean_shape(a)[1:])
                return torch.empty(shape, device="meta")
            if a not in cache:
                cache[a] = self._materialise(a, v, b, n)
            return cache[a]

        return fx.node.map_arg(node.args, load), fx.node.map_arg(node.kwargs, load)

    def clean_shape(self, node):
        return self.plans[node].shape

    def _flatlin(self, node, p, env, b, n, k):
        src = p.params["src"]
        st = env[src]
        lin_clean = self.clean[node].index_select(0, b)     # (n, D)
        Hs, Ws = self.plans[src].shape[2:]
        if k > 1:
            full = self._materialise(src, st, b, n)
            clean = self.padded[src, _NOPAD][:, :, :Hs, :Ws].index_select(0, b)
            return lin_clean + (full - clean).flatten(1) @ p.params["weight"].t()
        oy, ox = st.oy[:, 0], st.ox[:, 0]
        h, w = st.win.shape[3:]
        clean = self._region(src, _NOPAD, b, oy, ox, h, w)
        delta = (st.win[:, 0] - clean).permute(0, 2, 3, 1).reshape(n, -1)
        Wp = self.flat_weights[node]                       # (H, W, C, D)
        key = oy * Ws + ox
        order = torch.argsort(key, stable=True)
        uniq, counts = torch.unique_consecutive(key[order], return_counts=True)
        delta = delta[order]
        lat = lin_clean[order]
        start = 0
        for kk, cnt in zip(uniq.tolist(), counts.tolist()):
            y0, x0 = divmod(kk, Ws)
            block = Wp[y0:y0 + h, x0:x0 + w].reshape(-1, Wp.shape[3])
            lat[start:start + cnt] += delta[start:start + cnt] @ block
            start += cnt
        out = torch.empty_like(lat)
        out[order] = lat
        return out

    def _gap(self, node, p, env, b, n, k):
        src = p.params["src"]
        st = env[src]
        out = self.clean[node].index_select(0, b)
        Hs, Ws = self.plans[src].shape[2:]
        if k > 1:  # overlapping windows: the sum over the materialised change
            full = self._materialise(src, st, b, n)
            clean = self.padded[src, _NOPAD][:, :, :Hs, :Ws].index_select(0, b)
            delta = (full - clean).sum(dim=(2, 3))
        else:
            h, w = st.win.shape[3:]
            clean = self._region(src, _NOPAD, b, st.oy[:, 0], st.ox[:, 0], h, w)
            delta = (st.win[:, 0] - clean).sum(dim=(2, 3))
        return out + (delta / (Hs * Ws)).reshape(out.shape)

    def _call(self, node, args_kwargs):
        args, kwargs = args_kwargs
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        self_obj, *rest = args
        return getattr(self_obj, node.target)(*rest, **kwargs)

    def macs(self):
        """``(full, delta)``: multiply-adds of convolutions and linear layers for one whole
        image and for one one-pixel candidate (windows, dense part, windowed bottleneck)."""
        full = delta = 0
        for node, p in self.plans.items():
            conv = self._conv_of(node)
            if conv is not None and p.shape is not None:
                cin_g, kh, kw = conv.shape[1:]
                per_out = p.shape[1] * cin_g * kh * kw
                full += per_out * p.shape[2] * p.shape[3]
                if p.mode == "window":
                    delta += per_out * p.ay.win * p.ax.win
                elif p.mode == "dense":
                    delta += per_out * p.shape[2] * p.shape[3]
            lin = self._linear_of(node)
            if lin is not None:
                full += lin.numel()
                if p.kind == "flatlin":
                    src = self.plans[p.params["src"]]
                    delta += lin.shape[0] * src.shape[1] * src.ay.win * src.ax.win
                elif p.mode == "dense":
                    delta += lin.numel()
        return full, delta

    def _weight_of(self, node, module_cls, function):
        """The weight of a module of `module_cls` or a call of `function`, else None."""
        if node.op == "call_module" and isinstance(self.modules[node.target], module_cls):
            return self.modules[node.target].weight
        if node.op == "call_function" and node.target is function:
            w = _arg(node, 1, "weight", None)
            return self.consts.get(w) if isinstance(w, fx.Node) else w
        return None

    def _conv_of(self, node):
        return self._weight_of(node, nn.Conv2d, F.conv2d)

    def _linear_of(self, node):
        return self._weight_of(node, nn.Linear, F.linear)

    def describe(self):
        """One line per windowed node: name, op, window size and map size."""
        lines = []
        for node, p in self.plans.items():
            if p.mode == "window" and p.kind != "input":
                lines.append(f"{node.name}: {p.kind} window {p.ay.win}x{p.ax.win} of "
                             f"{p.ay.size}x{p.ax.size}")
        return lines


class _Win:
    """Marks an assembled (n*k, C, h, w) window among a node's arguments."""

    __slots__ = ("t",)

    def __init__(self, t):
        self.t = t


def _unwrap(v):
    return _Win(v.win) if isinstance(v, _State) else v


def _unwin(v):
    return v.t if isinstance(v, _Win) else v


def _map(seq, fn):
    return [_map1(v, fn) for v in seq]


def _map1(v, fn):
    if isinstance(v, tuple):
        return tuple(_map1(x, fn) for x in v)
    if isinstance(v, list):
        return [_map1(x, fn) for x in v]
    return fn(v)


def _flat_nodes(a):
    out = []
    fx.node.map_arg(a, lambda n: out.append(n) or n)
    return out
