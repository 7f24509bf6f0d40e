"""The distillation loss units against hand-computed values and independent computations; their composition."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dfkd_meta.distill.losses import DKD, LOSSES, FeatureLoss, Objective, Outputs, get_loss, logit_loss, parse_terms
from dfkd_meta.errors import UsageError


def _t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _pair(name, s, t, temperature=1.0):
    unit = get_loss(name)
    if isinstance(unit, FeatureLoss):
        return unit(Outputs(_t([[0.0]]), {"f": s}), Outputs(_t([[0.0]]), {"f": t}), temperature).item()
    return unit(Outputs(s), Outputs(t), temperature).item()


def test_kd_and_ce_by_hand():
    s, t = _t([[0.0, 0.0]]), _t([[math.log(3), 0.0]])  # p_t = (3/4, 1/4), p_s = (1/2, 1/2)
    assert _pair("kd", s, t) == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    p_t2 = (math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1))  # softmax(t / 2)
    assert _pair("kd", s, t, 2.0) == pytest.approx(4 * sum(p * math.log(p / 0.5) for p in p_t2))
    assert _pair("ce", s, t) == pytest.approx(math.log(2))
    assert _pair("l1", s, t) == pytest.approx(math.log(3) / 2)


def test_dkd_by_hand():
    s, t = _t([[0.0, 0.0, 0.0]]), _t([[math.log(2), 0.0, 0.0]])  # p_t = (1/2, 1/4, 1/4), target 0
    tckd = 0.5 * math.log(0.5 / (1 / 3)) + 0.5 * math.log(0.5 / (2 / 3))
    assert _pair("dkd", s, t) == pytest.approx(DKD.alpha * tckd)  # the non-target distributions agree: NCKD 0
    s2 = _t([[0.0, math.log(3), 0.0]])  # non-target student (3/4, 1/4) against the teacher's (1/2, 1/2)
    nckd = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    unit = DKD()
    assert unit.nckd(Outputs(s2), Outputs(t), 1.0).item() == pytest.approx(nckd, rel=1e-6)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), classes=st.integers(2, 12), temperature=st.floats(0.5, 8.0))
def test_dkd_decomposes_kd(seed, classes, temperature):
    """The paper's identity: KD = TCKD + (1 - p_t[target]) * NCKD, per example."""
    g = torch.Generator().manual_seed(seed)
    s, t = (torch.randn(5, classes, generator=g, dtype=torch.float64) * 3 for _ in range(2))
    unit = DKD()
    kd = (torch.softmax(t / temperature, 1) * (torch.log_softmax(t / temperature, 1)
                                                - torch.log_softmax(s / temperature, 1))).sum(1) * temperature ** 2
    p_target = torch.softmax(t / temperature, 1).max(1).values
    rebuilt = unit.tckd(Outputs(s), Outputs(t), temperature, reduce=False) + \
        (1 - p_target) * unit.nckd(Outputs(s), Outputs(t), temperature, reduce=False)
    assert torch.allclose(rebuilt, kd, atol=1e-8)


def test_attention_transfer_and_nst_by_hand():
    s, t = _t([[[[1.0, 0.0]]]]), _t([[[[0.0, 2.0]]]])  # attention maps (1, 0) and (0, 1) after normalising
    assert _pair("at", s, t) == pytest.approx(1.0)
    assert _pair("nst", s, t) == pytest.approx(2.0)  # k(s,s) = k(t,t) = 1, k(s,t) = 0
    assert _pair("at", s, s) == 0 and _pair("nst", s, 3 * s) == pytest.approx(0.0)
    big = torch.ones(1, 1, 4, 4, dtype=torch.float64)  # a larger teacher map is averaged down to the student's
    assert _pair("at", torch.ones(1, 1, 2, 2, dtype=torch.float64), big) == pytest.approx(0.0)


def test_pkt_sp_by_hand():
    s, t = _t([[1.0], [1.0]]), _t([[1.0], [-1.0]])  # student: all alike; teacher: opposite
    assert _pair("pkt", s, t) == pytest.approx(math.log(2) / 2, rel=1e-5)
    assert _pair("pkt", t, t) == pytest.approx(0.0, abs=1e-9)
    g_s = np.array([[1, 1], [1, 1]]) / math.sqrt(2)
    g_t = np.array([[1, -1], [-1, 1]]) / math.sqrt(2)
    assert _pair("sp", s, t) == pytest.approx(((g_s - g_t) ** 2).sum() / 4)


def _naive_rkd(s: np.ndarray, t: np.ndarray) -> float:
    """Relational KD written out over explicit difference vectors (B^2 D memory), as the paper defines it."""
    def dist(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=2)
        return d / d[d > 0].mean()

    def angle(x):
        e = x[None, :] - x[:, None]  # e[a, b] = x_b - x_a
        n = np.linalg.norm(e, axis=2, keepdims=True)
        e = np.divide(e, n, out=np.zeros_like(e), where=n > 0)
        return np.einsum("abd,acd->abc", e, e)

    def smooth_l1(a, b):
        d = np.abs(a - b)
        return np.where(d < 1, 0.5 * d ** 2, d - 0.5).mean()
    return 25 * smooth_l1(dist(s), dist(t)) + 50 * smooth_l1(angle(s), angle(t))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(3, 9), ds=st.integers(1, 6), dt=st.integers(1, 6))
def test_rkd_equals_the_explicit_computation_and_ignores_scale(seed, batch, ds, dt):
    rng = np.random.default_rng(seed)
    s, t = rng.normal(size=(batch, ds)), rng.normal(size=(batch, dt))
    got = _pair("rkd", _t(s), _t(t))
    assert got == pytest.approx(_naive_rkd(s, t), rel=1e-6, abs=1e-9)
    assert _pair("rkd", _t(5 * s), _t(t)) == pytest.approx(got, rel=1e-6, abs=1e-9)  # distances and angles: scale-free


@pytest.mark.parametrize("name", ["at", "nst", "pkt", "rkd", "sp", "cc"])
def test_every_relational_or_map_loss_has_a_finite_gradient_even_with_a_repeated_example(name):
    """A NaN gradient trains the student to chance without a NaN loss (RKD's angles did: sqrt'(0) on the
    anchor's own distance, times the 0 of the discarded branch); a repeated example is the hard case."""
    torch.manual_seed(0)
    s = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    s[1] = s[0]
    s.requires_grad_(True)
    t = torch.randn(6, 2, 4, 4, dtype=torch.float64)
    unit = get_loss(name)
    loss = unit(Outputs(_t([[0.0]]), {"f": s}), Outputs(_t([[0.0]]), {"f": t}), 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(2, 8), d=st.integers(1, 6))
def test_cc_equals_the_taylor_expanded_kernel(seed, batch, d):
    rng = np.random.default_rng(seed)
    s, t = rng.normal(size=(batch, d)), rng.normal(size=(batch, d + 1))

    def corr(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        sim = x @ x.T
        return math.exp(-0.8) * (1 + 0.8 * sim + 0.32 * sim ** 2)
    assert _pair("cc", _t(s), _t(t)) == pytest.approx(((corr(s) - corr(t)) ** 2).mean(), rel=1e-6, abs=1e-12)
    assert _pair("cc", _t(s), _t(3 * s)) == pytest.approx(0.0, abs=1e-12)


def test_fitnet_regresses_and_gradients_reach_student_and_regressor_never_the_teacher():
    objective = Objective([("fitnet", 1.0), ("kd", 1.0)])
    objective.bind({"stage1": ((2, 3, 3), (4, 3, 3))})
    reg = objective.units["fitnet"].regressors["stage1"]
    assert reg.weight.shape == (4, 2, 1, 1) and len(list(objective.parameters())) == 2
    with torch.no_grad():
        reg.weight.zero_()
        reg.weight[:2, :, 0, 0] = torch.eye(2)
        reg.bias.zero_()
    s_feat = torch.randn(3, 2, 3, 3, requires_grad=True)
    t_feat = torch.randn(3, 4, 3, 3, requires_grad=True)
    s_logits, t_logits = torch.randn(3, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    terms = objective.terms(Outputs(s_logits, {"stage1": s_feat}), Outputs(t_logits, {"stage1": t_feat}), 2.0)
    padded = torch.cat([s_feat, torch.zeros(3, 2, 3, 3)], 1)
    assert terms["fitnet"].item() == pytest.approx(((padded - t_feat) ** 2).mean().item(), rel=1e-6)
    sum(terms.values()).backward()
    assert s_feat.grad is not None and s_logits.grad is not None and reg.weight.grad.abs().sum() > 0
    assert t_feat.grad is None and t_logits.grad is None


def test_fitnet_regressors_survive_a_checkpoint_round_trip(tmp_path):
    shapes = {"a.b": ((3, 4, 4), (5, 2, 2)), "head": ((7,), (9,))}
    first = Objective([("fitnet", 100.0)])
    first.bind(shapes)
    torch.save(first.state_dict(), tmp_path / "ckpt.pt")
    second = Objective([("fitnet", 100.0)])
    second.bind(shapes)
    second.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    for (k1, v1), (k2, v2) in zip(first.state_dict().items(), second.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    s = {"a.b": torch.randn(2, 3, 4, 4), "head": torch.randn(2, 7)}
    t = {"a.b": torch.randn(2, 5, 2, 2), "head": torch.randn(2, 9)}
    assert first(Outputs(torch.zeros(2, 3), s), Outputs(torch.zeros(2, 3), t), 1.0).item() == \
        second(Outputs(torch.zeros(2, 3), s), Outputs(torch.zeros(2, 3), t), 1.0).item()


def test_terms_parse_with_their_papers_weights_and_refuse_bad_specs():
    assert parse_terms(["kd", "at", "fitnet:2.5", "ce:0"]) == [("kd", 1.0), ("at", 1000.0), ("fitnet", 2.5),
                                                               ("ce", 0.0)]
    assert {n: c.weight for n, c in LOSSES.items()} == {
        "kd": 1.0, "ce": 1.0, "l1": 1.0, "dkd": 1.0, "at": 1000.0, "fitnet": 100.0, "nst": 50.0, "pkt": 30000.0,
        "rkd": 1.0, "sp": 3000.0, "cc": 1.0}
    for spec, text in (("bogus", "expected one of"), ("kd:x", "must be a number"), ("kd:-1", ">= 0"),
                       ("kd:nan", ">= 0")):
        with pytest.raises(UsageError, match=text):
            parse_terms([spec])
    with pytest.raises(UsageError, match="twice"):
        parse_terms(["kd", "kd:2"])
    with pytest.raises(UsageError, match="feature maps"):
        Objective([("at", 1.0)]).bind({"fc": ((10,), (12,))})
    with pytest.raises(UsageError, match="vectors with vectors"):
        Objective([("fitnet", 1.0)]).bind({"x": ((3, 2, 2), (12,))})
    with pytest.raises(UsageError, match="compares logits"):
        logit_loss("at")
    with pytest.raises(UsageError, match="no paired|none"):
        get_loss("sp")(Outputs(torch.zeros(2, 3)), Outputs(torch.zeros(2, 3)), 1.0)


def test_every_unit_is_documented_and_cites_its_source():
    for name, cls in LOSSES.items():
        first = (cls.__doc__ or "").strip().splitlines()[0]
        assert first and cls.name == name and cls.uses in ("logits", "features")
        if name not in ("ce", "l1", "kd"):
            assert any(str(year) in (cls.__doc__ or "") for year in range(2014, 2024)), name


# --- the features the feature losses compare: teacher tensors from the ONNX graph, student modules by path -----

@pytest.fixture(scope="module")
def lenet_pair(tmp_path_factory):
    from dfkd_meta.models import build_model
    from dfkd_meta.onnx.torch_export import export_onnx

    torch.manual_seed(0)
    path = export_onnx(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28), tmp_path_factory.mktemp("feat") / "t.onnx")
    return path, build_model("lenet5-half", (1, 28, 28), 10)


def _teacher_features(path):
    from dfkd_meta.distill.features import teacher_features
    from dfkd_meta.onnx.inspect import load_model_proto, model_facts

    proto = load_model_proto(path)
    return teacher_features(model_facts(path, proto), proto)


def test_automatic_pairs_join_the_stages_and_the_embeddings(lenet_pair):
    from dfkd_meta.distill.features import pair_features, student_features

    path, student = lenet_pair
    teacher = _teacher_features(path)
    shapes = [s for _, s in teacher]
    assert shapes[:2] == [(6, 24, 24), (16, 8, 8)] and shapes[-1] == (84,)
    found = student_features(student, (1, 28, 28))
    assert found[-1] == ("classifier.4:input", (84,)) and ("features.1", (3, 24, 24)) in found
    pairs = pair_features(teacher, found)
    assert [(p.key, p.student, p.teacher_shape, p.student_shape) for p in pairs] == [
        ("stage 24x24", "features.1", (6, 24, 24), (3, 24, 24)), ("stage 8x8", "features.4", (16, 8, 8), (8, 8, 8)),
        ("embedding", "classifier.4:input", (84,), (84,))]
    assert pairs[0].teacher == teacher[0][0] and pairs[-1].teacher == teacher[-1][0]


def test_paired_features_flow_into_the_losses_and_train_the_student(lenet_pair):
    """Teacher tensors through ONNX Runtime taps, student modules through hooks: an objective of KD, AT and FitNet
    bound to their shapes; one step's gradient reaches the student's first convolution through AT alone."""
    from dfkd_meta.distill.features import pair_features, student_features, student_taps
    from dfkd_meta.onnx.runtime import OrtModel

    path, student = lenet_pair
    pairs = pair_features(_teacher_features(path), student_features(student, (1, 28, 28)))
    runner = OrtModel(path, taps=[p.teacher for p in pairs])
    x = torch.rand(8, 1, 28, 28)
    ran = runner.run(x.numpy())
    teacher = Outputs(torch.from_numpy(ran[runner.output_names[0]]),
                      {p.key: torch.from_numpy(ran[p.teacher]) for p in pairs})
    objective = Objective([("at", 1000.0), ("fitnet", 100.0)])
    objective.bind({p.key: (p.student_shape, p.teacher_shape) for p in pairs if len(p.student_shape) == 3})
    with student_taps(student, pairs) as feats:
        logits = student(x)
        captured = {k: v for k, v in feats.items()}
    assert {k: tuple(v.shape[1:]) for k, v in captured.items()} == {p.key: p.student_shape for p in pairs}
    maps = {k: v for k, v in captured.items() if v.dim() == 4}
    terms = objective.terms(Outputs(logits, maps), Outputs(teacher.logits, {k: teacher.features[k] for k in maps}), 4.0)
    assert set(terms) == {"at", "fitnet"} and all(torch.isfinite(v) and v > 0 for v in terms.values())
    student.zero_grad()
    terms["at"].backward()
    assert student.features[0].weight.grad.abs().sum() > 0 and student.classifier[0].weight.grad is None
    assert not feats  # the hooks are gone once the block ends: nothing is captured any more
    student(x)
    assert not feats


def test_named_pairs_and_their_one_line_errors(lenet_pair):
    from dfkd_meta.distill.features import pair_features, student_features

    path, student = lenet_pair
    teacher, found = _teacher_features(path), student_features(student, (1, 28, 28))
    [pair] = pair_features(teacher, found, [f"{teacher[1][0]}=features.4"])
    assert pair.teacher_shape == (16, 8, 8) and pair.student_shape == (8, 8, 8)
    for spec, text in (("nonsense", "expected TEACHER_TENSOR=STUDENT_MODULE"), ("x=features.4", "no feature tensor"),
                       (f"{teacher[1][0]}=features.99", "no module")):
        with pytest.raises(UsageError, match=text):
            pair_features(teacher, found, [spec])
    with pytest.raises(UsageError, match="name the pairs"):
        pair_features([("t", (4, 5, 5))], [("s", (4, 6, 6))])
    from dfkd_meta.distill.features import teacher_features
    from dfkd_meta.onnx.inspect import load_model_proto, model_facts

    proto = load_model_proto(path)
    every = teacher_features(model_facts(path, proto), proto, every=True)  # named pairs may use pre-activations
    pre = next(n for n, shape in every if n not in dict(teacher) and shape == (6, 24, 24))
    [pair] = pair_features(every, found, [f"{pre}=features.0"])
    assert (pair.teacher_shape, pair.student_shape) == ((6, 24, 24), (3, 24, 24))


def test_residual_stages_pair_with_the_blocks_not_the_layers_inside_them(tmp_path):
    from dfkd_meta.distill.features import pair_features, student_features
    from dfkd_meta.models import build_model
    from dfkd_meta.onnx.torch_export import export_onnx

    torch.manual_seed(0)
    path = export_onnx(build_model("resnet8", (3, 32, 32), 10), (3, 32, 32), tmp_path / "r.onnx")
    student = build_model("resnet8", (3, 32, 32), 10)
    pairs = pair_features(_teacher_features(path), student_features(student, (3, 32, 32)))
    stages = [p for p in pairs if p.key.startswith("stage")]
    assert [p.student_shape for p in stages] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    modules = dict(student.named_modules())
    assert all(len(list(modules[p.student].children())) > 0 for p in stages[1:])  # a block or a stage, not a conv
