"""Is the teacher fed what it was trained on? Its accuracy on the publisher's labelled data says.

A sidecar computed on inputs the teacher was not trained on validates, and misleads every
consumer. So export measures the teacher on the very examples (and through the very input
convention) it takes statistics from, and refuses below a threshold unless forced.
"""
from __future__ import annotations

import numpy as np

from ..errors import DfkdError
from ..sidecar.types import TeacherCheck

PRECHECK_EXAMPLES = 2048  # a seeded sample checked before the full pass, so a wrong convention fails fast


def default_min_accuracy(num_classes: int) -> float:
    """Halfway between chance (1 / C) and perfect, and at least 50%."""
    return max(0.5, 0.5 * (1.0 + 1.0 / max(num_classes, 1)))


class AccuracyMeter:
    """Streaming top-1 accuracy and mean confidence (largest softmax probability at temperature 1)."""

    def __init__(self):
        self.correct = 0
        self.total = 0
        self.confidence = 0.0

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        z = logits.astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        self.correct += int((z.argmax(1) == labels).sum())
        self.total += len(labels)
        self.confidence += float(p.max(1).sum())

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.total, 1)

    @property
    def mean_confidence(self) -> float:
        return self.confidence / max(self.total, 1)

    def result(self, split: str, min_accuracy: float, forced: bool) -> TeacherCheck:
        return TeacherCheck(split=split, samples=self.total, accuracy=self.accuracy,
                            mean_confidence=self.mean_confidence, min_accuracy=min_accuracy,
                            forced=forced and self.accuracy < min_accuracy)


def require_fit(meter: AccuracyMeter, min_accuracy: float, *, model: str, data: str, convention: str,
                force: bool, partial: bool = False) -> None:
    """Raise, naming the likely causes, when the teacher is below ``min_accuracy`` (unless ``force``)."""
    if force or meter.accuracy >= min_accuracy:
        return
    scope = f"a sample of {meter.total}" if partial else f"the {meter.total}"
    raise DfkdError(
        f"{model}: the teacher is right on {meter.accuracy:.1%} of {scope} examples of {data} (mean confidence "
        f"{meter.mean_confidence:.2f}), below the {min_accuracy:.1%} that {{min_accuracy}} requires, under the input "
        f"convention {convention}. Likely causes: the teacher expects other inputs (pass {{input_norm}} data, "
        f"imagenet or MEAN/STD), the wrong data set, or labels in another order. A sidecar of inputs the teacher "
        f"was not trained on misleads every consumer; {{force}} exports anyway")
