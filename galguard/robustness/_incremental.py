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
import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["IncrementalEvaluator", "plan_model"]

log = logging.getLogger(__name__)

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


def _trace(model):
    root = _traceable(model)
    saved = _snapshot(root)
    try:
        gm = fx.symbolic_trace(root)
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
def _empty_like(n):
    return np.full(n, _EMPTY, np.int64), np.full(n, -1, np.int64)


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
    def __init__(self, gm, x_node, out_node, clean, H, W):
        self.gm = gm
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
            ay = _Axis(self.H, np.arange(self.H), np.arange(self.H))
            ax = _Axis(self.W, np.arange(self.W), np.arange(self.W))
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


def plan_model(model, image_shape, *, device="cpu"):
    """The delta-inference plan of `model` for images of `image_shape` (C, H, W).

    Returns ``(graph module, plans, logits node)``; raises for untraceable models. Under
    `torch.inference_mode` and eval mode, as the attack runs it.
    """
    gm, x_node, out = _trace(model)
    C, H, W = image_shape
    probe = torch.zeros((1, C, H, W), device=device)
    clean = _clean_values(gm, x_node, probe)
    planner = _Planner(gm, x_node, out, clean, H, W)
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


# ---------------------------------------------------------------------------------------------
# window arithmetic
def _write_inside(region, win, dy, dx):
    """Write `win` (n, C, h, w) into `region` (n, C, R, S) in place at per-row offsets
    (dy, dx) (n,) that keep it inside."""
    h, w = win.shape[2:]
    view = region.unfold(2, h, 1).unfold(3, w, 1)
    view[torch.arange(region.shape[0], device=region.device), :, dy, dx] = win
    return region


def _write(region, win, dy, dx):
    """Write `win` (n, C, h, w) into `region` (n, C, R, S) in place at per-row offsets
    (dy, dx) (n,). The last row and column of `region` are trash: entries that fall outside
    the rest of it go there."""
    n, Cc, R, S = region.shape
    h, w = win.shape[2:]
    dev = region.device
    if h < R and w < S and bool(((dy >= 0) & (dy + h < R) & (dx >= 0) & (dx + w < S)).all()):
        view = region.unfold(2, h, 1).unfold(3, w, 1)       # (n, C, R-h+1, S-w+1, h, w)
        view[torch.arange(n, device=dev), :, dy, dx] = win
        return region
    ty = dy[:, None] + torch.arange(h, device=dev)          # (n, h)
    tx = dx[:, None] + torch.arange(w, device=dev)
    ty = torch.where((ty >= 0) & (ty < R - 1), ty, torch.full_like(ty, R - 1))
    tx = torch.where((tx >= 0) & (tx < S - 1), tx, torch.full_like(tx, S - 1))
    rows = torch.arange(n, device=dev)[:, None, None]
    region[rows, :, ty[:, :, None], tx[:, None, :]] = win.permute(0, 2, 3, 1)
    return region


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
        (pt, _), (pl, _) = prm["pads"]
        (kh, kw), (sh, sw), (dh, dw) = prm["kernel"], prm["stride"], prm["dilation"]
        gh = (h - 1) * sh + dh * (kh - 1) + 1
        gw = (w - 1) * sw + dw * (kw - 1) + 1
        gy, gx = oy * sh - pt, ox * sw - pl
        spec = prm["pads"][0] + prm["pads"][1] + (float("-inf") if p.kind == "maxpool" else 0.0,)
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

    def _conv_of(self, node):
        if node.op == "call_module" and isinstance(self.modules[node.target], nn.Conv2d):
            return self.modules[node.target].weight
        if node.op == "call_function" and node.target is F.conv2d:
            w = _arg(node, 1, "weight", None)
            return self.consts.get(w) if isinstance(w, fx.Node) else w
        return None

    def _linear_of(self, node):
        if node.op == "call_module" and isinstance(self.modules[node.target], nn.Linear):
            return self.modules[node.target].weight
        if node.op == "call_function" and node.target is F.linear:
            w = _arg(node, 1, "weight", None)
            return self.consts.get(w) if isinstance(w, fx.Node) else w
        return None

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


def macs_per_image(model, image_shape):
    """Multiply-adds of one full forward of `model` (convolutions and linear layers)."""
    C, H, W = image_shape
    total = [0]

    def hook(m, _i, o):
        if isinstance(m, nn.Conv2d):
            total[0] += o[0].numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        elif isinstance(m, nn.Linear):
            total[0] += m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, C, H, W, device=next(model.parameters()).device))
    finally:
        for h in hs:
            h.remove()
    return total[0]
