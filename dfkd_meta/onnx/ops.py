"""ONNX operators as torch functions: one small function per op, in a registry.

Each op takes ``(inputs, attrs)``: the node's input tensors in order (``None`` for an omitted
optional input) and its attributes as Python values, and returns one tensor or a tuple of
tensors (one per node output). Adding an op is adding one decorated function here.

Semantics follow the ONNX operator specification for default-domain opsets 13 and later
(older attribute forms are accepted where an op moved an attribute to an input).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

Tensor = torch.Tensor
OpFn = Callable[[list, dict[str, Any]], Any]
OPS: dict[str, OpFn] = {}


class OnnxOpError(ValueError):
    """An op was used with attributes or inputs this implementation does not support."""


def op(*names: str):
    def register(fn: OpFn) -> OpFn:
        for name in names:
            OPS[name] = fn
        return fn
    return register


def _ints(t: Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _scalar(t: Tensor | None, default=None):
    return default if t is None else t.reshape(-1)[0].item()


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# --- elementwise -------------------------------------------------------------------------------

def _unary(fn: Callable[[Tensor], Tensor]) -> OpFn:
    return lambda i, a: fn(i[0])


for _name, _fn in {"Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Neg": torch.neg,
                   "Erf": torch.erf, "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt, "Abs": torch.abs,
                   "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil,
                   "Softplus": F.softplus, "Softsign": F.softsign, "Sign": torch.sign,
                   "Not": torch.logical_not}.items():
    op(_name)(_unary(_fn))


@op("Identity")
def identity(i, a):
    return i[0]


@op("Add")
def add(i, a):
    return i[0] + i[1]


@op("Sub")
def sub(i, a):
    return i[0] - i[1]


@op("Mul")
def mul(i, a):
    return i[0] * i[1]


@op("Div")
def div(i, a):
    x, y = i
    if not x.is_floating_point():  # ONNX integer division truncates toward zero
        return torch.div(x, y, rounding_mode="trunc")
    return x / y


@op("Pow")
def pow_(i, a):
    return torch.pow(i[0], i[1].to(i[0].dtype) if i[0].is_floating_point() else i[1])


def _fold(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    """A variadic element-wise op (Max, Min, Sum) as a left fold of a binary one."""
    def apply(i, a):
        out = i[0]
        for t in i[1:]:
            out = fn(out, t)
        return out
    return apply


max_ = op("Max")(_fold(torch.maximum))
min_ = op("Min")(_fold(torch.minimum))
sum_ = op("Sum")(_fold(torch.add))


@op("Mean")
def mean_(i, a):
    return sum_(i, a) / len(i)


@op("Equal")
def equal(i, a):
    return torch.eq(i[0], i[1])


@op("Less")
def less(i, a):
    return torch.lt(i[0], i[1])


@op("Greater")
def greater(i, a):
    return torch.gt(i[0], i[1])


@op("Where")
def where(i, a):
    return torch.where(i[0].bool(), i[1], i[2])


@op("LeakyRelu")
def leaky_relu(i, a):
    return F.leaky_relu(i[0], a.get("alpha", 0.01))


@op("Elu")
def elu(i, a):
    return F.elu(i[0], a.get("alpha", 1.0))


@op("Selu")
def selu(i, a):
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    return gamma * torch.where(i[0] > 0, i[0], alpha * (torch.exp(i[0]) - 1))


@op("PRelu")
def prelu(i, a):
    x, slope = i
    return torch.where(x >= 0, x, x * slope)


@op("HardSigmoid")
def hard_sigmoid(i, a):
    return torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0, 1)


@op("HardSwish")
def hard_swish(i, a):
    return i[0] * torch.clamp(i[0] / 6 + 0.5, 0, 1)


@op("Gelu")
def gelu(i, a):
    return F.gelu(i[0], approximate=a.get("approximate", "none"))


@op("Clip")
def clip(i, a):
    x = i[0]
    lo = _scalar(i[1]) if len(i) > 1 else a.get("min")
    hi = _scalar(i[2]) if len(i) > 2 else a.get("max")
    if lo is not None:
        x = torch.clamp(x, min=lo)
    if hi is not None:
        x = torch.clamp(x, max=hi)
    return x


@op("Cast")
def cast(i, a):
    return i[0].to(dtype_of(a["to"]))


@op("CastLike")
def cast_like(i, a):
    return i[0].to(i[1].dtype)


def dtype_of(elem_type: int) -> torch.dtype:
    try:
        return torch.from_numpy(np.zeros(0, helper.tensor_dtype_to_np_dtype(elem_type))).dtype
    except (TypeError, KeyError):
        raise OnnxOpError(f"tensor type {TensorProto.DataType.Name(elem_type)} is not supported") from None


# --- softmax family ------------------------------------------------------------------------------

def _softmax(fn, i, a, opset: int):
    x = i[0]
    axis = a.get("axis", -1 if opset >= 13 else 1)
    if opset >= 13:
        return fn(x, dim=axis)
    axis = _axis(axis, x.dim())  # before opset 13: coerce to 2-D at axis, then restore
    return fn(x.reshape(math.prod(x.shape[:axis]), -1), dim=1).reshape(x.shape)


@op("Softmax")
def softmax(i, a):
    return _softmax(torch.softmax, i, a, a["_opset"])


@op("LogSoftmax")
def log_softmax(i, a):
    return _softmax(torch.log_softmax, i, a, a["_opset"])


# --- linear algebra ------------------------------------------------------------------------------

@op("Gemm")
def gemm(i, a):
    x, w = i[0], i[1]
    c = i[2] if len(i) > 2 else None
    if a.get("transA", 0):
        x = x.transpose(0, 1)
    if a.get("transB", 0):
        w = w.transpose(0, 1)
    y = torch.matmul(x, w)
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y


@op("MatMul")
def matmul(i, a):
    return torch.matmul(i[0], i[1])


def _spatial_pads(a: dict, x: Tensor, kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int]) -> list[int]:
    """ONNX pads [b1, b2, ..., e1, e2, ...] for the spatial dims, auto_pad resolved."""
    n = len(kernel)
    auto = a.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("NOTSET", ""):
        return list(a.get("pads", [0] * (2 * n)))
    if auto == "VALID":
        return [0] * (2 * n)
    begins, ends = [], []
    for d in range(n):
        size = x.shape[2 + d]
        out = -(-size // strides[d])
        total = max(0, (out - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1 - size)
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)
        ends.append(big if auto == "SAME_UPPER" else small)
    return begins + ends


def _torch_pad(pads: list[int]) -> list[int]:
    """ONNX [b1.., e1..] to F.pad's last-dim-first (b_last, e_last, ...)."""
    n = len(pads) // 2
    out: list[int] = []
    for d in reversed(range(n)):
        out += [pads[d], pads[n + d]]
    return out


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@op("Conv")
def conv(i, a):
    x, w = i[0], i[1]
    b = i[2] if len(i) > 2 else None
    n = w.dim() - 2
    if n not in _CONV:
        raise OnnxOpError(f"Conv with {n} spatial dimensions")
    kernel = a.get("kernel_shape", list(w.shape[2:]))
    strides, dilations = a.get("strides", [1] * n), a.get("dilations", [1] * n)
    pads = _spatial_pads(a, x, kernel, strides, dilations)
    if pads[:n] == pads[n:]:
        padding: Any = pads[:n]
    else:
        x, padding = F.pad(x, _torch_pad(pads)), [0] * n
    groups = a.get("group", 1)
    if _InputGradConv2d.applies(x, w, b, strides, padding, dilations, groups):
        return _InputGradConv2d.apply(x, w, b, padding, dilations)
    return _CONV[n](x, w, b, stride=strides, padding=padding, dilation=dilations, groups=groups)


class _InputGradConv2d(torch.autograd.Function):
    """2-D convolution with frozen weights whose input gradient is a forward convolution.

    oneDNN's backward-data kernel is poorly vectorised when the input has one or two channels (a
    grayscale image, the optimised variable in reconstruction): 1.2-2.4x slower, measured here,
    than the same sums written as a convolution of the output gradient with the flipped,
    transposed kernel. Only stride 1, groups 1 and padding <= dilation * (kernel - 1) qualify.
    """

    @staticmethod
    def applies(x, w, b, strides, padding, dilations, groups) -> bool:
        return (w.dim() == 4 and x.requires_grad and torch.is_grad_enabled() and not w.requires_grad
                and (b is None or not b.requires_grad) and w.shape[1] <= 2 and groups == 1
                and all(s == 1 for s in strides)
                and all(0 <= p <= d * (k - 1) for p, d, k in zip(padding, dilations, w.shape[2:])))

    @staticmethod
    def forward(ctx, x, w, b, padding, dilations):
        ctx.save_for_backward(w)
        ctx.padding, ctx.dilations = list(padding), list(dilations)
        return F.conv2d(x, w, b, padding=padding, dilation=dilations)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        flipped = w.flip(2, 3).transpose(0, 1)
        pad = [d * (k - 1) - p for p, d, k in zip(ctx.padding, ctx.dilations, w.shape[2:])]
        return F.conv2d(grad.contiguous(), flipped, padding=pad, dilation=ctx.dilations), None, None, None, None


@op("ConvTranspose")
def conv_transpose(i, a):
    x, w = i[0], i[1]
    b = i[2] if len(i) > 2 else None
    n = w.dim() - 2
    if "output_shape" in a or a.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", ""):
        raise OnnxOpError("ConvTranspose with output_shape or auto_pad")
    pads = a.get("pads", [0] * (2 * n))
    if pads[:n] != pads[n:]:
        raise OnnxOpError("ConvTranspose with asymmetric pads")
    return _CONV_T[n](x, w, b, stride=a.get("strides", [1] * n), padding=pads[:n],
                      output_padding=a.get("output_padding", [0] * n), groups=a.get("group", 1),
                      dilation=a.get("dilations", [1] * n))


@op("BatchNormalization")
def batch_norm(i, a):
    if a.get("training_mode", 0):
        raise OnnxOpError("BatchNormalization in training mode")
    x, scale, bias, mean, var = i[:5]
    shape = [1, -1] + [1] * (x.dim() - 2)
    inv = torch.rsqrt(var.reshape(shape) + a.get("epsilon", 1e-5))
    return (x - mean.reshape(shape)) * inv * scale.reshape(shape) + bias.reshape(shape)


@op("InstanceNormalization")
def instance_norm(i, a):
    x, scale, bias = i
    return F.instance_norm(x, weight=scale, bias=bias, eps=a.get("epsilon", 1e-5))


@op("LayerNormalization")
def layer_norm(i, a):
    x, scale = i[0], i[1]
    bias = i[2] if len(i) > 2 else None
    axis = _axis(a.get("axis", -1), x.dim())
    return F.layer_norm(x, x.shape[axis:], scale, bias, eps=a.get("epsilon", 1e-5))


# --- pooling -------------------------------------------------------------------------------------

_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def _pool_out_sizes(x: Tensor, kernel, strides, dilations, pads, ceil: bool) -> list[int]:
    """ONNX pooling output sizes: in ceil mode a last window starting in the end padding is dropped."""
    n = len(kernel)
    sizes = []
    for d in range(n):
        span = x.shape[2 + d] + pads[d] + pads[n + d] - ((kernel[d] - 1) * dilations[d] + 1)
        out = (-(-span // strides[d]) if ceil else span // strides[d]) + 1
        if ceil and (out - 1) * strides[d] >= x.shape[2 + d] + pads[d]:
            out -= 1
        sizes.append(out)
    return sizes


def _crop(y: Tensor, sizes: list[int]) -> Tensor:
    for d, size in enumerate(sizes):
        y = y.narrow(2 + d, 0, size)
    return y


@op("MaxPool")
def max_pool(i, a):
    x = i[0]
    kernel = a["kernel_shape"]
    n = len(kernel)
    strides, dilations = a.get("strides", [1] * n), a.get("dilations", [1] * n)
    pads = _spatial_pads(a, x, kernel, strides, dilations)
    ceil = bool(a.get("ceil_mode", 0))
    if pads[:n] == pads[n:] and all(p <= k // 2 for p, k in zip(pads[:n], kernel)):
        return _MAXPOOL[n](x, kernel, strides, pads[:n], dilations, ceil_mode=ceil)
    sizes = _pool_out_sizes(x, kernel, strides, dilations, pads, ceil)
    y = _MAXPOOL[n](F.pad(x, _torch_pad(pads), value=-math.inf), kernel, strides, 0, dilations, ceil_mode=ceil)
    return _crop(y, sizes)


def _sum_pool(x: Tensor, kernel: list[int], strides: list[int], ceil: bool) -> Tensor:
    """Window sums (no padding); a 1-D pool runs as 2-D since avg_pool1d lacks divisor_override."""
    n = len(kernel)
    if n == 1:
        return _sum_pool(x.unsqueeze(-2), [1, *kernel], [1, *strides], ceil).squeeze(-2)
    pool = {2: F.avg_pool2d, 3: F.avg_pool3d}[n]
    return pool(x, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True, divisor_override=1)


@op("AveragePool")
def average_pool(i, a):
    x = i[0]
    kernel = list(a["kernel_shape"])
    n = len(kernel)
    strides, dilations = list(a.get("strides", [1] * n)), list(a.get("dilations", [1] * n))
    if any(d != 1 for d in dilations):
        raise OnnxOpError("AveragePool with dilations")
    pads = _spatial_pads(a, x, kernel, strides, dilations)
    ceil = bool(a.get("ceil_mode", 0))
    tp = _torch_pad(pads)
    sizes = _pool_out_sizes(x, kernel, strides, dilations, pads, ceil)
    sums = _sum_pool(F.pad(x, tp), kernel, strides, ceil)
    # Divisor: the window's positions inside the input (or the padded input with count_include_pad).
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
    mask = F.pad(ones, tp, value=1.0 if a.get("count_include_pad", 0) else 0.0)
    return _crop(sums / _sum_pool(mask, kernel, strides, ceil), sizes)


@op("GlobalAveragePool")
def global_average_pool(i, a):
    x = i[0]
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def global_max_pool(i, a):
    x = i[0]
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


# --- reductions ----------------------------------------------------------------------------------

def _reduce(fn, i, a, since_input: int):
    x = i[0]
    axes = _ints(i[1]) if a["_opset"] >= since_input and len(i) > 1 else a.get("axes")
    keep = bool(a.get("keepdims", 1))
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    return fn(x, dim=tuple(_axis(d, x.dim()) for d in axes), keepdim=keep)


@op("ReduceMean")
def reduce_mean(i, a):
    return _reduce(torch.mean, i, a, 18)


@op("ReduceSum")
def reduce_sum(i, a):
    return _reduce(torch.sum, i, a, 13)


@op("ReduceMax")
def reduce_max(i, a):
    return _reduce(torch.amax, i, a, 18)


@op("ReduceMin")
def reduce_min(i, a):
    return _reduce(torch.amin, i, a, 18)


# --- shape manipulation -------------------------------------------------------------------------

@op("Flatten")
def flatten(i, a):
    x = i[0]
    axis = _axis(a.get("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@op("Reshape")
def reshape(i, a):
    x, shape = i[0], _ints(i[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[d] if s == 0 else s for d, s in enumerate(shape)]
    return x.reshape(shape)


@op("Transpose")
def transpose(i, a):
    x = i[0]
    return x.permute(a.get("perm", list(reversed(range(x.dim())))))


@op("Squeeze")
def squeeze(i, a):
    x = i[0]
    axes = _ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("axes")
    if axes is None:
        return x.squeeze()
    for d in sorted((_axis(d, x.dim()) for d in axes), reverse=True):
        x = x.squeeze(d)
    return x


@op("Unsqueeze")
def unsqueeze(i, a):
    x = i[0]
    axes = _ints(i[1]) if len(i) > 1 and i[1] is not None else a["axes"]
    rank = x.dim() + len(axes)
    for d in sorted(_axis(d, rank) for d in axes):
        x = x.unsqueeze(d)
    return x


@op("Concat")
def concat(i, a):
    return torch.cat([t for t in i if t is not None], dim=a["axis"])


@op("Split")
def split(i, a):
    x = i[0]
    axis = _axis(a.get("axis", 0), x.dim())
    sizes = _ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("split")
    if sizes is None:
        parts = a.get("num_outputs", a["_num_outputs"])
        size = -(-x.shape[axis] // parts)
        sizes = [min(size, x.shape[axis] - k * size) for k in range(parts)]
    return tuple(torch.split(x, sizes, dim=axis))


@op("Shape")
def shape(i, a):
    dims = list(i[0].shape)
    start, end = a.get("start", 0), a.get("end", len(dims))
    return torch.tensor(dims[start:end], dtype=torch.int64, device=i[0].device)


@op("Size")
def size(i, a):
    return torch.tensor(i[0].numel(), dtype=torch.int64, device=i[0].device)


@op("Gather")
def gather(i, a):
    data, idx = i
    axis = _axis(a.get("axis", 0), data.dim())
    idx = idx.long()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    out = data.index_select(axis, idx.reshape(-1))
    return out.reshape(*data.shape[:axis], *idx.shape, *data.shape[axis + 1:])


@op("Slice")
def slice_(i, a):
    x = i[0]
    if a["_opset"] >= 10:
        starts, ends = _ints(i[1]), _ints(i[2])
        axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(len(starts)))
        steps = _ints(i[4]) if len(i) > 4 and i[4] is not None else [1] * len(starts)
    else:
        starts, ends = a["starts"], a["ends"]
        axes, steps = a.get("axes", list(range(len(starts)))), [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = _axis(axis, x.dim())
        dim = x.shape[axis]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        if (end - start) * step <= 0:
            x = x.narrow(axis, 0, 0)
        elif step == 1:
            x = x.narrow(axis, start, end - start)
        else:
            x = x.index_select(axis, torch.arange(start, end, step, device=x.device))
    return x


@op("Pad")
def pad(i, a):
    x = i[0]
    mode = a.get("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if a["_opset"] >= 11:
        pads = _ints(i[1])
        value = _scalar(i[2], 0.0) if len(i) > 2 and i[2] is not None else 0.0
        axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(x.dim()))
    else:
        pads, value, axes = a["pads"], a.get("value", 0.0), list(range(x.dim()))
    n = len(axes)
    full_b, full_e = [0] * x.dim(), [0] * x.dim()
    for k, ax in enumerate(axes):
        full_b[_axis(ax, x.dim())], full_e[_axis(ax, x.dim())] = pads[k], pads[n + k]
    first = next((d for d in range(x.dim()) if full_b[d] or full_e[d]), x.dim())
    tp = _torch_pad(full_b[first:] + full_e[first:])
    if mode == "constant":
        return F.pad(x, tp, value=value)
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    if torch_mode is None or x.dim() - first > 3 or first == 0:
        raise OnnxOpError(f"Pad mode {mode!r} on these axes")
    return F.pad(x, tp, mode=torch_mode)


@op("Expand")
def expand(i, a):
    x, shape = i[0], _ints(i[1])
    shape = torch.broadcast_shapes(tuple(x.shape), tuple(shape))
    return x.expand(shape)


@op("Tile")
def tile(i, a):
    return i[0].repeat(*_ints(i[1]))


@op("ConstantOfShape")
def constant_of_shape(i, a):
    value = a.get("value")
    fill = value if value is not None else torch.zeros(1)
    return torch.full(_ints(i[0]), fill.reshape(-1)[0].item(), dtype=fill.dtype, device=i[0].device)


@op("Range")
def range_(i, a):
    start, limit, delta = (t.reshape(()) for t in i)
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


@op("Constant")
def constant(i, a):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in a:
            v = a[key]
            if isinstance(v, Tensor):
                return v
            dtype = torch.float32 if key.startswith("value_float") else torch.int64
            return torch.tensor(v, dtype=dtype)
    raise OnnxOpError(f"Constant with attributes {sorted(k for k in a if not k.startswith('_'))}")


@op("Dropout")
def dropout(i, a):
    # Inference: identity. The ratio is recorded by the graph (OnnxModule.dropout_ratios).
    x = i[0]
    if a["_num_outputs"] > 1:
        return x, torch.ones_like(x, dtype=torch.bool)
    return x
