"""Leakage audit of a release: what a consumer of the sidecar can learn about the private data it came from.

Three measurements, each against the private data (docs/privacy.md says how to read them):

- **class means**: PSNR and SSIM between each class's mean input in the data and the best reconstruction of it
  from the release: the mean of the first-layer Gaussian (``reconstruct/init.py``, when the first stored layer
  is affine and per unit) and, when a transfer set is given, the mean of its samples of the class;
- **membership**: a *shadow release* is exported, with the release's own settings, from ``members`` random
  examples of the train split; the tracing test of Dwork, Smith, Steinke, Ullman & Vadhan (2015, "Robust
  traceability from trace amounts") scores each member and as many non-members (other train examples) by
  ``(a(z) - r)' S^-1 (m - r)``: the candidate's own activations ``a(z)`` (the teacher is public) against the
  released class mean ``m`` of its class, centred on a reference population's class mean ``r`` and whitened by
  its within-class covariance ``S`` (leading principal directions; the reference is up to 2 x ``members`` test
  examples, which the attacker is granted). AUC 0.5 and advantage 0 (the best TPR - FPR over thresholds) are a
  coin; the test needs no threshold, so no shadow calibration;
- **nearest neighbours**: reconstructed samples' distance to the nearest of ``members`` training examples
  against the nearest of as many unseen ones (a validation split held out of the release, else the test split):
  a share near 0.5 of samples nearer a training example means they are no closer to what the teacher was
  trained on than to unseen data.

Inputs are compared in the teacher's raw value space (model inputs with the recorded normalisation undone).
Memory: ``members`` examples of the data twice (members and non-members) and the reference set, in float32.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import ExportConfig
from .convention import from_domain
from .data import DataSource, Feed
from .errors import DfkdError, UsageError
from .fileio import PrivateFolder, require_file
from .onnx.graph import load_onnx
from .onnx.inspect import copy_model
from .onnx.runtime import OrtModel
from .sidecar import open_sidecar
from .sidecar.types import LayerStats, Sidecar

MAX_TRACED_VALUES = 20_000  # released values per class the membership test reads (a random choice beyond)
SSIM_K1, SSIM_K2, SSIM_SIGMA = 0.01, 0.03, 1.5  # Wang, Bovik, Sheikh & Simoncelli 2004


# --- the figures --------------------------------------------------------------------------------------------------

def psnr(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB of ``b`` against ``a`` (inf when equal)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(data_range ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Mean structural similarity of two images [C, H, W] (channels averaged) or vectors (one row), with the
    Gaussian window (sigma 1.5) of Wang et al. 2004."""
    from scipy.ndimage import gaussian_filter

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"ssim of shapes {a.shape} and {b.shape}")
    a = a.reshape(-1, *a.shape[-2:]) if a.ndim >= 2 else a.reshape(1, 1, -1)
    b = b.reshape(a.shape)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    sigma = (0, SSIM_SIGMA, SSIM_SIGMA) if a.shape[1] > 1 else (0, 0, SSIM_SIGMA)

    def blur(x):
        return gaussian_filter(x, sigma, mode="reflect", truncate=3.5)  # an 11-tap window, as the paper's
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def auc(members: np.ndarray, others: np.ndarray) -> float:
    """P(a member scores above a non-member), ties counted half (the Mann-Whitney statistic)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([members, others]))
    n, m = len(members), len(others)
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * m))


def advantage(members: np.ndarray, others: np.ndarray) -> float:
    """The best true-positive rate less false-positive rate of a threshold on the score."""
    scores = np.concatenate([members, others])
    is_member = np.concatenate([np.ones(len(members)), np.zeros(len(others))])
    order = np.argsort(-scores, kind="stable")
    tpr = np.cumsum(is_member[order]) / len(members)
    fpr = np.cumsum(1 - is_member[order]) / len(others)
    keep = np.r_[scores[order][1:] != scores[order][:-1], True]  # thresholds between distinct scores only
    return float(max(0.0, (tpr - fpr)[keep].max()))


# --- the release in the teacher's raw value space ----------------------------------------------------------------

class RawSpace:
    """The recorded input domain: data -> model inputs, and model inputs -> raw values (normalisation undone)."""

    def __init__(self, sidecar: Sidecar):
        dom = sidecar.model.input_domain
        self.convention = from_domain(dom.as_record())
        self.shape = tuple(sidecar.model.input_shape[1:])
        self.feed = Feed(self.convention, self.shape)
        self.range = float(dom.value_max - dom.value_min)

    def raw(self, x: np.ndarray) -> np.ndarray:
        """Model inputs [N, *shape] with the per-channel normalisation undone (flat inputs: one channel)."""
        mean, std = np.asarray(self.convention.norm_mean), np.asarray(self.convention.norm_std)
        x = np.asarray(x, np.float64).reshape(len(x), *self.shape)
        if len(mean) > 1 and x.ndim == 4 and x.shape[1] == len(mean):
            return x * std[None, :, None, None] + mean[None, :, None, None]
        return x * std[0] + mean[0]

    def image(self, x: np.ndarray) -> np.ndarray:
        """One raw example as an image for SSIM: [C, H, W] as it is, a square vector as one channel."""
        if x.ndim == 1 and math.isqrt(x.size) ** 2 == x.size:
            return x.reshape(1, math.isqrt(x.size), -1)
        return x


def class_means(data: DataSource, split: str, space: RawSpace, classes: int,
                idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each class's mean raw input [C, *shape] over the split (or its examples ``idx``), and the counts [C]."""
    sums, counts = np.zeros((classes, *space.shape)), np.zeros(classes, np.int64)
    order = np.arange(data.size(split)) if idx is None else np.sort(idx)
    labels = data.labels(split)
    for i in range(0, len(order), 1024):
        part = order[i:i + 1024]
        x, y = space.raw(data.take(split, part, feed=space.feed)), labels[part]
        np.add.at(sums, y, x)
        counts += np.bincount(y, minlength=classes)
    return sums / np.maximum(counts, 1).reshape(-1, *[1] * len(space.shape)), counts


def mean_recovery(truth: np.ndarray, counts: np.ndarray, candidates: dict[str, np.ndarray], space: RawSpace) -> dict:
    """PSNR and SSIM of each candidate's class means [C, *shape] against the true ones, per class and averaged over
    the classes that have examples; ``best`` names the candidate of the highest mean PSNR."""
    out: dict = {"candidates": {}}
    present = np.flatnonzero(counts > 0)
    for name, means in candidates.items():
        p = [psnr(truth[c], means[c], space.range) for c in present]
        s = [ssim(space.image(truth[c]), space.image(means[c]), space.range) for c in present]
        out["candidates"][name] = {"psnr": [round(v, 3) for v in p], "ssim": [round(v, 4) for v in s],
                                   "mean_psnr": round(float(np.mean(p)), 3), "mean_ssim": round(float(np.mean(s)), 4)}
    if out["candidates"]:
        best = max(out["candidates"], key=lambda k: out["candidates"][k]["mean_psnr"])
        out.update(best=best, psnr=out["candidates"][best]["mean_psnr"], ssim=out["candidates"][best]["mean_ssim"])
    return out


# --- membership: the tracing test on a shadow release ------------------------------------------------------------

def shadow_config(sidecar: Sidecar) -> ExportConfig:
    """The export settings a release was made with, as far as its sidecar records them (layers, temperature,
    covariance rank, spectral k, the privacy budget); the shadow has no minimum class count (it is never released)."""
    logits = next((layer for layer in sidecar.layers if layer.kind == "logits"), None)
    ranks = [layer.cov_factors.shape[2] for layer in sidecar.layers if layer.cov_factors is not None]
    ks = {b.k for b in sidecar.spectral}
    # export's default (64 for the all-layers block, 32 per pair) when the blocks have its sizes, so a private
    # shadow splits its budget over the same statistics
    spectral_k = 0 if not ks else None if ks <= {64, 32} else max(ks)
    cfg = ExportConfig(layers=[layer.tensor_name for layer in sidecar.layers_in_order()],
                       temperature=logits.temperature if logits is not None and logits.temperature else 1.0,
                       cov_rank=max(ranks, default=0), spectral_k=spectral_k, min_class_count=0, force=True)
    if sidecar.privacy is not None:
        cfg = replace(cfg, dp_epsilon=sidecar.privacy.epsilon, dp_delta=sidecar.privacy.delta,
                      dp_clip=sidecar.privacy.clip_norm)
    return cfg


def _released_means(layer: LayerStats) -> np.ndarray:
    """The class means [C, V] the test reads: per unit where stored so, else per channel."""
    return (layer.mean if layer.per_unit else layer.channel.mean).astype(np.float64)


def _activations(runner: OrtModel, layers: list[LayerStats], x: np.ndarray) -> list[np.ndarray]:
    """Each layer's values per example [B, V], reduced as the release reduces them (logits over the temperature)."""
    out = runner.run(x)
    vals = []
    for layer in layers:
        v = out[layer.tensor_name].reshape(len(x), -1).astype(np.float64)
        if layer.kind == "logits" and layer.temperature:
            v = v / layer.temperature
        if not layer.per_unit:
            v = v.reshape(len(x), layer.shape[0], -1).mean(-1)
        vals.append(v)
    return vals


def tracing_scores(runner: OrtModel, shadow: Sidecar, data: DataSource, space: RawSpace, candidates: dict[str, tuple],
                   reference: tuple[str, np.ndarray], seed: int = 0) -> tuple[dict[str, np.ndarray], dict]:
    """The tracing statistic of each candidate set (name -> (split, indices)) against ``shadow``'s class means, and
    what it ran on.

    Every released class mean is one vector over all layers (at most ``MAX_TRACED_VALUES`` values, a seeded random
    choice beyond); the statistic is whitened by the reference population's within-class covariance in its
    ``reference // 4`` leading principal directions, since a layer's units are far from independent."""
    layers = shadow.layers_in_order()
    classes = shadow.model.num_classes
    released = np.concatenate([_released_means(layer) for layer in layers], axis=1)  # [C, V]
    values_released = released.shape[1]
    keep = np.arange(values_released)
    if len(keep) > MAX_TRACED_VALUES:
        keep = np.sort(np.random.default_rng(seed).choice(len(keep), MAX_TRACED_VALUES, replace=False))
    released = released[:, keep]

    def pass_over(split, idx):
        ys, vals = [], []
        labels = data.labels(split)
        for i in range(0, len(idx), 512):
            part = idx[i:i + 512]
            vals.append(np.concatenate(_activations(runner, layers, data.take(split, part, feed=space.feed)),
                                       axis=1)[:, keep])
            ys.append(labels[part])
        return np.concatenate(ys), np.concatenate(vals)
    y_ref, ref = pass_over(*reference)
    centre = np.zeros((classes, ref.shape[1]))
    for c in np.unique(y_ref):
        centre[c] = ref[y_ref == c].mean(0)
    within = ref - centre[y_ref]
    scale = np.maximum(within.std(0), 1e-6 * max(float(within.std(0).max()), 1e-12))  # units on one footing first
    _, sv, vt = np.linalg.svd(within / scale, full_matrices=False)
    k = int(max(1, min(len(y_ref) // 4, (sv > 1e-6 * sv[0]).sum())))
    basis, var = vt[:k], sv[:k] ** 2 / max(len(y_ref) - classes, 1)
    target = ((released - centre) / scale) @ basis.T  # [C, k]: the released means, centred and rotated
    scores = {}
    for name, (split, idx) in candidates.items():
        y, vals = pass_over(split, idx)
        scores[name] = ((((vals - centre[y]) / scale) @ basis.T) * target[y] / var).sum(1)
    return scores, {"values": int(len(keep)), "values_released": int(values_released), "directions": k}


def membership(model: Path, sidecar: Sidecar, data: DataSource, space: RawSpace, *, members: int, seed: int,
               progress: bool = False) -> dict:
    """Export a shadow release from ``members`` random train examples with ``sidecar``'s settings and run the
    tracing test on them and on as many other train examples (module docstring)."""
    from .stats.export import export_release

    n_train = data.size("train")
    if n_train < 2 * members:
        raise UsageError(f"{data.spec or data.name}: the membership test needs 2 x {members} train examples (members "
                         f"and non-members), it has {n_train}; pass a smaller {{members}}")
    if not data.has_split("test"):
        raise UsageError(f"{data.spec or data.name}: the membership test needs a test split as the reference "
                         "population")
    order = np.random.default_rng(seed).permutation(n_train)
    inside, outside = np.sort(order[:members]), np.sort(order[members:2 * members])
    subset = data.subset(inside, note=f"(audit shadow, seed {seed})")
    cfg = replace(shadow_config(sidecar), input_norm=space.convention)
    with tempfile.TemporaryDirectory(prefix="dfkd-audit-") as tmp:
        result = export_release(model, subset, Path(tmp) / "shadow", cfg, name="shadow", progress=progress)
        shadow = open_sidecar(result.sidecar_path, result.model_path).sidecar
    reference = np.sort(np.random.default_rng(seed + 1).permutation(data.size("test"))[:2 * members])
    scores, traced = tracing_scores(OrtModel(model, taps=[layer.tensor_name for layer in shadow.layers]), shadow, data,
                                    space, {"members": ("train", inside), "others": ("train", outside)},
                                    ("test", reference), seed)
    return {"test": "tracing (Dwork et al. 2015), per class, whitened over the released means",
            "members": members, "non_members": members, "reference": int(len(reference)), **traced,
            "auc": round(auc(scores["members"], scores["others"]), 4),
            "advantage": round(advantage(scores["members"], scores["others"]), 4),
            "shadow_settings": {"layers": len(cfg.layers), "cov_rank": cfg.cov_rank, "spectral_k": cfg.spectral_k,
                                "dp_epsilon": cfg.dp_epsilon, "dp_delta": cfg.dp_delta if cfg.dp_epsilon else None,
                                "dp_clip": cfg.dp_clip if cfg.dp_epsilon else None}}


# --- nearest neighbours -------------------------------------------------------------------------------------------

def nearest_distances(samples: np.ndarray, pool: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Each sample's L2 distance [N] to its nearest example of ``pool`` (both [N, D] raw values)."""
    pool = pool.reshape(len(pool), -1).astype(np.float64)
    pool_sq = np.einsum("ij,ij->i", pool, pool)
    out = []
    for i in range(0, len(samples), chunk):
        s = samples[i:i + chunk].reshape(-1, pool.shape[1]).astype(np.float64)
        d2 = np.einsum("ij,ij->i", s, s)[:, None] + pool_sq[None] - 2 * s @ pool.T
        out.append(np.sqrt(np.maximum(d2.min(1), 0.0)))
    return np.concatenate(out)


def neighbours(samples: np.ndarray, data: DataSource, space: RawSpace, *, pool: int, seed: int) -> dict:
    """Reconstructed samples (raw values) against ``pool`` random train examples and as many unseen ones: held-out
    training examples (a ``val`` split) where there are some, else the test split, which may differ from the
    training data in ways of its own (MNIST's test digits come from other writers)."""
    unseen = "val" if data.has_split("val") else "test"
    pool = min(pool, data.size("train"), data.size(unseen))
    rng = np.random.default_rng(seed + 2)
    train = space.raw(data.take("train", np.sort(rng.permutation(data.size("train"))[:pool]), feed=space.feed))
    other = space.raw(data.take(unseen, np.sort(rng.permutation(data.size(unseen))[:pool]), feed=space.feed))
    d_in, d_out = nearest_distances(samples, train), nearest_distances(samples, other)
    return {"samples": int(len(samples)), "pool": int(pool), "unseen_split": unseen,
            "median_to_train": round(float(np.median(d_in)), 4), "median_to_unseen": round(float(np.median(d_out)), 4),
            "train_nearer_share": round(float(np.mean(d_in < d_out)), 4)}


# --- the whole audit ----------------------------------------------------------------------------------------------

def audit_release(model: str | Path, sidecar: str | Path, data: DataSource, *, transfer: str | Path | None = None,
                  members: int = 2000, samples: int = 500, seed: int = 0, progress: bool = False, log=None) -> dict:
    """The three figures of the module docstring for the release (``model``, ``sidecar``) and its private ``data``
    (a train split and a test split); ``transfer`` adds a transfer set's samples as a candidate reconstruction."""
    if members < 10 or samples < 1:
        raise UsageError("{members} must be >= 10 and {samples} >= 1")
    if not data.has_split("test"):
        raise UsageError(f"{data.spec or data.name}: the audit needs a test split (examples the teacher never saw)")
    say = log or (lambda msg: None)
    with PrivateFolder() as folder:
        copy = copy_model(folder, require_file(model, "model"))
        checked = open_sidecar(sidecar, copy.path)
        sc = checked.sidecar
        space = RawSpace(sc)
        classes = sc.model.num_classes
        say("class means of the private data")
        truth, counts = class_means(data, sc.dataset.teacher_check.split if sc.dataset.teacher_check else "train",
                                    space, classes)
        candidates, draws, notes = {}, {}, []
        try:
            import torch

            from .reconstruct.init import FirstLayerGaussian
            gaussian = FirstLayerGaussian(sc, load_onnx(copy.path), source=str(sidecar))  # external data too
            candidates["first_layer_mean"] = space.raw(gaussian.mean)
            gen = torch.Generator().manual_seed(seed)
            per_class = np.arange(samples) % classes
            draws["first_layer_gaussian"] = space.raw(gaussian.sample(per_class, gen).numpy())
        except DfkdError as exc:
            notes.append(f"no first-layer Gaussian: {exc}")
        if transfer is not None:
            from .transfer import read_transfer

            ts = read_transfer(transfer, num_classes=classes)
            x = space.raw(ts.model_inputs())
            means = np.zeros_like(truth)
            for c in np.unique(ts.classes):
                means[c] = x[ts.classes == c].mean(0)
            candidates["transfer_mean"] = means
            draws["transfer"] = x[np.random.default_rng(seed).permutation(len(x))[:samples]]
        report = {"model": str(model), "sidecar": str(sidecar), "sidecar_sha256": checked.sha256,
                  "data": data.spec or data.name, "seed": seed, "privacy": None if sc.privacy is None else {
                      "epsilon": sc.privacy.epsilon, "delta": sc.privacy.delta, "clip": sc.privacy.clip_norm},
                  "class_means": mean_recovery(truth, counts, candidates, space), "notes": notes}
        say(f"membership: a shadow release of {members} train examples")
        report["membership"] = membership(copy.path, sc, data, space, members=members, seed=seed, progress=progress)
        say("nearest neighbours of the reconstructions")
        report["nearest_neighbours"] = {name: neighbours(x, data, space, pool=members, seed=seed)
                                        for name, x in draws.items()}
    return report


def summary_lines(report: dict) -> list[str]:
    """The audit in a few lines of words."""
    lines = []
    cm = report["class_means"]
    if "best" in cm:
        lines.append(f"class means: best reconstruction {cm['best']}: PSNR {cm['psnr']:.1f} dB, SSIM {cm['ssim']:.3f} "
                     "(averaged over the classes)")
    else:
        lines.append("class means: no reconstruction of the class means from this release (see notes)")
    m = report["membership"]
    lines.append(f"membership: tracing test on a shadow release of {m['members']} examples: AUC {m['auc']:.3f}, "
                 f"advantage {m['advantage']:.3f} (a coin: 0.5 and 0)")
    for name, nn in report["nearest_neighbours"].items():
        lines.append(f"nearest neighbours ({name}, {nn['samples']} samples): median distance to train "
                     f"{nn['median_to_train']:.3f}, to {nn['unseen_split']} {nn['median_to_unseen']:.3f}; nearer a "
                     "training example: "
                     f"{nn['train_nearer_share']:.1%} (no memorisation: about 50%)")
    lines += [f"note: {n}" for n in report["notes"]]
    return lines
