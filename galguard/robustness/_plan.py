"""Delta-inference plans: the model traced with `torch.fx`, and for every node its mode
(window, dense or const), the window each changed pixel reaches (per axis: map size, window size,
origin table), and the clean maps later nodes read. See `galguard.robustness._incremental` for
how candidates are evaluated on them.
"""

import logging
import operator
import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["plan_model"]

# one logger for delta inference: the plan's messages are the evaluator's
log = logging.getLogger("galguard.robustness._incremental")

#: Relative tolerance of the probe check (of the largest |logit| + 1).
PROBE_RTOL = 1e-4

#: A node whose window would cover at least this fraction of its map runs dense.
DENSE_FRACTION = 0.75

_EMPTY = 1 << 40                                   # lower end of an empty interval

_POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.CELU,
                      nn.SELU, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
                      nn.Mish, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d,
                      nn.AlphaDropout, nn.PReLU)
_POINTWISE_FUNCTIONS = {torch.relu, F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu,
                        F.celu, F.selu, F.hardtanh, F.hardswish, F.hardsigmoid, F.mish,
                        F.softplus, torch.tanh, F.tanh, torch.sigmoid, F.sigmoid, torch.asinh,
                        torch.arcsinh, torch.sinh, torch.abs, torch.exp, torch.log1p,
                        torch.square, torch.clamp, torch.clip, torch.nan_to_num, operator.neg,
                        torch.neg, F.dropout, F.dropout2d, torch.sqrt, torch.log}
_POINTWISE_METHODS = {"relu", "relu_", "tanh", "sigmoid", "asinh", "arcsinh", "sinh", "abs",
                      "exp", "log1p", "square", "clamp", "clip", "clamp_", "nan_to_num", "neg",
                      "float", "contiguous", "clone", "sqrt", "log", "to"}
_BINARY_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add,
                     torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum,
                     operator.iadd, operator.imul, operator.isub, operator.itruediv}
_BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "mul_", "sub_", "div_", "maximum",
                   "minimum"}
_SHAPE_METHODS = {"size", "dim"}

_logged = set()


def _log_once(key, msg, *args):
    if key not in _logged:
        _logged.add(key)
        log.info(msg, *args)


# ---------------------------------------------------------------------------------------------
# tracing
class _Composite(nn.Module):
    """Preprocessing and network as one traceable module (no input validation)."""

    def __init__(self, pre, net):
        super().__init__()
        self.pre = pre
        self.net = net

    def forward(self, x):
        return self.net(self.pre(x))


def _traceable(model):
    """The module to trace for `model`, and whether it returns (latent, logits)."""
    from ..models.classifier import GalaxyClassifier
    from ..models.wrap import NoPreprocess, WrappedNetwork

    if isinstance(model, GalaxyClassifier):
        net = model.network
        if isinstance(net, WrappedNetwork):
            net = net.module      # the logits only: the latent hook is for the other checks
        pre = model.preprocess
        return net if isinstance(pre, NoPreprocess) else _Composite(pre, net)
    return model


#: torch.fx patches ``torch.nn.Module.__call__`` process-wide while it traces: one trace at a time
_TRACE_LOCK = threading.Lock()


class _OwnThreadTracer(fx.Tracer):
    """A tracer that records only its own thread: module calls and attribute reads of other
    threads (a model checked in a Dask worker thread while another traces) run as usual."""

    def __init__(self):
        super().__init__()
        self._owner = threading.get_ident()

    def call_module(self, m, forward, args, kwargs):
        if threading.get_ident() != self._owner:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if threading.get_ident() != self._owner:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def _trace(model):
    root = _traceable(model)
    with _TRACE_LOCK:
        saved = _snapshot(root)
        try:
            tracer = _OwnThreadTracer()
            graph = tracer.trace(root)
            gm = fx.GraphModule(tracer.root, graph, type(root).__name__)
        finally:
            _restore(saved)    # tracing runs forward() with proxies: undo what it changed
    outs = [n for n in gm.graph.nodes if n.op == "output"]
    out = outs[0].args[0]
    if isinstance(out, (tuple, list)):
        if len(out) != 2:
            raise ValueError(f"model output is a sequence of length {len(out)}")
        out = out[1]
    if not isinstance(out, fx.Node):
        raise ValueError("model logits are not a traced value")
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise ValueError(f"model takes {len(inputs)} inputs, not one image tensor")
    return gm, inputs[0], out


def _snapshot(root):
    """Each submodule's plain attributes (shallow copies of lists, dicts and sets)."""
    out = []
    for m in root.modules():
        attrs = {}
        for k, v in m.__dict__.items():
            if k in ("_parameters", "_buffers", "_modules"):
                continue
            attrs[k] = (v, type(v)(v)) if type(v) in (list, dict, set) else (v, None)
        out.append((m, attrs))
    return out


def _restore(saved):
    for m, attrs in saved:
        for k in [k for k in m.__dict__ if k not in attrs
                  and k not in ("_parameters", "_buffers", "_modules")]:
            del m.__dict__[k]
        for k, (v, copy) in attrs.items():
            if copy is not None:       # the same object, its old contents
                if isinstance(v, list):
                    v[:] = copy
                else:
                    v.clear()
                    v.update(copy)
            m.__dict__[k] = v


# ---------------------------------------------------------------------------------------------
# geometry: per node and axis, the interval [lo, hi] each source position reaches
def _conv_interval(lo, hi, *, size_out, kernel, stride, pad, dilation):
    empty = lo > hi
    a = -(-(lo + pad - dilation * (kernel - 1)) // stride)          # ceil
    b = (hi + pad) // stride
    a = np.maximum(a, 0)
    b = np.minimum(b, size_out - 1)
    empty = empty | (a > b)
    a = np.where(empty, _EMPTY, a)
    b = np.where(empty, -1, b)
    return a, b


class _Axis:
    """Window plan of one node along one axis: map size, window size, origin table."""

    __slots__ = ("size", "lo", "hi", "win", "origin")

    def __init__(self, size, lo, hi):
        self.size = int(size)
        self.lo, self.hi = lo, hi
        extent = np.where(lo <= hi, hi - lo + 1, 0)
        self.win = int(min(max(1, int(extent.max(initial=1))), self.size))
        self.origin = np.where(lo <= hi, np.clip(lo, 0, self.size - self.win), 0)


def _inside(src, gy, gh, gx, gw):
    """Whether `src`'s window lies inside the region (gy, gh) x (gx, gw) for every changed
    pixel (the region origins are per source row / column, as the tables)."""
    if src.ay is None:
        return False
    return bool(np.all(src.ay.origin >= gy) and np.all(src.ay.origin + src.ay.win <= gy + gh)
                and np.all(src.ax.origin >= gx) and np.all(src.ax.origin + src.ax.win <= gx + gw))


def _union(axes):
    lo = np.minimum.reduce([a.lo for a in axes])
    hi = np.maximum.reduce([a.hi for a in axes])
    return lo, hi


# ---------------------------------------------------------------------------------------------
# planning
class _NodePlan:
    __slots__ = ("node", "mode", "kind", "ay", "ax", "params", "pads", "materialise", "why",
                 "shape", "inside")

    def __init__(self, node, mode, kind=None, ay=None, ax=None, params=None, why=None):
        self.node, self.mode, self.kind = node, mode, kind
        self.ay, self.ax, self.params = ay, ax, params
        self.pads = set()          # clean map kept, padded (top, bottom, left, right, fill)
        self.materialise = False   # a dense node reads it
        self.why = why             # for the first dense nodes: why the window mode ends here
        self.shape = None          # the node's value's shape on one image
        self.inside = {}           # input node -> its window always lies in the read region

    @property
    def cache(self):
        return bool(self.pads)

    def cache_bytes(self):
        """Bytes of this node's cached clean maps per image (each padded copy with its trash
        row and column)."""
        if not self.pads or self.shape is None:
            return 0
        C, H, W = self.shape[1:]
        return sum(4 * C * (H + t + b + 1) * (W + lft + r + 1) for t, b, lft, r, _ in self.pads)


def _is_per_channel(t, channels):
    """A constant that broadcasts over (N, C, H, W) without varying along H or W or N."""
    if not isinstance(t, torch.Tensor):
        return isinstance(t, (int, float, bool))
    if t.ndim > 4 or t.numel() == 1:
        return t.ndim <= 4
    shape = (1,) * (4 - t.ndim) + tuple(t.shape)
    return shape[0] == 1 and shape[2] == 1 and shape[3] == 1 and shape[1] in (1, channels)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _conv_params(weight, stride, padding, dilation, groups, in_hw, padding_mode="zeros"):
    if padding_mode != "zeros":
        return None
    kh, kw = weight.shape[2:]
    stride, dilation = _pair(stride), _pair(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            pads = ((0, 0), (0, 0))
        elif padding == "same":
            tot = [d * (k - 1) for d, k in zip(dilation, (kh, kw))]
            pads = tuple((t // 2, t - t // 2) for t in tot)
        else:
            return None
    else:
        p = _pair(padding)
        pads = ((p[0], p[0]), (p[1], p[1]))
    outs = [(n + pa + pb - d * (k - 1) - 1) // s + 1
            for n, (pa, pb), d, k, s in zip(in_hw, pads, dilation, (kh, kw), stride)]
    return dict(kernel=(kh, kw), stride=stride, dilation=dilation, pads=pads, groups=groups,
                out=tuple(outs))


def _pool_params(kind, kernel, stride, padding, dilation, ceil_mode, in_hw, *,
                 count_include_pad=True, divisor_override=None, return_indices=False):
    if ceil_mode or return_indices or divisor_override is not None:
        return None
    k = _pair(kernel)
    s = _pair(k if stride is None or stride == [] or stride == () else stride)
    p = _pair(padding)
    d = _pair(dilation)
    if kind == "avgpool" and not count_include_pad and any(p):
        return None
    outs = [(n + 2 * pp - dd * (kk - 1) - 1) // ss + 1 for n, pp, dd, kk, ss in zip(in_hw, p, d, k, s)]
    return dict(kernel=k, stride=s, dilation=d, pads=((p[0], p[0]), (p[1], p[1])), out=tuple(outs))


def _arg(node, i, name, default):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


class _Planner:
    def __init__(self, gm, x_node, out_node, clean, H, W, footprint=(1, 1)):
        self.gm = gm
        self.footprint = tuple(int(f) for f in footprint)
        self.modules = dict(gm.named_modules())
        self.x = x_node
        self.out = out_node
        self.clean = clean            # node -> value on one image (batch 1)
        self.H, self.W = H, W
        self.plans = {}

    def value(self, a):
        return self.clean[a] if isinstance(a, fx.Node) else a

    def run(self):
        for node in self.gm.graph.nodes:
            if node.op == "output":
                break
            p = self.plans[node] = self.plan_node(node)
            v = self.clean.get(node)
            p.shape = tuple(v.shape) if isinstance(v, torch.Tensor) else None
        return self.plans

    # -- helpers
    def dep_args(self, node):
        return [a for a in node.all_input_nodes if self.plans[a].mode != "const"]

    def spatial(self, node):
        v = self.clean.get(node)
        return isinstance(v, torch.Tensor) and v.ndim == 4 and v.is_floating_point()

    def window_plan(self, node, kind, ay, ax, params=None):
        fy, fx_ = ay.win / ay.size, ax.win / ax.size
        if fy * fx_ >= DENSE_FRACTION and min(ay.size, ax.size) > 1:
            return self.dense(node, f"the window covers {ay.win}x{ax.win} of the "
                                    f"{ay.size}x{ax.size} map")
        return _NodePlan(node, "window", kind, ay, ax, params)

    def dense(self, node, why):
        return _NodePlan(node, "dense", why=why)

    # -- the rules
    def plan_node(self, node):
        if node is self.x:
            fh, fw = self.footprint
            ay = _Axis(self.H, np.arange(self.H), np.minimum(np.arange(self.H) + fh - 1,
                                                              self.H - 1))
            ax = _Axis(self.W, np.arange(self.W), np.minimum(np.arange(self.W) + fw - 1,
                                                              self.W - 1))
            return _NodePlan(node, "window", "input", ay, ax)
        if node.op == "get_attr":
            return _NodePlan(node, "const")
        deps = self.dep_args(node)
        if not deps:
            return _NodePlan(node, "const")
        if any(self.plans[a].mode == "dense" for a in deps):
            return _NodePlan(node, "dense")                  # already dense upstream: silent
        # every dependency is windowed
        if _is_shape_query(node):
            return _NodePlan(node, "dense", "shape")
        if not self.spatial(node):
            return self.dense(node, "the first non-spatial op")
        kind, params = self.classify(node, deps)
        if kind is None:
            return self.dense(node, params or "an op delta inference does not know")
        if kind in ("pointwise",):
            src = self.plans[deps[0]]
            return _NodePlan(node, "window", kind, src.ay, src.ax, params)
        if kind in ("join", "cat"):
            ps = [self.plans[a] for a in deps]
            ay = _Axis(ps[0].ay.size, *_union([p.ay for p in ps]))
            ax = _Axis(ps[0].ax.size, *_union([p.ax for p in ps]))
            plan = self.window_plan(node, kind, ay, ax, params)
            plan.inside = {a: _inside(self.plans[a], ay.origin, ay.win, ax.origin, ax.win)
                           for a in deps}
            return plan
        # conv / pools
        src = self.plans[deps[0]]
        (pyt, _), (pxl, _) = params["pads"]
        Ho, Wo = params["out"]
        lo, hi = _conv_interval(src.ay.lo, src.ay.hi, size_out=Ho, kernel=params["kernel"][0],
                                stride=params["stride"][0], pad=pyt,
                                dilation=params["dilation"][0])
        ay = _Axis(Ho, lo, hi)
        lo, hi = _conv_interval(src.ax.lo, src.ax.hi, size_out=Wo, kernel=params["kernel"][1],
                                stride=params["stride"][1], pad=pxl,
                                dilation=params["dilation"][1])
        ax = _Axis(Wo, lo, hi)
        plan = self.window_plan(node, kind, ay, ax, params)
        (kh, kw), (sh, sw), (dh, dw) = params["kernel"], params["stride"], params["dilation"]
        plan.inside = {deps[0]: _inside(src, ay.origin * sh - pyt, (ay.win - 1) * sh
                                        + dh * (kh - 1) + 1, ax.origin * sw - pxl,
                                        (ax.win - 1) * sw + dw * (kw - 1) + 1)}
        return plan

    def classify(self, node, deps):
        """(kind, params) of a node whose dependencies are all windowed, or (None, reason)."""
        shape_in = self.clean[deps[0]].shape
        C = self.clean[node].shape[1]
        same_map = self.clean[node].shape[2:] == shape_in[2:]
        if node.op == "call_module":
            m = self.modules[node.target]
            if isinstance(m, nn.Conv2d):
                p = _conv_params(m.weight, m.stride, m.padding, m.dilation, m.groups,
                                 shape_in[2:], m.padding_mode)
                if p is None:
                    return None, f"padding mode {m.padding_mode!r}"
                p.update(weight=m.weight, bias=m.bias)
                return "conv", p
            if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
                kind = "maxpool" if isinstance(m, nn.MaxPool2d) else "avgpool"
                p = _pool_params(kind, m.kernel_size, m.stride, m.padding,
                                 getattr(m, "dilation", 1), m.ceil_mode, shape_in[2:],
                                 count_include_pad=getattr(m, "count_include_pad", True),
                                 divisor_override=getattr(m, "divisor_override", None),
                                 return_indices=getattr(m, "return_indices", False))
                return (kind, p) if p is not None else (None, "pooling options")
            if isinstance(m, nn.BatchNorm2d):
                if m.training:
                    return None, "batch norm in training mode"
                return "pointwise", None
            if isinstance(m, _POINTWISE_MODULES):
                if isinstance(m, nn.PReLU) and m.weight.numel() not in (1, C):
                    return None, "PReLU weights"
                if m.training and isinstance(m, (nn.Dropout, nn.Dropout2d, nn.AlphaDropout)):
                    return None, "dropout in training mode"
                return ("pointwise", None) if same_map else (None, "shape change")
            return None, None
        target = node.target
        if node.op == "call_function":
            if target is F.conv2d:
                w = self.value(_arg(node, 1, "weight", None))
                if not isinstance(w, torch.Tensor) or _depends(node, 1, "weight", self.plans):
                    return None, "convolution weights depend on the image"
                b = self.value(_arg(node, 2, "bias", None))
                p = _conv_params(w, _arg(node, 3, "stride", 1), _arg(node, 4, "padding", 0),
                                 _arg(node, 5, "dilation", 1), _arg(node, 6, "groups", 1),
                                 shape_in[2:])
                p.update(weight=w, bias=b)
                return "conv", p
            if target in (F.max_pool2d, F.avg_pool2d, torch.max_pool2d):
                kind = "maxpool" if target in (F.max_pool2d, torch.max_pool2d) else "avgpool"
                if kind == "maxpool":
                    p = _pool_params(kind, _arg(node, 1, "kernel_size", None),
                                     _arg(node, 2, "stride", None), _arg(node, 3, "padding", 0),
                                     _arg(node, 4, "dilation", 1), _arg(node, 5, "ceil_mode",
                                                                         False), shape_in[2:],
                                     return_indices=_arg(node, 6, "return_indices", False))
                else:
                    p = _pool_params(kind, _arg(node, 1, "kernel_size", None),
                                     _arg(node, 2, "stride", None), _arg(node, 3, "padding", 0),
                                     1, _arg(node, 4, "ceil_mode", False), shape_in[2:],
                                     count_include_pad=_arg(node, 5, "count_include_pad", True),
                                     divisor_override=_arg(node, 6, "divisor_override", None))
                return (kind, p) if p is not None else (None, "pooling options")
            if target is F.batch_norm:
                if _arg(node, 5, "training", False):
                    return None, "batch norm in training mode"
                return "pointwise", None
            if target is torch.cat or target is torch.concat:
                dim = _arg(node, 1, "dim", 0)
                if dim not in (1, -3) or not same_map:
                    return None, f"concatenation along dim {dim}"
                parts = _arg(node, 0, "tensors", ())
                if not all(isinstance(a, fx.Node) and self.plans[a].mode == "window"
                           for a in parts):
                    return None, "concatenation with a constant"
                return "cat", None
            if target in (F.dropout, F.dropout2d) and _arg(node, 2, "training", True):
                return None, "dropout in training mode"
        elif node.op == "call_method":
            if target in _BINARY_METHODS:
                target = {"add": torch.add, "add_": torch.add, "sub": torch.sub,
                          "sub_": torch.sub, "mul": torch.mul, "mul_": torch.mul,
                          "div": torch.div, "div_": torch.div, "maximum": torch.maximum,
                          "minimum": torch.minimum}[target]
            elif target in _POINTWISE_METHODS:
                if target == "to" and any(isinstance(self.value(a), (str, torch.device))
                                          for a in node.args[1:]):
                    return None, "device change"
                return ("pointwise", None) if self._consts_ok(node, C, same_map) \
                    else (None, "non-channel constant")
            else:
                return None, None
        if target in _BINARY_FUNCTIONS:
            tensors = [a for a in list(node.args) + list(node.kwargs.values())
                       if isinstance(a, fx.Node)]
            dep_t = [a for a in tensors if self.plans[a].mode == "window"]
            if len(dep_t) == 1:
                return ("pointwise", None) if self._consts_ok(node, C, same_map) \
                    else (None, "non-channel constant")
            if len(dep_t) == 2 and all(self.clean[a].shape == self.clean[node].shape
                                       for a in dep_t):
                return "join", None
            return None, "join of maps of other shapes"
        if target in _POINTWISE_FUNCTIONS:
            return ("pointwise", None) if self._consts_ok(node, C, same_map) \
                else (None, "non-channel constant")
        return None, None

    def _consts_ok(self, node, C, same_map):
        if not same_map:
            return False
        for a in list(node.args) + list(node.kwargs.values()):
            if isinstance(a, fx.Node) and self.plans[a].mode == "const":
                if not _is_per_channel(self.clean[a], C):
                    return False
        return True


def _depends(node, i, name, plans):
    a = _arg(node, i, name, None)
    return isinstance(a, fx.Node) and plans[a].mode != "const"


def _is_shape_query(node):
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    return (node.op == "call_function" and node.target is getattr
            and len(node.args) > 1 and node.args[1] in ("shape", "ndim"))


def _describe(node, modules):
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", repr(t))


def _clean_values(gm, x_node, images_1):
    """Every node's value on one image (batch 1)."""
    env = {}
    modules = dict(gm.named_modules())

    def load(a):
        return fx.node.map_arg(a, lambda n: env[n])

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = images_1
        elif node.op == "get_attr":
            obj = gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            env[node] = obj
        elif node.op == "call_module":
            env[node] = modules[node.target](*load(node.args), **load(node.kwargs))
        elif node.op == "call_function":
            env[node] = node.target(*load(node.args), **load(node.kwargs))
        elif node.op == "call_method":
            self_obj, *rest = load(node.args)
            env[node] = getattr(self_obj, node.target)(*rest, **load(node.kwargs))
        elif node.op == "output":
            break
    return env


def plan_model(model, image_shape, *, device="cpu", footprint=(1, 1)):
    """The delta-inference plan of `model` for images of `image_shape` (C, H, W).

    ``footprint`` (fh, fw): the changed region is the fh x fw block whose top-left pixel is the
    position (1 x 1: one pixel; larger for an artefact's bounding box, `certify`).

    Returns ``(graph module, plans, logits node)``; raises for untraceable models. Under
    `torch.inference_mode` and eval mode, as the attack runs it.
    """
    gm, x_node, out = _trace(model)
    C, H, W = image_shape
    probe = torch.zeros((1, C, H, W), device=device)
    clean = _clean_values(gm, x_node, probe)
    planner = _Planner(gm, x_node, out, clean, H, W, footprint)
    plans = planner.run()
    _mark_flat_linear(gm, plans, clean)
    _mark_global_pool(gm, plans, clean)
    # which windowed nodes must keep their clean map, and with what padding
    for node, p in plans.items():
        if p.mode in ("const", "skip"):
            continue
        for a in node.all_input_nodes:
            q = plans[a]
            if q.mode != "window":
                continue
            if p.kind in ("flatlin", "gap"):
                q.pads.add(_NOPAD)
                if len(node.all_input_nodes) > 1:
                    q.materialise = True
            elif p.mode == "dense":
                if p.kind != "shape":
                    q.materialise = True
                    q.pads.add(_NOPAD)
            elif p.kind in ("conv", "maxpool", "avgpool"):
                (pt, pb), (pl, pr) = p.params["pads"]
                q.pads.add((pt, pb, pl, pr, float("-inf") if p.kind == "maxpool" else 0.0))
            elif p.kind in ("join", "cat"):
                q.pads.add(_NOPAD)
        if p.kind == "flatlin":
            plans[p.params["src"]].pads.add(_NOPAD)
            if p.params.get("k_dense"):
                plans[p.params["src"]].materialise = True
    modules = dict(gm.named_modules())
    for node, p in plans.items():
        if p.why is not None and p.mode == "dense" and p.kind not in ("flatlin", "gap"):
            _log_once((id(model), node.name), "delta inference of %s: the full forward runs from "
                      "node %r (%s) on: %s", type(model).__name__, node.name,
                      _describe(node, modules), p.why)
    return gm, plans, out, x_node


def _mark_flat_linear(gm, plans, clean):
    """A flatten of a windowed map read only by a linear layer with constant weights becomes
    one ``flatlin`` node: clean output + W[:, window] @ (new - clean)."""
    modules = dict(gm.named_modules())
    for node, p in plans.items():
        if p.mode != "dense" or not _is_flatten(node):
            continue
        src = node.args[0]
        if plans[src].mode != "window" or len(node.users) != 1:
            continue
        (lin,) = node.users
        weight = bias = None
        if lin.op == "call_module" and isinstance(modules[lin.target], nn.Linear):
            weight, bias = modules[lin.target].weight, modules[lin.target].bias
        elif lin.op == "call_function" and lin.target is F.linear and lin.args[0] is node:
            w = _arg(lin, 1, "weight", None)
            b = _arg(lin, 2, "bias", None)
            if isinstance(w, fx.Node) and plans[w].mode == "const" and \
                    (b is None or (isinstance(b, fx.Node) and plans[b].mode == "const")):
                weight, bias = clean[w], (None if b is None else clean[b])
        if weight is None:
            continue
        Cs, Hs, Ws = clean[src].shape[1:]
        if weight.shape[1] != Cs * Hs * Ws:
            continue
        sp = plans[src]
        # the linear layer reads the windows; the flatten is skipped
        lp = _NodePlan(lin, "dense", "flatlin", sp.ay, sp.ax,
                       dict(src=src, weight=weight, bias=bias))
        plans[lin] = lp
        plans[node] = _NodePlan(node, "skip")


def _mark_global_pool(gm, plans, clean):
    """A global average pool of a windowed map (adaptive pool to 1 x 1, or a mean over H and W)
    becomes a ``gap`` node: clean output + sum(new - clean) / (H W) over the window."""
    modules = dict(gm.named_modules())
    for node, p in plans.items():
        if p.mode != "dense" or p.kind is not None or not node.args:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or plans[src].mode != "window":
            continue
        if any(isinstance(a, fx.Node) and a is not src and plans[a].mode != "const"
               for a in node.all_input_nodes):
            continue
        if _is_global_pool(node, modules):
            plans[node] = _NodePlan(node, "dense", "gap", plans[src].ay, plans[src].ax,
                                    dict(src=src))
            plans[node].shape = p.shape


_NOPAD = (0, 0, 0, 0, 0.0)


def window_region(p, oy, ox):
    """The input region a windowed convolution or pool with plan `p` reads for output windows
    at origins (oy, ox): ``(gy, gx, gh, gw, spec)`` in the input map's coordinates, ``spec``
    the padded copy of the clean input map that covers it."""
    prm = p.params
    (pt, _), (pl, _) = prm["pads"]
    (kh, kw), (sh, sw), (dh, dw) = prm["kernel"], prm["stride"], prm["dilation"]
    gh = (p.ay.win - 1) * sh + dh * (kh - 1) + 1
    gw = (p.ax.win - 1) * sw + dw * (kw - 1) + 1
    spec = prm["pads"][0] + prm["pads"][1] + (float("-inf") if p.kind == "maxpool" else 0.0,)
    return oy * sh - pt, ox * sw - pl, gh, gw, spec


def _is_global_pool(node, modules):
    one = (1, [1], (1,), (1, 1), [1, 1])
    if node.op == "call_module":
        m = modules[node.target]
        return isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in one
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        return _arg(node, 1, "output_size", None) in one
    if (node.op == "call_method" and node.target == "mean") or \
            (node.op == "call_function" and node.target is torch.mean):
        dim = _arg(node, 1, "dim", None)
        if isinstance(dim, (tuple, list)) and sorted(int(d) % 4 for d in dim) == [2, 3]:
            return _arg(node, 3, "dtype", None) is None and not node.kwargs.get("dtype")
    return False


def _is_flatten(node):
    if node.op == "call_function" and node.target is torch.flatten:
        return _arg(node, 1, "start_dim", 0) == 1 and _arg(node, 2, "end_dim", -1) == -1
    if node.op == "call_method" and node.target == "flatten":
        return _arg(node, 1, "start_dim", 0) == 1 and _arg(node, 2, "end_dim", -1) == -1
    return False
