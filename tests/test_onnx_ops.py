"""Every op of the registry against ONNX Runtime (onnx.reference above ORT's opsets)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dfkd_meta.onnx.graph import OnnxModule, UnsupportedOpsError
from dfkd_meta.onnx.ops import OPS

from .onnx_cases import ORT_MAX_OPSET, assert_close, reference_run, single_op

R = np.random.default_rng(0)


def f32(*shape, lo=-2.0, hi=2.0):
    return R.uniform(lo, hi, shape).astype(np.float32)


def i64(*v):
    return np.array(v, dtype=np.int64)


def check(op_type, x, consts=(), attrs=None, opset=17, n_out=1):
    model = single_op(op_type, x, list(consts), attrs, opset, n_out)
    refs = reference_run(model, x)
    got = OnnxModule(model).run(torch.from_numpy(x), taps=[])
    for k, ref in enumerate(refs):
        assert_close(got[f"y{k}"].detach().numpy(), ref, what=f"{op_type} opset {opset} {attrs}")


X4 = f32(2, 3, 7, 6)
CASES = [
    ("Relu", X4, [], {}), ("Sigmoid", X4, [], {}), ("Tanh", X4, [], {}), ("Neg", X4, [], {}),
    ("Erf", X4, [], {}), ("Exp", X4, [], {}), ("Abs", X4, [], {}), ("Softplus", X4, [], {}),
    ("Sqrt", f32(3, 4, lo=0.1), [], {}), ("Log", f32(3, 4, lo=0.1), [], {}), ("Reciprocal", f32(3, 4, lo=0.5), [], {}),
    ("LeakyRelu", X4, [], {"alpha": 0.2}), ("LeakyRelu", X4, [], {}), ("Elu", X4, [], {"alpha": 0.7}),
    ("Selu", X4, [], {}), ("HardSigmoid", X4, [], {"alpha": 0.3, "beta": 0.4}), ("HardSwish", X4, [], {}),
    ("PRelu", X4, [f32(3, 1, 1)], {}),
    ("Add", X4, [f32(6)], {}), ("Sub", X4, [f32(1, 3, 1, 1)], {}), ("Mul", X4, [f32(7, 6)], {}),
    ("Div", X4, [f32(3, 1, 1, lo=0.5)], {}), ("Pow", f32(3, 4, lo=0.1), [np.float32(2.5)], {}),
    ("Max", X4, [f32(6)], {}), ("Min", X4, [f32(6)], {}), ("Sum", X4, [f32(6), f32(7, 6)], {}),
    ("Mean", X4, [f32(6)], {}),
    ("Where", np.array([True, False, True, False, True, False]), [f32(2, 6), f32(6)], {}),
    ("Softmax", X4, [], {}), ("Softmax", X4, [], {"axis": 1}), ("LogSoftmax", X4, [], {"axis": -2}),
    ("Gemm", f32(4, 5), [f32(5, 3), f32(3)], {}),
    ("Gemm", f32(5, 4), [f32(3, 5), f32(1, 3)], {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}),
    ("Gemm", f32(4, 5), [f32(5, 3)], {"alpha": 3.0}),
    ("MatMul", f32(2, 4, 5), [f32(5, 3)], {}), ("MatMul", f32(4, 5), [f32(5)], {}),
    ("Conv", X4, [f32(4, 3, 3, 3), f32(4)], {"pads": [1, 1, 1, 1]}),
    ("Conv", X4, [f32(6, 1, 3, 2)], {"group": 3, "strides": [2, 1], "dilations": [1, 2], "pads": [0, 1, 2, 0]}),
    ("Conv", X4, [f32(2, 3, 3, 3)], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ("Conv", X4, [f32(2, 3, 2, 2)], {"auto_pad": "SAME_LOWER"}), ("Conv", X4, [f32(2, 3, 3, 3)], {"auto_pad": "VALID"}),
    ("Conv", f32(2, 3, 9), [f32(4, 3, 3), f32(4)], {"pads": [2, 1]}),
    ("ConvTranspose", X4, [f32(3, 2, 3, 3), f32(2)], {"strides": [2, 2], "pads": [1, 1, 1, 1],
                                                       "output_padding": [1, 0]}),
    ("MaxPool", X4, [], {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("MaxPool", X4, [], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    ("MaxPool", X4, [], {"kernel_shape": [3, 2], "pads": [0, 1, 2, 0], "dilations": [1, 2]}),
    ("MaxPool", X4, [], {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ("AveragePool", X4, [], {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("AveragePool", X4, [], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    ("AveragePool", X4, [], {"kernel_shape": [3, 3], "pads": [1, 0, 1, 2], "strides": [2, 2], "ceil_mode": 1}),
    ("AveragePool", f32(2, 3, 9), [], {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
    ("GlobalAveragePool", X4, [], {}), ("GlobalMaxPool", X4, [], {}),
    ("BatchNormalization", X4, [f32(3), f32(3), f32(3), f32(3, lo=0.1)], {"epsilon": 1e-3}),
    ("InstanceNormalization", X4, [f32(3), f32(3)], {}), ("LayerNormalization", X4, [f32(6), f32(6)], {}),
    ("Flatten", X4, [], {}), ("Flatten", X4, [], {"axis": 2}), ("Flatten", X4, [], {"axis": 0}),
    ("Reshape", X4, [i64(0, -1, 6)], {}), ("Reshape", X4, [i64(2, 0, 42)], {}),
    ("Transpose", X4, [], {"perm": [0, 2, 3, 1]}), ("Transpose", X4, [], {}),
    ("Squeeze", f32(2, 1, 3, 1), [i64(1)], {}), ("Squeeze", f32(2, 1, 3, 1), [], {}),
    ("Unsqueeze", f32(2, 3), [i64(0, -1)], {}),
    ("Concat", X4, [f32(2, 1, 7, 6), f32(2, 2, 7, 6)], {"axis": 1}),
    ("Split", f32(2, 6, 3), [i64(2, 4)], {"axis": 1}, 2), ("Identity", X4, [], {}),
    ("Shape", X4, [], {}), ("Shape", X4, [], {"start": 1, "end": -1}), ("Size", X4, [], {}),
    ("Gather", X4, [i64(2, 0, -1)], {"axis": 3}), ("Gather", X4, [np.array([[0, 1], [1, 0]])], {"axis": 0}),
    ("Gather", f32(4), [np.int64(2)], {}), ("Gather", X4, [np.int64(-1)], {"axis": 1}),  # scalar indices
    ("Slice", X4, [i64(1, 0), i64(100, -1), i64(3, 1), i64(2, 1)], {}),
    ("Slice", X4, [i64(-1), i64(-100), i64(2), i64(-2)], {}),
    ("Slice", X4, [i64(5, 0), i64(1, 2)], {}),
    ("Clip", X4, [np.float32(-0.5), np.float32(0.7)], {}), ("Clip", X4, [None, np.float32(0.2)], {}),
    ("Clip", X4, [], {}),
    ("Pad", X4, [i64(0, 0, 1, 2, 0, 0, 3, 0), np.float32(1.5)], {}),
    ("Pad", X4, [i64(0, 0, 1, 2, 0, 0, 2, 1)], {"mode": "reflect"}),
    ("Pad", X4, [i64(0, 0, 1, 2, 0, 0, 2, 1)], {"mode": "edge"}),
    ("Pad", X4, [i64(0, 0, -1, 1, 0, 0, 1, -2)], {}),
    ("ReduceMean", X4, [], {"axes": [2, 3]}), ("ReduceMean", X4, [], {"axes": [1], "keepdims": 0}),
    ("ReduceSum", X4, [i64(-1)], {}), ("ReduceMax", X4, [], {"axes": [1]}),
    ("Cast", X4, [], {"to": 7}), ("Expand", f32(3, 1), [i64(2, 3, 4)], {}), ("Tile", f32(2, 3), [i64(2, 1)], {}),
    ("Equal", f32(3), [f32(3)], {}), ("Dropout", X4, [], {}),
    ("Dropout", X4, [np.float32(0.3)], {}, 2),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{k}" for k, c in enumerate(CASES)])
def test_op_matches_reference(case):
    op_type, x, consts, attrs, *n_out = case
    opset = 17
    if op_type in ("ReduceMean", "ReduceMax") and consts == [] and "axes" in attrs:
        opset = 17  # axes as attribute until opset 18
    check(op_type, x, consts, attrs, opset, *(n_out or [1]))


@pytest.mark.parametrize("opset", [13, 18, ORT_MAX_OPSET])
def test_ops_that_moved_attributes_to_inputs(opset):
    x = f32(2, 3, 4, 5)
    axes_input = opset >= 18
    check("ReduceMean", x, [i64(1, 3)] if axes_input else [], {} if axes_input else {"axes": [1, 3]}, opset)
    check("Squeeze", f32(2, 1, 3), [i64(1)], {}, opset)
    check("Softmax", x, [], {"axis": 1}, opset)
    check("Gelu" if opset >= 20 else "Erf", x, [], {"approximate": "tanh"} if opset >= 20 else {}, opset)


def test_softmax_before_opset_13_flattens():
    x = f32(2, 3, 4)
    check("Softmax", x, [], {"axis": 1}, 11)
    check("Softmax", x, [], {}, 11)


def test_the_registry_holds_the_required_ops():
    required = {"Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Neg", "Relu", "LeakyRelu", "Sigmoid", "Tanh",
                "Softmax", "LogSoftmax", "Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool",
                "BatchNormalization", "Dropout", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
                "Concat", "Identity", "Constant", "Shape", "Gather", "Slice", "Clip", "Pad", "ReduceMean", "Erf",
                "Gelu"}
    assert required <= set(OPS)


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(groups=st.sampled_from([1, 2]), k=st.integers(1, 3), s=st.integers(1, 3), d=st.integers(1, 2),
       pads=st.lists(st.integers(0, 2), min_size=4, max_size=4),
       auto=st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]), bias=st.booleans())
def test_conv_attributes(groups, k, s, d, pads, auto, bias):
    x = f32(2, 4, 8, 7)
    attrs = {"group": groups, "strides": [s, s], "dilations": [d, d], "auto_pad": auto}
    if auto == "NOTSET":
        attrs["pads"] = pads
    elif auto.startswith("SAME"):
        attrs["dilations"] = [1, 1]
    consts = [f32(4, 4 // groups, k, k + 1)] + ([f32(4)] if bias else [])
    check("Conv", x, consts, attrs)


@FUZZ
@given(cin=st.integers(1, 3), k=st.integers(1, 4), d=st.integers(1, 2), s=st.integers(1, 2),
       pads=st.lists(st.integers(0, 3), min_size=4, max_size=4), bias=st.booleans())
def test_conv_input_gradient_equals_torch(cin, k, d, s, pads, bias):
    """Frozen-weight convolutions may take the forward-convolution input gradient; it must agree."""
    x = torch.from_numpy(f32(3, cin, 9, 8)).double().requires_grad_()
    w = torch.from_numpy(f32(5, cin, k, k + 1)).double()
    b = torch.from_numpy(f32(5)).double() if bias else None
    attrs = {"strides": [s, s], "dilations": [d, d], "pads": pads}
    assume(9 + pads[0] + pads[2] > d * (k - 1) and 8 + pads[1] + pads[3] > d * k)
    y = OPS["Conv"]([x, w] + ([b] if bias else []), attrs)
    g = torch.from_numpy(R.standard_normal(tuple(y.shape)))
    (got,) = torch.autograd.grad(y, x, g)
    xr = x.detach().requires_grad_()
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(xr, (pads[1], pads[3], pads[0], pads[2])), w, b,
                                     stride=s, dilation=d)
    (want,) = torch.autograd.grad(ref, xr, g)
    np.testing.assert_allclose(y.detach().numpy(), ref.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10, atol=1e-10)


@FUZZ
@given(kind=st.sampled_from(["MaxPool", "AveragePool"]), k=st.integers(1, 3), s=st.integers(1, 3),
       pads=st.lists(st.integers(0, 1), min_size=4, max_size=4), ceil=st.integers(0, 1), incl=st.integers(0, 1))
def test_pool_attributes(kind, k, s, pads, ceil, incl):
    assume(all(p < k for p in pads))
    attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": pads, "ceil_mode": ceil}
    if kind == "AveragePool":
        attrs["count_include_pad"] = incl
    check(kind, f32(2, 3, 7, 8), [], attrs)


@FUZZ
@given(n=st.integers(1, 3), c=st.integers(1, 4), h=st.integers(1, 11), w=st.integers(1, 11), kh=st.integers(1, 3),
       kw=st.integers(1, 3), ceil=st.integers(0, 1), ties=st.booleans(), grad=st.booleans())
def test_tiled_max_pool_is_bit_identical_to_max_pool2d(n, c, h, w, kh, kw, ceil, ties, grad):
    """The non-overlapping MaxPool fast path: same values and same input gradients as ATen, ties included."""
    from dfkd_meta.onnx.ops.nn import _TiledMaxPool2d

    assume(h >= kh and w >= kw)
    x = f32(n, c, h, w)
    if ties:  # ReLU'd and coarsely rounded: many windows with equal maxima (zeros above all)
        x = np.round(np.maximum(x, 0), 1)
    attrs = {"kernel_shape": [kh, kw], "strides": [kh, kw], "ceil_mode": ceil}
    xt = torch.from_numpy(x).requires_grad_(grad)
    fast = _TiledMaxPool2d.applies(xt, [kh, kw], [kh, kw], [1, 1], [0, 0, 0, 0], bool(ceil))
    assert fast == (not ceil or (h % kh == 0 and w % kw == 0))
    y = OPS["MaxPool"]([xt], attrs)
    xr = torch.from_numpy(x).requires_grad_(grad)
    ref = torch.nn.functional.max_pool2d(xr, (kh, kw), ceil_mode=bool(ceil))
    assert y.shape == ref.shape and torch.equal(y.detach(), ref.detach())
    if grad:
        g = torch.from_numpy(R.standard_normal(tuple(y.shape)).astype(np.float32))
        (got,), (want,) = torch.autograd.grad(y, xt, g), torch.autograd.grad(ref, xr, g)
        assert torch.equal(got, want)


@pytest.mark.parametrize("shape,cout", [((64, 1, 32, 32), 6), ((16, 1, 28, 28), 8), ((8, 2, 17, 13), 3)])
def test_conv_input_gradient_float32_on_reference_shapes(shape, cout):
    """The float32 fast path on the first convs of the reference models (grayscale inputs) agrees with ATen."""
    from dfkd_meta.onnx.ops.nn import _InputGradConv2d

    x = torch.from_numpy(f32(*shape)).requires_grad_()
    w = torch.from_numpy(f32(cout, shape[1], 5, 5))
    assert _InputGradConv2d.applies(x, w, None, [1, 1], [2, 2], [1, 1], 1)
    y = OPS["Conv"]([x, w], {"pads": [2, 2, 2, 2]})
    g = torch.from_numpy(R.standard_normal(tuple(y.shape)).astype(np.float32))
    (got,) = torch.autograd.grad(y, x, g)
    xr = x.detach().requires_grad_()
    (want,) = torch.autograd.grad(torch.nn.functional.conv2d(xr, w, padding=2), xr, g)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)


@FUZZ
@given(ta=st.integers(0, 1), tb=st.integers(0, 1), alpha=st.floats(-2, 2), beta=st.floats(-2, 2),
       c=st.sampled_from(["none", "row", "full", "scalar"]))
def test_gemm_attributes(ta, tb, alpha, beta, c):
    a = f32(5, 4) if ta else f32(4, 5)
    b = f32(3, 5) if tb else f32(5, 3)
    cc = {"none": [], "row": [f32(3)], "full": [f32(4, 3)], "scalar": [np.float32(0.7)]}[c]
    check("Gemm", a, [b, *cc], {"transA": ta, "transB": tb, "alpha": alpha, "beta": beta})


@FUZZ
@given(start=st.integers(-9, 9), end=st.integers(-9, 9), step=st.sampled_from([-3, -2, -1, 1, 2, 3]),
       axis=st.integers(-3, 2))
def test_slice_attributes(start, end, step, axis):
    check("Slice", f32(4, 6, 7), [i64(start), i64(end), i64(axis), i64(step)], {})


def test_unsupported_ops_are_listed_with_node_names():
    import onnx
    from onnx import helper
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("Hardmax", ["a"], ["b"], name="first_bad"),
             helper.make_node("TopK", ["b", "k"], ["y", "i"], name="second_bad"),
             helper.make_node("Custom", ["y"], ["z"], name="third_bad", domain="com.vendor")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpsError) as err:
        OnnxModule(model)
    msg = str(err.value)
    assert "3 unsupported ops" in msg
    for part in ("Hardmax (node first_bad)", "TopK (node second_bad)", "Custom (node third_bad, domain com.vendor)"):
        assert part in msg
