"""A PNG grid of reconstructed samples, one row per class (image inputs only, flattened ones included)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DfkdError
from ..plotting import pyplot, save_png
from ..sidecar.types import Sidecar
from ..transfer import TransferSet
from .inputs import to_raw


def save_preview(ts: TransferSet, sidecar: Sidecar, path: str | Path, per_class: int = 8) -> Path:
    binding, dom = sidecar.model, sidecar.model.input_domain
    image = binding.image_shape
    if image is None or len(image) != 3:
        raise DfkdError(f"{path}: {{preview}} draws images, and this model takes feature vectors "
                        f"(layout {dom.layout}, no image shape recorded); drop {{preview}}")
    plt = pyplot()

    raw = to_raw(ts.x, binding) if ts.input_space == "model" else ts.x
    if dom.layout == "NHWC":
        raw = np.moveaxis(raw, -1, 1)
    raw = raw.reshape(len(raw), *image)  # [N, C, H, W]
    raw = np.clip((np.moveaxis(raw, 1, -1) - dom.value_min) / (dom.value_max - dom.value_min), 0, 1)
    names = binding.class_names or [str(i) for i in range(sidecar.num_classes)]
    fig, axes = plt.subplots(sidecar.num_classes, per_class, figsize=(per_class * 0.9, sidecar.num_classes * 0.9),
                             squeeze=False)
    for c in range(sidecar.num_classes):
        idx = np.flatnonzero(ts.classes == c)[:per_class]
        for j in range(per_class):
            ax = axes[c, j]
            ax.axis("off")
            if j < len(idx):
                img = raw[idx[j]]
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        axes[c, 0].set_title(names[c], fontsize=7, loc="left")
    fig.suptitle(f"{ts.provenance.get('objective', '')}: teacher agreement "
                 f"{(ts.teacher_logits.argmax(1) == ts.classes).mean():.0%}", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
