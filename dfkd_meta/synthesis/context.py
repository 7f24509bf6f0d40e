"""What a synthesis method works with: the teacher, its input space, and the priors it may use.

Metadata-free priors come from the teacher file alone: the final dense layer's input (DAFL's
features) and the running statistics of any BatchNormalization node left in the graph (DeepInversion's
feature prior; torch's exporters fold BatchNorm into the convolutions, so most ONNX teachers have
none). With a sidecar (validated and bound to the teacher before any work) three more: per-class,
per-layer moments of the hidden layers as the feature prior (class-conditional, and there for
BN-free nets and MLPs), the first-layer Gaussian over inputs, and the class prior from the class
counts.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ..convention import from_model
from ..convention import parse as parse_convention
from ..errors import DfkdError
from ..onnx.graph import OnnxModule, load_onnx
from ..onnx.inspect import batchnorm_statistics, final_dense_layer, model_facts, require_input_shape
from ..onnx.torch_export import model_metadata
from ..reconstruct.init import FirstLayerGaussian
from ..reconstruct.inputs import ImageView, domain_bounds
from ..reconstruct.priors import MomentMatcher
from ..sidecar import open_sidecar
from ..sidecar.types import Sidecar
from . import losses


class SynthesisContext:
    """The teacher (differentiable, on ``device``), its input space and the priors, with a count of the
    examples the teacher has been run on (its forward passes, the budget the benchmark reports)."""

    def __init__(self, teacher: str | os.PathLike, sidecar: str | os.PathLike | None, device: torch.device,
                 input_norm: str | None = None):
        """``teacher``: a file no one else can change for the run (``distill_online`` passes its private copy).
        ``input_norm``: how the teacher takes raw values (a convention spec), for a teacher whose metadata does not
        say (with a sidecar it must agree with the recorded input domain)."""
        self.input_norm = input_norm
        self.teacher_path = Path(teacher)
        self.sidecar_path = Path(sidecar) if sidecar is not None else None
        # a sidecar that does not validate, or is bound to another model, is refused before any work
        checked = open_sidecar(sidecar, teacher) if sidecar is not None else None
        self.sidecar: Sidecar | None = checked.sidecar if checked is not None else None
        self.sidecar_sha256 = checked.sha256 if checked is not None else None
        self.device = device
        proto = load_onnx(teacher)
        self.teacher = OnnxModule(proto, source=str(teacher)).to(device).eval()
        facts = model_facts(teacher, proto)
        if len(facts.outputs) != 1:
            raise DfkdError(f"{teacher}: online synthesis needs one logits output (the model has "
                            f"{[o.name for o in facts.outputs]})")
        self.input_shape = require_input_shape(facts, str(teacher))
        self.logits = facts.outputs[0].name
        out = facts.outputs[0].shape
        if not out or not isinstance(out[-1], int):
            raise DfkdError(f"{teacher}: the logits have shape {out}; expected [batch, classes]")
        self.num_classes = int(out[-1])
        dense = final_dense_layer(proto, self.logits)
        self.features = dense[1] if dense is not None else None
        self.batchnorm = [(name, torch.as_tensor(m, dtype=torch.float32, device=device),
                           torch.as_tensor(v, dtype=torch.float32, device=device))
                          for name, m, v in batchnorm_statistics(proto)]
        self.image_view, self.bounds, self.input_domain = self._input_space(proto)
        self.class_prior = torch.full((self.num_classes,), 1.0 / self.num_classes)
        self.moments: MomentMatcher | None = None
        self.gaussian: FirstLayerGaussian | None = None
        if self.sidecar is not None:
            counts = torch.as_tensor(self.sidecar.dataset.class_counts, dtype=torch.float64)
            if counts.sum() > 0:
                self.class_prior = (counts / counts.sum()).float()
            matcher = MomentMatcher(self.sidecar.layers, device, "all")
            self.moments = matcher if matcher.layers else None
            try:
                self.gaussian = FirstLayerGaussian(self.sidecar, proto, str(sidecar))
            except DfkdError:
                self.gaussian = None  # the first stored layer is not affine in the input, or too large
        self.teacher_examples = 0  # inputs run through the teacher so far

    def _input_space(self, proto) -> tuple[ImageView | None, tuple[torch.Tensor, torch.Tensor] | None, dict]:
        given = parse_convention(self.input_norm) if self.input_norm is not None else None
        if self.sidecar is not None:
            binding = self.sidecar.model
            dom = binding.input_domain
            if given is not None and (np.broadcast_to(given.norm_mean, np.shape(dom.norm_mean)).tolist() !=
                                      list(dom.norm_mean) or np.broadcast_to(
                                          given.norm_std, np.shape(dom.norm_std)).tolist() != list(dom.norm_std)):
                raise DfkdError(f"{self.sidecar_path}: {{input_norm}} {self.input_norm!r} contradicts the input "
                                f"normalisation the sidecar records (mean {list(dom.norm_mean)}, std "
                                f"{list(dom.norm_std)}, measured on the training data); drop {{input_norm}}")
            record = {**dom.as_record(), "image_shape": list(binding.image_shape) if binding.image_shape else None}
            return ImageView.of(binding), domain_bounds(binding, self.device), record
        shape = self.input_shape
        view = ImageView("NCHW", shape, shape) if len(shape) == 3 else None
        conv = given if given is not None else from_model(model_metadata(proto), str(self.teacher_path))
        record = {"layout": "NCHW" if len(shape) == 3 else "NC", "norm_mean": [0.0], "norm_std": [1.0],
                  "convention": None, "image_shape": list(shape) if len(shape) == 3 else None}
        if conv is None or conv.source == "legacy_train":
            return view, None, record  # the convention is unknown without the data: inputs stay as generated
        record.update(norm_mean=list(conv.norm_mean), norm_std=list(conv.norm_std), convention=conv.name)
        if len(shape) == 1 and conv.extra.get("image_shape"):  # the images behind a flat input, as the metadata says
            record["image_shape"] = list(conv.extra["image_shape"])
        if conv.value_min is None:
            return view, None, record  # the raw range is unknown: inputs are not clipped
        record.update(value_min=conv.value_min, value_max=conv.value_max)
        mean = np.asarray(conv.norm_mean, np.float64)
        std = np.asarray(conv.norm_std, np.float64)
        if mean.size not in (1, shape[0], math.prod(shape)):
            image = conv.extra.get("image_shape")  # a flat input: the channels of the images behind it
            if not image or math.prod(image) != math.prod(shape) or len(mean) != image[0]:
                raise DfkdError(f"{self.teacher_path}: its input convention has {mean.size} channels but it takes "
                                f"inputs of shape {list(shape)}, and no image shape says how they map; pass "
                                "{input_norm} with one number, or one per input value")
            flat = conv.flattened(tuple(image))
            mean, std = np.asarray(flat.norm_mean, np.float64), np.asarray(flat.norm_std, np.float64)
        view_shape = (1, -1, *([1] * (len(shape) - 1))) if mean.size == shape[0] or mean.size == 1 else (1, *shape)
        t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=self.device).reshape(view_shape)  # noqa: E731
        return view, (t((conv.value_min - mean) / std), t((conv.value_max - mean) / std)), record

    # the teacher ---------------------------------------------------------------------------------------
    def taps(self, features: bool = False, priors: bool = True) -> list[str]:
        """Tensors a method reads: the logits, optionally the penultimate features, and the priors' layers."""
        names = [self.logits]
        if features and self.features is not None:
            names.append(self.features)
        if priors:
            names += [name for name, _, _ in self.batchnorm]
            if self.moments is not None:
                names += self.moments.tensors
        return list(dict.fromkeys(names))

    def run(self, x: torch.Tensor, taps: list[str]) -> dict[str, torch.Tensor]:
        """The teacher on ``x`` (gradients flow to ``x``), returning the tapped tensors."""
        self.teacher_examples += len(x)
        return self.teacher.run(x, taps)

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        self.teacher_examples += len(x)
        return self.teacher.run(x, [self.logits])[self.logits]

    # priors ------------------------------------------------------------------------------------------
    def clip(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` clipped into the valid input domain, when it is known."""
        return x if self.bounds is None else torch.maximum(torch.minimum(x, self.bounds[1]), self.bounds[0])

    def bn_loss(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        """DeepInversion's feature regulariser over the teacher's BatchNorm layers (0 when it has none)."""
        total = torch.zeros((), device=self.device)
        for name, mean, var in self.batchnorm:
            total = total + losses.batchnorm_statistics(acts[name], mean, var)
        return total

    def moment_loss(self, acts: dict[str, torch.Tensor], classes: torch.Tensor) -> torch.Tensor:
        """The sidecar's class-conditional moment matching on the hidden layers (0 without a sidecar)."""
        if self.moments is None:
            return torch.zeros((), device=self.device)
        return self.moments.loss(acts, classes, self.num_classes)

    def sample_classes(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Target classes: balanced without a sidecar, in the data's class proportions with one."""
        if self.sidecar is None:
            return (torch.randperm(n, generator=gen) % self.num_classes).to(self.device)
        return torch.multinomial(self.class_prior, n, replacement=True, generator=gen).to(self.device)

    def random_inputs(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Inputs to start optimising from: uniform over the domain when it is known, else standard normal."""
        if self.bounds is None:
            return torch.randn((n, *self.input_shape), generator=gen).to(self.device)
        lo, hi = self.bounds
        return lo + (hi - lo) * torch.rand((n, *self.input_shape), generator=gen).to(self.device)

    def gaussian_inputs(self, classes: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
        """Draws from the sidecar's first-layer Gaussian for ``classes`` (None without one)."""
        if self.gaussian is None:
            return None
        x = self.gaussian.sample(classes.cpu().numpy(), gen).to(self.device)
        return self.clip(x)

    @property
    def flat(self) -> bool:
        return self.image_view is None

    def describe(self) -> dict:
        return {"input_shape": list(self.input_shape), "classes": self.num_classes,
                "sidecar": str(self.sidecar_path) if self.sidecar_path else None,
                "batchnorm_layers": len(self.batchnorm), "penultimate_features": self.features,
                "moment_layers": [layer.key for layer in self.moments.layers] if self.moments else [],
                "first_layer_gaussian": self.gaussian is not None,
                "input_domain_known": self.bounds is not None, "image_inputs": not self.flat,
                "input_elements": math.prod(self.input_shape)}
