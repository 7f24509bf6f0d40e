"""benchmarks/reference_speed.py's plumbing: the authors' functions run as written but on the CPU, nothing of
torchvision is needed, and an iteration is timed from the optimiser's own steps."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import reference_speed  # noqa: E402

PUBLISHED = '''
import torchvision

def make(n):
    x = torch.ones(n).to('cuda')
    return x.cuda() * 2

class Hook():
    def __init__(self):
        self.device = torch.zeros(1, device='cuda').device

def unused():
    raise RuntimeError("never executed")
'''


def test_named_definitions_run_unchanged_except_the_device(tmp_path):
    path = tmp_path / "published.py"
    path.write_text(PUBLISHED)
    ns = reference_speed.definitions_from(path, ["make", "Hook"], {"torch": torch})
    assert torch.equal(ns["make"](3), torch.full((3,), 2.0))
    assert ns["Hook"]().device.type == "cpu"
    assert "unused" not in ns  # only what was named; the module header (import torchvision) never runs


def test_a_definition_missing_from_the_published_file_is_one_clear_error(tmp_path):
    path = tmp_path / "published.py"
    path.write_text(PUBLISHED)
    with pytest.raises(SystemExit, match=r"published.py: get_images not found; is this the published revision\?"):
        reference_speed.definitions_from(path, ["make", "get_images"], {"torch": torch})


def test_the_torchvision_stand_in_covers_what_the_scripts_import():
    tv = reference_speed.torchvision_stand_in()
    t = tv["torchvision.transforms"]
    assert t.Compose([t.Resize((32, 32)), t.ToTensor()])("x") == "x"
    data = tv["torchvision.datasets.mnist"].MNIST("/nowhere", train=False, transform=None)
    x, y = data[0]
    assert x.shape == (1, 32, 32) and int(y) == 0 and len(data) == 8
    assert tv["torchvision.utils"].save_image(torch.zeros(1)) is None


def test_iterations_are_timed_between_the_optimisers_steps():
    w = torch.nn.Parameter(torch.zeros(1))
    with reference_speed.StepClock(torch.optim.SGD) as clock:
        opt = torch.optim.SGD([w], lr=0.1)
        for _ in range(12):
            w.grad = torch.ones(1)
            opt.step()
    assert len(clock.times) == 12 and torch.optim.SGD.step is clock.original
    clock.times = [float(i) for i in range(12)]  # one call a second
    assert clock.per_cycle(skip=2) == pytest.approx(1.0)
    assert clock.per_cycle(skip=2, stride=5) == pytest.approx(5.0)
    with pytest.raises(SystemExit, match="too few iterations"):
        clock.per_cycle(skip=11)
