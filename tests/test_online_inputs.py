"""Online distillation on teachers whose inputs are not 1-channel images with a sidecar: flattened RGB,
RGB convolutions, no metadata; --input-norm in every mode; students that cannot take the input (issue 29)."""
from __future__ import annotations

import json

import onnx
import pytest
import torch
from click.testing import CliRunner

from cli.main import main as cli
from dfkd_meta.config import OnlineConfig
from dfkd_meta.convention import METADATA_KEY, InputConvention, parse
from dfkd_meta.data import Feed, load_data
from dfkd_meta.distill import distill_online, write_student
from dfkd_meta.errors import DfkdError, UsageError
from dfkd_meta.models import build_model
from dfkd_meta.onnx.torch_export import export_onnx

from .conftest import digits_release


def _convention(path) -> dict:
    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[METADATA_KEY])


def test_flattening_a_convention_twice_is_the_same_convention():
    c = InputConvention("custom", (0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    once = c.flattened((3, 4, 4))
    assert len(once.norm_mean) == 48 and once.norm_mean[16] == 0.2
    assert once.flattened((3, 4, 4)) == once


def test_a_flat_rgb_teacher_without_sidecar_synthesises_and_its_student_reexports(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(192, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)).eval()
    teacher = export_onnx(net, (192,), tmp_path / "flat.onnx", convention=parse("imagenet"), image_shape=(3, 8, 8))
    cfg = OnlineConfig(method="dafl", iterations=2, batch_size=8, options={"nz": 16})
    result = distill_online(teacher, build_model("hinton-tiny", (192,), 10), cfg, device="cpu", progress=False)
    assert result.image_shape == (3, 8, 8) and result.convention.name == "imagenet"
    first = write_student(result.student, (192,), tmp_path / "s1.onnx", None, convention=result.convention,
                          image_shape=result.image_shape)
    again = write_student(result.student, (192,), tmp_path / "s2.onnx", None,
                          convention=result.convention.flattened((3, 8, 8)), image_shape=result.image_shape)
    assert _convention(first)["image_shape"] == [3, 8, 8] == _convention(again)["image_shape"]
    assert _convention(first)["norm_mean"] == [0.485, 0.456, 0.406]


def test_grayscale_eval_data_feeds_an_rgb_teacher_and_other_mismatches_are_one_line_errors():
    raw = load_data("digits").raw["test"][0][:4].astype("float32")  # [4, 1, 8, 8]
    x = Feed(model_shape=(3, 8, 8))(raw)
    assert x.shape == (4, 3, 8, 8) and (x[:, 0] == x[:, 2]).all()
    with pytest.raises(UsageError, match=r"examples of shape \[1, 8, 8\] cannot feed a model taking \[3, 32, 32\]"):
        Feed(model_shape=(3, 32, 32))(raw)


def test_a_student_that_cannot_take_the_input_is_a_one_line_error(tmp_path):
    with pytest.raises(UsageError, match=r"'lenet5-half' cannot take inputs of shape \[1, 8, 8\]"):
        build_model("lenet5-half", (1, 8, 8), 10)
    release = digits_release(tmp_path, "hinton-small", 5, spectral_k=0)
    out = CliRunner().invoke(cli, ["distill", "--teacher", str(release.model_path), "--method", "dafl",
                                   "--student", "lenet5-half", "-o", str(tmp_path / "s.onnx")])
    assert out.exit_code == 2 and out.output.count("\n") == 1 and "Traceback" not in out.output


def test_input_norm_applies_online_is_recorded_and_is_refused_against_a_sidecar(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    teacher = export_onnx(net, (1, 8, 8), tmp_path / "bare.onnx")  # no convention in its metadata
    cfg = OnlineConfig(method="dfad", iterations=2, batch_size=8, options={"nz": 16}, input_norm="0.5/0.25")
    result = distill_online(teacher, build_model("hinton-tiny", (1, 8, 8), 10), cfg, device="cpu", progress=False)
    assert result.convention.norm_mean == (0.5,) and result.convention.norm_std == (0.25,)
    assert result.report["settings"]["input_norm"] == "0.5/0.25"
    assert result.report["input_convention"]["norm_std"] == [0.25]
    path = write_student(result.student, (1, 8, 8), tmp_path / "s.onnx", None, convention=result.convention)
    assert _convention(path)["norm_std"] == [0.25]
    release = digits_release(tmp_path / "rel", "hinton-small", 5, spectral_k=0)
    with pytest.raises(DfkdError, match="contradicts the input normalisation the sidecar records"):
        distill_online(release.model_path, build_model("hinton-tiny", (1, 8, 8), 10),
                       OnlineConfig(method="dfad", iterations=1, batch_size=8, input_norm="0.1/0.9"),
                       sidecar=release.sidecar_path, device="cpu", progress=False)
