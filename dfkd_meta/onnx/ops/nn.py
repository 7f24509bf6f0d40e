"""Linear algebra, convolution, normalisation and pooling ONNX ops."""
from __future__ import annotations

import contextlib
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
    """2-D convolution with frozen weights, on the CPU, whose input gradient is a forward convolution.

    oneDNN's kernels are poorly vectorised when the input has one or two channels (a grayscale
    image, the optimised variable in reconstruction). Measured on LeNet-5's first conv (1 -> 6
    channels, 5x5, batch 256, 2-core AMD EPYC, torch 2.13): oneDNN backward-data 6.6 ms, the same
    sums as a oneDNN convolution of the output gradient with the flipped, transposed kernel 15.8 ms,
    and that convolution through ATen's own kernels (NNPACK) 3.9-4.5 ms (19 against 53 ms at batch
    1024), so the last one runs. The choice is fixed, not timed per machine, so a seed gives the
    same result on every run. Only stride 1, groups 1 and padding <= dilation * (kernel - 1) qualify.
    """

    @staticmethod
    def applies(x, w, b, strides, padding, dilations, groups) -> bool:
        return (w.dim() == 4 and x.device.type == "cpu" and x.requires_grad and torch.is_grad_enabled()
                and not w.requires_grad and (b is None or not b.requires_grad) and w.shape[1] <= 2 and groups == 1
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
        with _onednn_disabled():  # ATen's own kernels (NNPACK or im2col + GEMM): see the class docstring
            gx = F.conv2d(grad.contiguous(), flipped, padding=pad, dilation=ctx.dilations)
        return gx, None, None, None, None


@contextlib.contextmanager
def _onednn_disabled():
    """oneDNN off for the ops inside, every other backend setting untouched (``mkldnn.flags`` also
    resets TF32 and precision settings, and warns on every call)."""
    was = torch.backends.mkldnn.set_flags(False, None, None, None)[0]
    try:
        yield
    finally:
        torch.backends.mkldnn.set_flags(was, None, None, None)


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
    if _TiledMaxPool2d.applies(x, kernel, strides, dilations, pads, ceil):
        return _TiledMaxPool2d.apply(x, tuple(kernel))
    if pads[:n] == pads[n:] and all(p <= k // 2 for p, k in zip(pads[:n], kernel)):
        return _MAXPOOL[n](x, kernel, strides, pads[:n], dilations, ceil_mode=ceil)
    sizes = _pool_out_sizes(x, kernel, strides, dilations, pads, ceil)
    y = _MAXPOOL[n](F.pad(x, torch_pad(pads), value=-math.inf), kernel, strides, 0, dilations, ceil_mode=ceil)
    return _crop(y, sizes)


class _TiledMaxPool2d(torch.autograd.Function):
    """2-D max pooling over non-overlapping windows (stride = kernel, no padding) on the CPU.

    ATen's CPU max_pool2d is about 10x slower than a running maximum over the window's k*k strided
    views (measured on LeNet-5's 6x28x28 map, batch 256: 4.5 ms against 0.4 ms), and pooling the
    first conv map is a large share of a reconstruction step. Values are exact; the gradient goes to
    the first maximum of each window in row-major order, as max_pool2d's indices do, so both paths
    give bit-identical results on finite inputs (a window holding NaN gets no gradient here).
    """

    @staticmethod
    def applies(x, kernel, strides, dilations, pads, ceil) -> bool:
        if len(kernel) != 2 or x.dim() != 4 or x.device.type != "cpu" or not x.dtype.is_floating_point:
            return False
        if list(strides) != list(kernel) or any(d != 1 for d in dilations) or any(pads):
            return False
        if any(x.shape[2 + d] < kernel[d] for d in range(2)):
            return False
        return not ceil or all(x.shape[2 + d] % kernel[d] == 0 for d in range(2))

    @staticmethod
    def _views(x, kernel):
        kh, kw = kernel
        h, w = x.shape[2] // kh * kh, x.shape[3] // kw * kw
        return [x[:, :, i:h:kh, j:w:kw] for i in range(kh) for j in range(kw)]

    @staticmethod
    def forward(ctx, x, kernel):
        views = _TiledMaxPool2d._views(x, kernel)
        y = views[0]
        for v in views[1:]:
            y = torch.maximum(y, v)  # propagates NaN, as max_pool2d does
        ctx.save_for_backward(x, y)
        ctx.kernel = kernel
        return y.contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        dx = torch.zeros_like(x)
        taken = torch.zeros(y.shape, dtype=torch.bool, device=y.device)
        for v, dv in zip(_TiledMaxPool2d._views(x, ctx.kernel), _TiledMaxPool2d._views(dx, ctx.kernel)):
            hit = (v == y).logical_and_(taken.logical_not())
            dv.copy_(grad * hit)
            taken.logical_or_(hit)
        return dx, None


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

