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
    with pytest.raises(UsageError, match="vectors onto vectors"):
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
