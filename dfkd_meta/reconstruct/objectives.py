"""Reconstruction objectives, one class each, in a registry keyed by the names the CLI takes.

An objective names the tensors it needs, draws per-batch targets from the sidecar, and turns the
teacher's activations into a per-sample loss. By default every layer term is a mean over units
divided by the class's mean variance in that layer, so no layer dominates by its size or scale;
``loss_form`` "lopes2017" uses the paper's term instead (``lopes2017_sq_error``).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from ..errors import DfkdError, UsageError
from ..onnx.inspect import final_dense_layer
from ..sidecar.types import LayerStats, Sidecar, SpectralStats
from .sampling import JointSpectral, sample_layer, sample_spectral, zskd_soft_targets

EPS = 1e-6
ZSKD_TEMPERATURE = 20.0  # Nayak et al. 2019


@dataclass
class Context:
    """What an objective may use: the sidecar, the model proto, and the device."""

    sidecar: Sidecar
    model: onnx.ModelProto
    device: torch.device
    loss_form: str = "normalised"  # config.LOSS_FORMS
    spectral_targets: str = "coefficients"  # config.SPECTRAL_TARGETS

    @property
    def layers(self) -> list[LayerStats]:
        return self.sidecar.layers_in_order()

    @property
    def logits_layer(self) -> LayerStats:
        for layer in self.layers:
            if layer.kind == "logits":
                return layer
        raise DfkdError("the sidecar has no logits layer; re-export it with the logits among the export's {layers}")


@dataclass
class Batch:
    """Per-batch state: the classes, fixed targets and (for dropout) fixed masks."""

    classes: torch.Tensor
    targets: dict[str, torch.Tensor] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)


def _t(a: np.ndarray, ctx: Context) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float32, device=ctx.device)


def layer_value(layer: LayerStats, acts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The recorded value of a layer (SPEC §8.1): flattened, logits divided by the temperature."""
    v = acts[layer.tensor_name].flatten(1)
    return v / layer.temperature if layer.kind == "logits" else v


def normalised_sq_error(value: torch.Tensor, target: torch.Tensor, scale: torch.Tensor,
                        weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean squared error over units (or over ``weight``-selected units) / scale."""
    sq = (value - target) ** 2
    if weight is None:
        return sq.mean(1) / scale
    return (sq * weight).sum(1) / weight.sum(1).clamp_min(1.0) / scale


def lopes2017_sq_error(value: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                       rectify: bool = True) -> torch.Tensor:
    """Lopes et al.'s term: per-sample mean squared error of the rectified values, divided by the unit count.

    Their code rectifies both sides (the logits too) and weights each layer by 1 / its size; a
    spectral term (coefficients, not activations) is not rectified.
    """
    if rectify:
        value, target = torch.relu(value), torch.relu(target)
    sq = (value - target) ** 2
    units = sq.shape[1]
    if weight is None:
        return sq.mean(1) / units
    return (sq * weight).sum(1) / weight.sum(1).clamp_min(1.0) / units


class Objective:
    """Base: subclasses set ``name`` and implement taps/start/loss."""

    name = ""
    optimise = True
    start_from: str | None = None  # an init the objective needs ("first-layer"); None: the run's {init}
    uses_sidecar = True  # False: a metadata-free baseline (it reads only the model)

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def taps(self) -> list[str]:
        return [self.ctx.sidecar.model.logits_name]

    def start(self, classes: np.ndarray, rng: np.random.Generator) -> Batch:
        return Batch(torch.as_tensor(classes, device=self.ctx.device))

    def transforms(self, batch: Batch) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        return {}

    def loss(self, acts: dict[str, torch.Tensor], batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def term(self, value: torch.Tensor, target: torch.Tensor, scale: torch.Tensor,
             weight: torch.Tensor | None = None, rectify: bool = True) -> torch.Tensor:
        """One layer's (or block's) per-sample term in the run's loss form."""
        if self.ctx.loss_form == "lopes2017":
            return lopes2017_sq_error(value, target, weight, rectify)
        return normalised_sq_error(value, target, scale, weight)


OBJECTIVES: dict[str, type[Objective]] = {}


def objective(cls: type[Objective]) -> type[Objective]:
    OBJECTIVES[cls.name] = cls
    return cls


def _layer_scale(layer: LayerStats, ctx: Context) -> torch.Tensor:
    """Per class [C]: the mean recorded variance of the layer's units, or of its channels when stored per channel."""
    std = layer.std if layer.per_unit else layer.channel.std
    return _t(np.mean(std.astype(np.float64) ** 2, axis=1) + EPS, ctx)


def channel_moments(value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean and std [B, CH] of each channel over its positions (value: [B, CH, ...])."""
    flat = value.flatten(2)
    mean = flat.mean(2)
    return mean, (flat.pow(2).mean(2) - mean ** 2).clamp_min(1e-8).sqrt()


class _LayerMatching(Objective):
    """Match sampled per-class targets on a set of layers.

    A layer stored per unit gets a per-sample draw from its class's statistics; a layer stored per channel
    (SPEC §8.1 granularities ``channel_unit`` and ``channel``) has no per-unit draw to offer, so each sample's
    per-channel mean and spread over positions are matched to its class's recorded channel mean and std.
    """

    def chosen(self) -> list[LayerStats]:
        raise NotImplementedError

    def taps(self) -> list[str]:
        return [layer.tensor_name for layer in self.chosen()]

    @functools.cached_property
    def _scale(self) -> dict[str, torch.Tensor]:
        """Each chosen layer's per-class scale [C], converted once: the loss reads it every step."""
        return {layer.key: _layer_scale(layer, self.ctx) for layer in self.chosen()}

    def start(self, classes: np.ndarray, rng: np.random.Generator) -> Batch:
        batch = super().start(classes, rng)
        for layer in self.chosen():
            if layer.per_unit:
                batch.targets[layer.key] = _t(sample_layer(layer, classes, rng), self.ctx)
            else:
                batch.targets[layer.key] = _t(layer.channel.mean[classes], self.ctx)
                batch.targets[layer.key + "/std"] = _t(layer.channel.std[classes], self.ctx)
        return batch

    def loss(self, acts, batch):
        terms = {}
        for layer in self.chosen():
            scale = self._scale[layer.key][batch.classes]
            if not layer.per_unit:
                mean, std = channel_moments(acts[layer.tensor_name])
                terms[layer.key] = (self.term(mean, batch.targets[layer.key], scale)
                                    + self.term(std, batch.targets[layer.key + "/std"], scale, rectify=False))
                continue
            mask = batch.masks.get(layer.tensor_name)
            value = layer_value(layer, acts)
            if mask is not None:  # the tapped value is masked and rescaled: undo the scale, score kept units
                value = value * layer.dropout_keep_prob
            terms[layer.key] = self.term(value, batch.targets[layer.key], scale,
                                         mask.flatten(1) if mask is not None else None)
        return sum(terms.values()), terms


@objective
class TopLayer(_LayerMatching):
    """Match targets sampled for the temperature-softened logits."""

    name = "top_layer"

    def chosen(self):
        return [self.ctx.logits_layer]


@objective
class AllLayers(_LayerMatching):
    """Match targets on every stored layer, each term normalised."""

    name = "all_layers"

    def chosen(self):
        return self.ctx.layers


@objective
class AllLayersDropout(AllLayers):
    """As all_layers, through fixed random dropout masks (fresh per batch) on layers trained with dropout."""

    name = "all_layers_dropout"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.dropped = [layer for layer in ctx.layers if layer.dropout_keep_prob not in (None, 1.0)]
        if not self.dropped:
            raise DfkdError("all_layers_dropout: the sidecar records no dropout_keep_prob on any layer; "
                            "use all_layers, or export a teacher trained with dropout")

    def start(self, classes, rng):
        batch = super().start(classes, rng)
        for layer in self.dropped:
            keep = rng.random((len(classes), *layer.shape)) < layer.dropout_keep_prob
            batch.masks[layer.tensor_name] = torch.as_tensor(keep, dtype=torch.float32, device=self.ctx.device)
        return batch

    def transforms(self, batch):
        keep = {layer.tensor_name: layer.dropout_keep_prob for layer in self.ctx.layers}
        return {name: (lambda v, m=m, p=keep[name]: v * m / p) for name, m in batch.masks.items()}


class _SpectralMatching(Objective):
    """Match sampled coefficients of the activations in the stored graph-Fourier bases.

    The targets (``Context.spectral_targets``): "coefficients" draws each coefficient from its recorded
    class mean and std (jointly across blocks that share a layer); "layers" projects one draw per layer
    from the layer statistics (with their covariance factors) onto each block's basis, so the targets
    are correlated as the recorded layers are, and blocks agree on shared layers by construction.
    """

    joint_draw = True  # False draws each block's targets on its own (before 1.1; kept for ablations)

    def blocks(self) -> list[SpectralStats]:
        raise NotImplementedError

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        if not self.blocks():
            raise DfkdError(f"{self.name}: the sidecar has no such spectral blocks; re-export it with "
                            "the export's {spectral_k} K (K > 0)")
        self.layer_keys = sorted({k for b in self.blocks() for k in b.layers})  # the blocks' layers, once each
        coarse = [k for k in self.layer_keys if not ctx.sidecar.layer(k).per_unit]
        if ctx.spectral_targets == "layers" and coarse:
            raise DfkdError(f"{self.name}: {{spectral_targets}} 'layers' draws per-unit targets, and the layers {coarse} "
                            "are stored per channel; use 'coefficients'")
        if ctx.spectral_targets == "layers" and all(ctx.sidecar.layer(k).cov_factors is None for k in self.layer_keys):
            # measured: independent per-unit draws projected are worse than the coefficient targets
            raise DfkdError(f"{self.name}: {{spectral_targets}} 'layers' needs covariance factors on the blocks' "
                            "layers and this sidecar has none; use 'coefficients', or re-export with the "
                            "export's {cov_rank} R (R > 0)")
        self._basis = {b.key: _t(b.basis, ctx) for b in self.blocks()}
        self._scale = {b.key: _t(np.mean(b.coef_std.astype(np.float64) ** 2, axis=1) + EPS, ctx)
                       for b in self.blocks()}
        blocks = self.blocks()
        shared = any(set(a.layers) & set(b.layers) for i, a in enumerate(blocks) for b in blocks[i + 1:])
        # blocks that share a layer (the pairs of a chain) draw their coefficient targets jointly, consistent on
        # it; layer targets agree on shared layers by construction and need no joint draw
        joint = shared and self.joint_draw and ctx.spectral_targets == "coefficients"
        self.joint = JointSpectral(blocks, {k: math.prod(ctx.sidecar.layer(k).shape)
                                            for k in self.layer_keys}) if joint else None

    def taps(self):
        return [self.ctx.sidecar.layer(k).tensor_name for k in self.layer_keys]

    def start(self, classes, rng):
        batch = super().start(classes, rng)
        if self.ctx.spectral_targets == "layers":
            drawn = self.projected_layer_draws(classes, rng)
        elif self.joint is not None:
            drawn = self.joint.sample(classes, rng)
        else:
            drawn = {b.key: sample_spectral(b, classes, rng) for b in self.blocks()}
        for key, target in drawn.items():
            batch.targets[key] = _t(target, self.ctx)
        return batch

    def projected_layer_draws(self, classes: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Each block's coefficients of one per-layer draw per sample (shared layers drawn once)."""
        layer = {k: sample_layer(self.ctx.sidecar.layer(k), classes, rng) for k in self.layer_keys}
        return {b.key: np.concatenate([layer[k] for k in b.layers], axis=1) @ b.basis.astype(np.float64)
                for b in self.blocks()}

    def coefficients(self, block: SpectralStats, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        signal = torch.cat([layer_value(self.ctx.sidecar.layer(k), acts) for k in block.layers], dim=1)
        return signal @ self._basis[block.key]

    def loss(self, acts, batch):
        terms = {b.key: self.term(self.coefficients(b, acts), batch.targets[b.key], self._scale[b.key][batch.classes],
                                  rectify=False) for b in self.blocks()}
        return sum(terms.values()), terms


@objective
class SpectralAllLayers(_SpectralMatching):
    """Match sampled graph-Fourier coefficients of all layers together (Lopes et al.)."""

    name = "spectral_all_layers"

    def blocks(self):
        return [b for b in self.ctx.sidecar.spectral if b.scope == "all_layers"]


@objective
class SpectralLayerPairs(_SpectralMatching):
    """Match sampled graph-Fourier coefficients of each pair of adjacent layers (Lopes et al.).

    The pairs' targets are drawn jointly (``JointSpectral``), so pairs that share a layer agree on it.
    """

    name = "spectral_layer_pairs"

    def blocks(self):
        return [b for b in self.ctx.sidecar.spectral if b.scope == "layer_pair"]


@objective
class Noise(Objective):
    """The random-input baseline: no optimisation at all."""

    name = "noise"
    optimise = False
    uses_sidecar = False

    def loss(self, acts, batch):
        zero = torch.zeros(len(batch.classes), device=self.ctx.device)
        return zero, {}


@objective
class FirstLayerGaussian(Noise):
    """Draws from the sidecar's class-conditional Gaussian at the first stored layer, mapped back to inputs.

    The first stored layer must be affine in the input (a Dense or Conv pre-activation); its
    recorded class means and covariance factors become an input-space Gaussian per class
    (reconstruct.init). No optimisation: the sidecar's cheapest transfer set.
    """

    name = "first_layer_gaussian"
    start_from = "first-layer"
    uses_sidecar = True


def final_dense_weight(model: onnx.ModelProto, logits: str) -> np.ndarray:
    """The [C, H] weight of the dense layer producing ``logits`` (through Add/Identity), for ZSKD."""
    found = final_dense_layer(model, logits)
    if found is None:
        raise DfkdError("zskd needs the logits to come from a dense layer (Gemm or MatMul with a weight initializer)")
    return found[0]


@objective
class ZSKD(Objective):
    """Metadata-free baseline (Nayak et al. 2019): Dirichlet soft labels from the final layer's weights."""

    name = "zskd"
    uses_sidecar = False

    def __init__(self, ctx):
        super().__init__(ctx)
        self.weight = final_dense_weight(ctx.model, ctx.sidecar.model.logits_name)

    def start(self, classes, rng):
        batch = super().start(classes, rng)
        batch.targets["soft"] = _t(zskd_soft_targets(self.weight, classes, rng), self.ctx)
        return batch

    def loss(self, acts, batch):
        # KL(target || softmax(logits / T)): the cross-entropy minus the target's entropy, so 0 means matched.
        logp = torch.log_softmax(acts[self.ctx.sidecar.model.logits_name] / ZSKD_TEMPERATURE, dim=1)
        target = batch.targets["soft"]
        kl = (target * (torch.log(target.clamp_min(1e-12)) - logp)).sum(1)
        return kl, {"soft_kl": kl}


def build_objective(name: str, ctx: Context) -> Objective:
    if name not in OBJECTIVES:
        raise UsageError(f"{{objective}} {name!r}: expected one of {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name](ctx)
