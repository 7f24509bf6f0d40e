"""Linear algebra, convolution, normalisation and pooling ONNX ops."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from . import OnnxOpError, Tensor, norm_axis, op

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


def torch_pad(pads: list[int]) -> list[int]:
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
        x, padding = F.pad(x, torch_pad(pads)), [0] * n
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
    axis = norm_axis(a.get("axis", -1), x.dim())
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
    y = _MAXPOOL[n](F.pad(x, torch_pad(pads), value=-math.inf), kernel, strides, 0, dilations, ceil_mode=ceil)
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
    tp = torch_pad(pads)
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

