"""Re-check a release against the publisher's labelled data (``dfkd-meta validate --data``).

Feeds the teacher exactly as the sidecar's input domain says, measures its accuracy, and compares
the recorded logits statistics with a fresh pass. A release made with the wrong input convention
(for example by dfkd-meta before 0.2, which normalised every teacher by the data's own mean and
std) fails here although it validates.
"""
from __future__ import annotations

import numpy as np

from ..convention import from_domain
from ..data import DataSource, Feed
from ..onnx.runtime import OrtModel
from ..sidecar.report import Finding, finding
from ..sidecar.types import Sidecar
from .moments import ClassMoments
from .teacher_check import PRECHECK_EXAMPLES, RIVAL_WORDS, AccuracyMeter, compare_conventions, default_min_accuracy

LOGITS_TOLERANCE = 0.5  # |recorded - fresh| class mean of a logit, in units of its recorded std


def recheck_release(sidecar: Sidecar, model: str, data: DataSource, *, split: str | None = None,
                    limit: int | None = None, batch_size: int = 512) -> tuple[list[Finding], dict]:
    """Findings (rules DM90x, SPEC §12) and the measured numbers, for a validated, bound sidecar."""
    binding, check = sidecar.model, sidecar.dataset.teacher_check
    split = split or (check.split if check is not None and data.has_split(check.split) else "train")
    recorded = from_domain(binding.input_domain.as_record())
    feed = Feed(recorded, tuple(binding.input_shape[1:]))
    logits_layer = next((x for x in sidecar.layers if x.kind == "logits" and x.per_unit), None)
    if sidecar.privacy is not None and "layers" in sidecar.privacy.applies_to:
        logits_layer = None  # clipped and noised by design (SPEC §10.1): DM902 does not apply
    runner = OrtModel(model)
    meter = AccuracyMeter()
    moments = ClassMoments(binding.num_classes, binding.num_classes)
    for x, y in data.batches(split, batch_size, feed=feed, limit=limit):
        z = runner.run(x)[binding.logits_name]
        meter.update(z, y)
        if logits_layer is not None:
            moments.update((z / np.float32(logits_layer.temperature)).astype(np.float32), y)
    findings: list[Finding] = []
    floor = check.min_accuracy if check is not None else default_min_accuracy(binding.num_classes)
    where = f"{data.spec or data.name} ({split}, {meter.total} examples)"
    if meter.accuracy < floor:
        findings.append(finding("DM901", "/model/input_domain",
                                f"fed by the recorded input domain the teacher is right on {meter.accuracy:.1%} of "
                                f"{where}, below {floor:.1%}"))
    comparison = compare_conventions(lambda x: runner.run(x)[binding.logits_name], data, split, recorded,
                                     tuple(binding.input_shape[1:]), limit=min(meter.total, PRECHECK_EXAMPLES),
                                     batch_size=batch_size)
    better = comparison.clearly_better()
    if better is not None:
        name, rival = better
        findings.append(finding("DM904", "/model/input_domain",
                                f"on a sample of {rival.total} examples of {data.spec or data.name} ({split}) the "
                                f"teacher is right on {comparison.chosen.accuracy:.1%} fed by the recorded input "
                                f"domain, but on {rival.accuracy:.1%} fed {RIVAL_WORDS[name]}"))
    numbers = {"split": split, "samples": meter.total, "accuracy": meter.accuracy,
               "mean_confidence": meter.mean_confidence, "min_accuracy": floor,
               "sample_accuracy": comparison.chosen.accuracy, "rival_conventions": comparison.accuracies()}
    if logits_layer is not None:
        present = (moments.count > 0) & (logits_layer.count > 0)
        diff = np.abs(moments.mean - logits_layer.mean.astype(np.float64))
        scale = np.maximum(logits_layer.std.astype(np.float64), 1e-6)
        worst = float((diff / scale)[present].max(initial=0.0))
        numbers["logits_max_mean_difference_in_stds"] = worst
        numbers["logits_max_mean_difference"] = float(diff[present].max(initial=0.0))
        if worst > LOGITS_TOLERANCE:
            c, u = np.unravel_index(int(np.argmax(np.where(present[:, None], diff / scale, -1))), diff.shape)
            findings.append(finding("DM902", f"/layers/{logits_layer.key}/mean",
                                    f"class {c}, unit {u}: recorded {logits_layer.mean[c, u]:.4g}, fresh pass over "
                                    f"{where} {moments.mean[c, u]:.4g} ({worst:.2f} recorded stds apart; "
                                    f"tolerance {LOGITS_TOLERANCE})"))
    if check is None:
        findings.append(finding("DM903", "/dataset", "no teacher_check: the sidecar was made before format 1.1"))
    return findings, numbers
