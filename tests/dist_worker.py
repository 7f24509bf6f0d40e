"""Run under torchrun by tests/test_distributed.py: one distillation per process, each process's parameters saved.

    torchrun --standalone --nproc-per-node 2 tests/dist_worker.py offline|online OUT TEACHER [SIDECAR]

Each rank writes OUT/rank<R>.pt (its student's and, online, its generator's parameters); the main rank also
writes OUT/report.json. Not a test module (pytest does not collect it).
"""
import json
import sys
from pathlib import Path

import torch

from dfkd_meta import dist
from dfkd_meta.config import DistillConfig, OnlineConfig
from dfkd_meta.data import load_data
from dfkd_meta.distill import distill, distill_online
from dfkd_meta.models import build_model


def main(mode: str, out: str, teacher: str, sidecar: str | None = None) -> None:
    dist.init_from_env("cpu")
    out = Path(out)
    data = load_data("digits")
    torch.manual_seed(0)
    student = build_model("hinton-tiny", data.input_shape, 10)
    if mode == "offline":
        result = distill(teacher, student, data, DistillConfig(epochs=6, batch_size=64, lr=3e-3, seed=0),
                         device="cpu", eval_data=data, eval_split="train", progress=False,
                         checkpoint=out / "student.ckpt")
        extra = {}
    else:
        cfg = OnlineConfig(method="dfad", iterations=12, batch_size=32, seed=0)
        captured = {}

        def keep_method(method_cls):
            class Kept(method_cls):
                def __init__(self, *a, **k):
                    super().__init__(*a, **k)
                    captured["method"] = self
            return Kept

        import dfkd_meta.distill.online as online
        get = online.get_method
        online.get_method = lambda name: keep_method(get(name))
        result = distill_online(teacher, student, cfg, sidecar=sidecar, device="cpu", eval_data=data,
                                eval_split="train", progress=False)
        extra = {f"generator.{k}": v for k, v in captured["method"].generator.state_dict().items()}
    torch.save({**{f"student.{k}": v for k, v in result.student.state_dict().items()}, **extra},
               out / f"rank{dist.rank()}.pt")
    if dist.is_main_process():
        (out / "report.json").write_text(json.dumps(result.report, default=str))
    dist.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
