"""Element-wise ONNX ops: arithmetic, comparisons, activations, casts and the softmax family."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from . import OnnxOpError, OpFn, Tensor, norm_axis, op, scalar

# --- elementwise -------------------------------------------------------------------------------

def _unary(fn: Callable[[Tensor], Tensor]) -> OpFn:
    return lambda i, a: fn(i[0])


# Registered by literal name, one per line: `supported_ops()` reads the names without importing torch.
op("Relu")(_unary(torch.relu))
op("Sigmoid")(_unary(torch.sigmoid))
op("Tanh")(_unary(torch.tanh))
op("Neg")(_unary(torch.neg))
op("Erf")(_unary(torch.erf))
op("Exp")(_unary(torch.exp))
op("Log")(_unary(torch.log))
op("Sqrt")(_unary(torch.sqrt))
op("Abs")(_unary(torch.abs))
op("Reciprocal")(_unary(torch.reciprocal))
op("Floor")(_unary(torch.floor))
op("Ceil")(_unary(torch.ceil))
op("Softplus")(_unary(F.softplus))
op("Softsign")(_unary(F.softsign))
op("Sign")(_unary(torch.sign))
op("Not")(_unary(torch.logical_not))


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
    lo = scalar(i[1]) if len(i) > 1 else a.get("min")
    hi = scalar(i[2]) if len(i) > 2 else a.get("max")
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
    axis = norm_axis(axis, x.dim())  # before opset 13: coerce to 2-D at axis, then restore
    return fn(x.reshape(math.prod(x.shape[:axis]), -1), dim=1).reshape(x.shape)


@op("Softmax")
def softmax(i, a):
    return _softmax(torch.softmax, i, a, a["_opset"])


@op("LogSoftmax")
def log_softmax(i, a):
    return _softmax(torch.log_softmax, i, a, a["_opset"])

