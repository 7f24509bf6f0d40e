"""Is the teacher fed what it was trained on? Its accuracy on the publisher's labelled data says.

A sidecar computed on inputs the teacher was not trained on validates, and misleads every
consumer. So export measures the teacher on the very examples (and through the very input
convention) it takes statistics from, and refuses below a threshold unless forced.

A threshold alone passes a robust teacher fed the wrong convention (a BN CNN trained on raw
pixels can stay 70% right on standardised ones). So the same sample is also fed through the
standard rival conventions (raw values, the data's per-channel standardisation, ImageNet's for
RGB in [0, 1]); one that makes the teacher clearly more accurate means the chosen convention is
not the teacher's. Nothing here picks a convention: the publisher is told which one fits better.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import dist
from ..convention import IMAGENET_MEAN, IMAGENET_STD, InputConvention
from ..data import RAW, DataSource, Feed
from ..errors import DfkdError
from ..sidecar.types import TeacherCheck

PRECHECK_EXAMPLES = 2048  # a seeded sample checked before the full pass, so a wrong convention fails fast
# A rival convention is "clearly better" when it gains at least RIVAL_MARGIN accuracy and leaves at most
# RIVAL_ERROR_RATIO of the errors: on 2,048 paired examples the standard error of a difference is
# under 1.5 points, and a teacher fed its own convention is never beaten by that much.
RIVAL_MARGIN = 0.05
RIVAL_ERROR_RATIO = 0.5
FLOAT32_SQUARE_LIMIT = float(np.sqrt(np.finfo(np.float32).max))  # a larger logit's square overflows float32


def default_min_accuracy(num_classes: int) -> float:
    """Halfway between chance (1 / C) and perfect, and at least 50%."""
    return max(0.5, 0.5 * (1.0 + 1.0 / max(num_classes, 1)))


class AccuracyMeter:
    """Streaming top-1 accuracy and mean confidence (largest softmax probability at temperature 1)."""

    def __init__(self):
        self.correct = 0
        self.total = 0
        self.confidence = 0.0
        self.out_of_range = 0  # examples with a logit that is not finite or whose square overflows float32

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        z = logits.astype(np.float64)
        self.out_of_range += int((~(np.abs(z) <= FLOAT32_SQUARE_LIMIT)).any(axis=1).sum())
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        self.correct += int((z.argmax(1) == labels).sum())
        self.total += len(labels)
        self.confidence += float(p.max(1).sum())

    def merge_across_processes(self) -> None:
        """Sum every process's counts (each saw its own shard); no-op in one process."""
        correct, total, out_of_range, confidence = dist.reduce_array(
            np.array([self.correct, self.total, self.out_of_range, self.confidence], np.float64))
        self.correct, self.total, self.out_of_range = int(correct), int(total), int(out_of_range)
        self.confidence = float(confidence)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.total, 1)

    @property
    def mean_confidence(self) -> float:
        return self.confidence / max(self.total, 1)

    def result(self, split: str, min_accuracy: float, forced: bool) -> TeacherCheck:
        """``forced``: the export went past a failed check (the caller decides which checks failed)."""
        return TeacherCheck(split=split, samples=self.total, accuracy=self.accuracy,
                            mean_confidence=self.mean_confidence, min_accuracy=min_accuracy, forced=forced)


def rival_conventions(data: DataSource, split: str) -> list[InputConvention]:
    """The standard conventions: raw values, the data's standardisation, ImageNet's (RGB in [0, 1])."""
    mean, std = data.channel_stats(split)
    rivals = [InputConvention("none", source="default"),
              InputConvention("data", tuple(mean), tuple(std), source="option")]
    if data.is_image and data.input_shape[0] == 3 and data.value_range() == (0.0, 1.0):
        rivals.append(InputConvention("imagenet", IMAGENET_MEAN, IMAGENET_STD, 0.0, 1.0, source="option"))
    return rivals


RIVAL_WORDS = {"none": "raw values (none)", "data": "the data's per-channel standardisation (data)",
               "imagenet": "ImageNet's mean and std (imagenet)"}


@dataclass
class ConventionComparison:
    """The teacher's accuracy on one seeded sample under the chosen convention and each rival."""

    chosen: AccuracyMeter
    rivals: dict[str, AccuracyMeter]  # rival name -> its meter, same examples in the same order

    def clearly_better(self) -> tuple[str, AccuracyMeter] | None:
        """The rival that beats the chosen convention by the margins above (the most accurate one), if any."""
        err = 1.0 - self.chosen.accuracy
        better = [(name, m) for name, m in self.rivals.items()
                  if m.accuracy - self.chosen.accuracy >= RIVAL_MARGIN and 1.0 - m.accuracy <= RIVAL_ERROR_RATIO * err]
        return max(better, key=lambda t: t[1].accuracy) if better else None

    def accuracies(self) -> dict[str, float]:
        return {name: round(m.accuracy, 6) for name, m in self.rivals.items()}


def compare_conventions(logits: Callable[[np.ndarray], np.ndarray], data: DataSource, split: str,
                        chosen: InputConvention, model_shape: tuple[int, ...], *, limit: int = PRECHECK_EXAMPLES,
                        batch_size: int = 512) -> ConventionComparison:
    """Feed a seeded sample of ``split`` through ``chosen`` and each rival; ``logits`` maps inputs to logits.

    A rival that transforms the sample as ``chosen`` does (the same numbers under another name) is
    left out, so naming ``data`` and ``0.1307/0.3081`` on MNIST never compete.
    """
    probe = next(data.batches(split, 64, feed=RAW, shuffle=True, seed=0, limit=min(limit, 64)))[0]
    mine = chosen.apply(probe)

    def measure(conv: InputConvention) -> AccuracyMeter:
        meter = AccuracyMeter()
        for x, y in data.batches(split, batch_size, feed=Feed(conv, tuple(model_shape)), shuffle=True, seed=0,
                                 limit=limit):
            meter.update(logits(x), y)
        return meter

    rivals = {c.name: c for c in rival_conventions(data, split)
              if not np.allclose(c.apply(probe), mine, rtol=1e-3, atol=1e-4)}
    return ConventionComparison(measure(chosen), {name: measure(c) for name, c in rivals.items()})


def require_no_better_rival(comparison: ConventionComparison, *, model: str, data: str, convention: str,
                            force: bool) -> None:
    """Raise, naming the better convention, when a rival feeds the teacher clearly better (unless ``force``)."""
    found = comparison.clearly_better()
    if force or found is None:
        return
    name, rival = found
    mine = comparison.chosen
    raise DfkdError(
        f"{model}: the teacher is right on {mine.accuracy:.1%} of a sample of {mine.total} examples of {data} under "
        f"the input convention {convention}, but on {rival.accuracy:.1%} of the same examples fed {RIVAL_WORDS[name]}; "
        f"it was most likely trained with another convention. Pass the one it was trained with: {{input_norm}} "
        f"{name} (or MEAN/STD). A sidecar of inputs the teacher was not trained on misleads every consumer; "
        f"{{force}} exports anyway")


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
