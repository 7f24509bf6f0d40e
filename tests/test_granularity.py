"""Format 2.0's layer granularities (SPEC §8.1): the size budget, the streamed channel moments, the
format's version rules, and the consumers working from (or refusing) layers stored per channel."""
from __future__ import annotations

import dataclasses
import math
import shutil

import h5py
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfkd_meta.data import load_data
from dfkd_meta.errors import DfkdError
from dfkd_meta.models import build_model
from dfkd_meta.sidecar import read_sidecar, validate, write_sidecar
from dfkd_meta.sidecar.schema import parse_schema, schema_path
from dfkd_meta.sidecar.validator import check_file
from dfkd_meta.stats.budget import FILE_OVERHEAD, MB, LayerChoice, default_budget, plan_budget
from dfkd_meta.stats.export import export_release
from dfkd_meta.stats.moments import ChannelMoments, ClassMoments, PooledUnitMoments, pool_positions

from .conftest import digits_teacher
from .sidecar_factory import binding, coarsen, layer
from .sidecar_factory import full_example as example

# ------------------------------------------------------------------------------------------- moments


@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 6), st.integers(1, 40), st.integers(0, 2 ** 31))
@settings(max_examples=40, deadline=None)
def test_channel_moments_equal_numpy_and_the_pooled_unit_moments(classes, channels, positions, n, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(3.0, 2.0, (n, channels, positions)) + rng.normal(0, 5, channels)[None, :, None]).astype(np.float32)
    y = rng.integers(0, classes, n)
    streamed, units = ChannelMoments(classes, channels, positions), ClassMoments(classes, channels * positions)
    pooled_units = PooledUnitMoments(channels * positions)
    for lo in range(0, n, 7):  # batches of 7: the merge is exercised
        for m in (streamed, units, pooled_units):
            m.update(x[lo:lo + 7].reshape(len(x[lo:lo + 7]), -1), y[lo:lo + 7])
    derived = pool_positions(units, channels)
    for c in range(classes):
        xc = x[y == c].astype(np.float64)
        assert streamed.examples[c] == len(xc)
        if not len(xc):
            continue
        flat = xc.transpose(1, 0, 2).reshape(channels, -1)
        np.testing.assert_allclose(streamed.mean[c], flat.mean(1), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(streamed.std()[c], flat.std(1), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(streamed.mean[c], derived.mean[c], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(streamed.std()[c], derived.std()[c], rtol=1e-4, atol=1e-5)
    flat = x.reshape(n, -1).astype(np.float64)
    np.testing.assert_allclose(pooled_units.mean[0], flat.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pooled_units.std()[0], flat.std(0), rtol=1e-4, atol=1e-5)


# -------------------------------------------------------------------------------------------- budget

shapes = st.lists(st.lists(st.integers(1, 12), min_size=1, max_size=3).map(tuple), min_size=1, max_size=5)


@given(shapes, st.integers(2, 30), st.integers(0, 4), st.floats(0.05, 2.0))
@settings(max_examples=60, deadline=None)
def test_the_plan_fits_the_budget_or_refuses_and_a_larger_budget_is_never_coarser(layer_shapes, classes, rank, mb):
    layers = [(f"l{i}", s, min(rank, math.prod(s))) for i, s in enumerate(layer_shapes)]
    budget = int(mb * MB) // 8
    try:
        plan = plan_budget(layers, classes, budget)
    except DfkdError as exc:
        assert "max_size" in str(exc) and "\n" not in str(exc)
        coarsest = [LayerChoice(k, s, "channel" if len(s) > 1 else "unit") for k, s, _ in layers]
        assert FILE_OVERHEAD + sum(c.nbytes(classes) for c in coarsest) > budget
        return
    assert plan.nbytes(classes) <= budget
    finer = plan_budget(layers, classes, budget * 4)
    order = {"unit": 0, "channel_unit": 1, "channel": 2}
    for key, choice in plan.choices.items():
        assert order[finer.choices[key].granularity] <= order[choice.granularity]
        assert len(choice.shape) > 1 or choice.granularity == "unit"  # vectors stay per unit


def _sidecar_of(plan, classes: int, rng):
    layers = []
    for i, (key, choice) in enumerate(plan.choices.items()):
        x = layer(rng, key, i, choice.shape, classes, cov_rank=choice.cov_rank, channel=len(choice.shape) > 1)
        layers.append(coarsen(rng, x, choice.granularity))
    from dfkd_meta.sidecar import DatasetProvenance, Sidecar

    counts = np.full(classes, 5, np.int64)
    return Sidecar(model=binding(classes), dataset=DatasetProvenance("toy", int(counts.sum()), counts), layers=layers)


@given(st.lists(st.lists(st.integers(2, 24), min_size=2, max_size=3).map(tuple), min_size=1, max_size=4),
       st.integers(2, 40), st.integers(0, 3), st.floats(0.1, 1.0), st.integers(0, 2 ** 31))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_written_sidecars_stay_within_the_budget(tmp_path, layer_shapes, classes, rank, share, seed):
    """The budget holds for the file on disk, not only for the estimate."""
    layers = [(f"l{i}", s, rank) for i, s in enumerate(layer_shapes)]
    full = plan_budget(layers, classes, 1 << 40).nbytes(classes)
    budget = max(int(full * share), FILE_OVERHEAD + 64 * 1024)
    try:
        plan = plan_budget(layers, classes, budget)
    except DfkdError:
        return
    path = write_sidecar(_sidecar_of(plan, classes, np.random.default_rng(seed)), tmp_path / f"s{seed}.dfkd.h5")
    assert path.stat().st_size <= budget


def test_default_budget_is_twice_the_model_but_at_least_64_mb():
    assert default_budget(10 * MB) == 64 * MB and default_budget(100 * MB) == 200 * MB


# ------------------------------------------------------------------------------------------- format


def _coarse_example():
    sc = example()
    rng = np.random.default_rng(1)
    conv = coarsen(rng, sc.layers[0], "channel_unit")
    return dataclasses.replace(sc, layers=[conv, *sc.layers[1:]], spectral=[], format_version=None)


def test_format_version_is_the_oldest_that_holds_the_file(tmp_path):
    plain = dataclasses.replace(example(), format_version=None)
    assert plain.format_version == "1.1.0"
    coarse = _coarse_example()
    assert coarse.format_version == "2.0.0"
    for sc, name in ((plain, "plain"), (coarse, "coarse")):
        path = write_sidecar(sc, tmp_path / f"{name}.dfkd.h5")
        with h5py.File(path, "r") as f:
            assert f.attrs["dfkd_meta_version"] == sc.format_version
            assert ("granularity" in f["layers/conv"].attrs) == (name == "coarse")
        back = read_sidecar(path)
        assert back.format_version == sc.format_version and back.layer("conv").granularity == sc.layers[0].granularity
    back = read_sidecar(tmp_path / "coarse.dfkd.h5").layer("conv")
    assert back.mean is None and back.pooled_mean.shape == (back.units,) and back.channel.mean.shape == (4, 3)
    with pytest.raises(DfkdError, match="cannot hold layers coarser"):
        write_sidecar(dataclasses.replace(coarse, format_version="1.1.0"), tmp_path / "old.dfkd.h5")


def test_a_1_x_validator_refuses_a_2_0_file_by_its_version(tmp_path):
    path = write_sidecar(_coarse_example(), tmp_path / "s.dfkd.h5")
    reader_1_x = parse_schema(yaml.safe_load(schema_path(1).read_text()))  # a reader that knows only 1.x
    findings = check_file(path, None, reader_1_x)
    assert [f.rule for f in findings if f.severity == "error"] == ["DM310"]
    assert "implements 1.x" in findings[0].message


@pytest.mark.parametrize("edit, where", [
    (lambda f: f["layers/conv"].__delitem__("pooled_mean"), "pooled_mean"),  # channel_unit without its pooled units
    (lambda f: f["layers/conv"].create_dataset("mean", data=np.zeros((4, 48), np.float32)), "mean"),  # a unit item
    (lambda f: f["layers/conv"].attrs.__setitem__("granularity", "channel"), "pooled_mean"),  # pooled units on channel
    (lambda f: f["layers/fc"].attrs.__setitem__("granularity", "channel"), "granularity"),  # a vector per channel
])
def test_items_that_do_not_match_the_granularity_are_dm624(tmp_path, edit, where):
    path = write_sidecar(_coarse_example(), tmp_path / "s.dfkd.h5")
    with h5py.File(path, "r+") as f:
        edit(f)
    report = validate(path)
    bad = [f for f in report.errors if f.rule == "DM624"]
    assert bad and where in (bad[0].path + bad[0].message), report.findings


def test_empty_class_statistics_are_warnings_in_1_x_and_errors_in_2_0(tmp_path):
    for sc, severity in ((dataclasses.replace(example(), format_version=None), "warning"), (_coarse_example(), "error")):
        path = write_sidecar(sc, tmp_path / f"{severity}.dfkd.h5")
        with h5py.File(path, "r+") as f:
            f["dataset/class_counts"][0] = 0
            f["layers/logits/count"][0] = 0
        found = [f for f in validate(path).findings if f.rule == "DM618"]
        assert found and {f.severity for f in found} == {severity}


# ------------------------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def cnn_releases(tmp_path_factory):
    """The bn-cnn digits teacher exported with the default budget, and under a budget that forces channels."""
    folder = tmp_path_factory.mktemp("granularity")
    src = digits_teacher("bn-cnn", 8)
    shutil.copyfile(src, folder / src.name)
    digits = load_data("digits")
    fine = export_release(folder / src.name, digits, folder / "fine", spectral_k=4, progress=False)
    sizes = {x.key: x for x in read_sidecar(fine.sidecar_path).layers}
    largest = max((k for k, x in sizes.items() if len(x.shape) > 1), key=lambda k: sizes[k].units)
    # room for everything but one largest map's per-unit statistics: one map (of the largest ones) goes to channels
    budget = fine.summary["estimated_bytes"] - LayerChoice(largest, sizes[largest].shape).nbytes(10) \
        + LayerChoice(largest, sizes[largest].shape, "channel_unit").nbytes(10)
    coarse = export_release(folder / src.name, digits, folder / "coarse", spectral_k=4, max_size=budget / MB,
                            progress=False)
    moved = [k for k, g in coarse.summary["granularity"].items() if g != "unit"]
    assert len(moved) == 1 and sizes[moved[0]].units == sizes[largest].units
    return fine, coarse, moved[0]


def test_export_coarsens_the_largest_map_to_fit_and_its_statistics_are_the_pooled_ones(cnn_releases):
    fine, coarse, largest = cnn_releases
    assert set(fine.summary["granularity"].values()) == {"unit"}
    assert fine.summary["estimated_bytes"] <= fine.summary["size_budget_bytes"] == 64 * MB
    assert coarse.summary["granularity"][largest] == "channel_unit"
    assert coarse.sidecar_path.stat().st_size <= coarse.summary["size_budget_bytes"]
    a, b = read_sidecar(fine.sidecar_path), read_sidecar(coarse.sidecar_path)
    assert a.format_version == "1.1.0" and b.format_version == "2.0.0"
    u, ch = a.layer(largest), b.layer(largest)
    np.testing.assert_array_equal(u.count, ch.count)
    np.testing.assert_allclose(ch.channel.mean, u.channel.mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ch.channel.std, u.channel.std, rtol=1e-3, atol=1e-5)
    weights = u.count / u.count.sum()
    pooled_mean = weights @ u.mean.astype(np.float64)
    pooled_var = weights @ (u.std.astype(np.float64) ** 2 + (u.mean - pooled_mean) ** 2)
    np.testing.assert_allclose(ch.pooled_mean, pooled_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ch.pooled_std, np.sqrt(pooled_var), rtol=1e-3, atol=1e-5)
    for key in fine.summary["granularity"]:  # the other layers are untouched
        if key != largest:
            np.testing.assert_array_equal(a.layer(key).mean, b.layer(key).mean)


def test_a_budget_below_the_coarsest_is_one_line_and_leaves_nothing(tmp_path):
    from cli.main import main as cli_main

    src = digits_teacher("bn-cnn", 8)
    res = CliRunner().invoke(cli_main, ["export", "--model", str(src), "--data", "digits", "-o", str(tmp_path / "rel"),
                                        "--max-size", "0.01", "--quiet"])
    assert res.exit_code == 1 and "--max-size" in res.output and len(res.output.strip().splitlines()) == 1
    assert "Traceback" not in res.output and not (tmp_path / "rel").exists()


def test_cli_export_prints_what_the_budget_chose(tmp_path, cnn_releases):
    from cli.main import main as cli_main

    _, coarse, largest = cnn_releases
    src = digits_teacher("bn-cnn", 8)
    res = CliRunner().invoke(cli_main, ["export", "--model", str(src), "--data", "digits", "-o", str(tmp_path / "rel"),
                                        "--spectral-k", "4", "--quiet", "--max-size",
                                        str(coarse.summary["size_budget_bytes"] / MB)])
    assert res.exit_code == 0, res.output
    assert f"per channel for {largest} (channel_unit)" in res.output


# ----------------------------------------------------------------------------------------- consumers


def test_reconstruct_all_layers_matches_channel_statistics_on_a_coarse_layer(cnn_releases, tmp_path):
    from dfkd_meta.config import ReconstructConfig
    from dfkd_meta.reconstruct.synthesize import reconstruct

    _, coarse, _ = cnn_releases
    losses = {}
    for steps in (1, 40):
        cfg = ReconstructConfig(objective="all_layers", samples=40, steps=steps, batch_size=40, seed=0)
        r = reconstruct(coarse.model_path, coarse.sidecar_path, tmp_path / f"t{steps}.h5", cfg, device="cpu",
                        progress=False)
        assert r.summary["samples"] == 40 and np.isfinite(r.summary["mean_loss"])
        losses[steps] = r.summary["mean_loss"]
    assert losses[40] < 0.5 * losses[1]


def test_consumers_that_need_per_unit_statistics_refuse_a_coarse_layer_in_one_line(cnn_releases):
    from dfkd_meta.reconstruct.sampling import sample_layer

    _, coarse, largest = cnn_releases
    sc = read_sidecar(coarse.sidecar_path)
    with pytest.raises(DfkdError, match=f"layer '{largest}' is stored per channel"):
        sample_layer(sc.layer(largest), np.array([0, 1]), np.random.default_rng(0))


def test_the_online_moment_prior_works_from_the_channels_of_a_coarse_layer(cnn_releases):
    from dfkd_meta.synthesis.context import SynthesisContext

    _, coarse, largest = cnn_releases
    ctx = SynthesisContext(coarse.model_path, coarse.sidecar_path, torch.device("cpu"))
    assert largest in [layer.key for layer in ctx.moments.layers]
    x = torch.rand(20, *ctx.input_shape, requires_grad=True)
    classes = torch.arange(20) % 10
    opt = torch.optim.Adam([x], lr=0.05)
    first = None
    for _ in range(30):
        loss = ctx.moment_loss(ctx.run(x, ctx.moments.tensors), classes)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert np.isfinite(first) and float(loss.detach()) < 0.7 * first


# ------------------------------------------------------------------------------------- spectral planning


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_the_path_only_jacobian_equals_the_full_network_run_on_a_residual_net(tmp_path, exporter):
    """jacobian_block runs only the nodes between the two layers; a skip connection from before the first layer
    and shapes computed from the batch (the dynamo exporter's) are read from one full run."""
    import onnx

    from dfkd_meta.onnx.graph import load_onnx
    from dfkd_meta.onnx.inspect import candidate_layers, model_facts
    from dfkd_meta.onnx.linearize import jacobian_block, linearised_module
    from dfkd_meta.onnx.torch_export import export_onnx

    torch.manual_seed(0)
    path = export_onnx(build_model("resnet8", (3, 8, 8), 10).eval(), (3, 8, 8), tmp_path / "r.onnx", exporter=exporter)
    proto = load_onnx(path)
    layers = [c for c in candidate_layers(model_facts(path, proto), proto) if c.default and c.shape]
    module = linearised_module(proto)
    checked = 0
    for a, b in list(zip(layers, layers[1:]))[:3]:
        got = jacobian_block(module, a.name, b.name, a.shape, (3, 8, 8), chunk=100).toarray()
        units = math.prod(a.shape)
        eye = torch.eye(units, dtype=torch.float64).reshape(units, *a.shape)
        zeros = torch.zeros(units, 3, 8, 8, dtype=torch.float64)
        ran = [module.run(zeros, taps=[b.name], inject={a.name: inj})[b.name].reshape(units, -1)
               for inj in (eye, torch.zeros_like(eye))]
        want = (ran[0] - ran[1]).abs().T.numpy()
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
        checked += int(np.count_nonzero(want))
    assert checked > 0 and isinstance(proto, onnx.ModelProto)


def test_show_and_the_model_card_say_which_layers_are_per_channel(cnn_releases):
    from cli.main import main as cli_main

    _, coarse, moved = cnn_releases
    res = CliRunner().invoke(cli_main, ["show", str(coarse.sidecar_path)])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if moved in x and "pre_activation" in x)
    assert "per channel and class, units pooled over classes" in line
    assert "dfkd-meta 2.0.0 sidecar" in res.output
    card = (coarse.sidecar_path.parent / "README.md").read_text()
    assert f"`{moved}` per channel and class" in card
