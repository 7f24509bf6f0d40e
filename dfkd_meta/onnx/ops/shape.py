"""Reductions and shape manipulation ONNX ops."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import OnnxOpError, Tensor, ints, norm_axis, op, scalar
from .nn import torch_pad

# --- reductions ----------------------------------------------------------------------------------

def _reduce(fn, i, a, since_input: int):
    x = i[0]
    axes = ints(i[1]) if a["_opset"] >= since_input and len(i) > 1 else a.get("axes")
    keep = bool(a.get("keepdims", 1))
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    return fn(x, dim=tuple(norm_axis(d, x.dim()) for d in axes), keepdim=keep)


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
    axis = norm_axis(a.get("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@op("Reshape")
def reshape(i, a):
    x, shape = i[0], ints(i[1])
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
    axes = ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("axes")
    if axes is None:
        return x.squeeze()
    for d in sorted((norm_axis(d, x.dim()) for d in axes), reverse=True):
        x = x.squeeze(d)
    return x


@op("Unsqueeze")
def unsqueeze(i, a):
    x = i[0]
    axes = ints(i[1]) if len(i) > 1 and i[1] is not None else a["axes"]
    rank = x.dim() + len(axes)
    for d in sorted(norm_axis(d, rank) for d in axes):
        x = x.unsqueeze(d)
    return x


@op("Concat")
def concat(i, a):
    return torch.cat([t for t in i if t is not None], dim=a["axis"])


@op("Split")
def split(i, a):
    x = i[0]
    axis = norm_axis(a.get("axis", 0), x.dim())
    sizes = ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("split")
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
    axis = norm_axis(a.get("axis", 0), data.dim())
    idx = idx.long()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    out = data.index_select(axis, idx.reshape(-1))
    # a tuple, not unpacked: a scalar index into a vector gives a scalar, reshape(()) (Shape -> Gather of a dim)
    return out.reshape(tuple(data.shape[:axis]) + tuple(idx.shape) + tuple(data.shape[axis + 1:]))


@op("Slice")
def slice_(i, a):
    x = i[0]
    if a["_opset"] >= 10:
        starts, ends = ints(i[1]), ints(i[2])
        axes = ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(len(starts)))
        steps = ints(i[4]) if len(i) > 4 and i[4] is not None else [1] * len(starts)
    else:
        starts, ends = a["starts"], a["ends"]
        axes, steps = a.get("axes", list(range(len(starts)))), [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = norm_axis(axis, x.dim())
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
        pads = ints(i[1])
        value = scalar(i[2], 0.0) if len(i) > 2 and i[2] is not None else 0.0
        axes = ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(x.dim()))
    else:
        pads, value, axes = a["pads"], a.get("value", 0.0), list(range(x.dim()))
    n = len(axes)
    full_b, full_e = [0] * x.dim(), [0] * x.dim()
    for k, ax in enumerate(axes):
        full_b[norm_axis(ax, x.dim())], full_e[norm_axis(ax, x.dim())] = pads[k], pads[n + k]
    first = next((d for d in range(x.dim()) if full_b[d] or full_e[d]), x.dim())
    tp = torch_pad(full_b[first:] + full_e[first:])
    if mode == "constant":
        return F.pad(x, tp, value=value)
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    if torch_mode is None or x.dim() - first > 3 or first == 0:
        raise OnnxOpError(f"Pad mode {mode!r} on these axes")
    return F.pad(x, tp, mode=torch_mode)


@op("Expand")
def expand(i, a):
    x, shape = i[0], ints(i[1])
    shape = torch.broadcast_shapes(tuple(x.shape), tuple(shape))
    return x.expand(shape)


@op("Tile")
def tile(i, a):
    return i[0].repeat(*ints(i[1]))


@op("ConstantOfShape")
def constant_of_shape(i, a):
    value = a.get("value")
    fill = value if value is not None else torch.zeros(1)
    return torch.full(ints(i[0]), fill.reshape(-1)[0].item(), dtype=fill.dtype, device=i[0].device)


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
