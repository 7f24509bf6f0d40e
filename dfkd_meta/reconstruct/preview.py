"""A PNG grid of reconstructed samples, one row per class (image inputs only)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DfkdError
from ..plotting import pyplot, save_png
from ..sidecar.types import Sidecar
from ..transfer import TransferSet


def save_preview(ts: TransferSet, sidecar: Sidecar, path: str | Path, per_class: int = 8) -> Path:
    dom = sidecar.model.input_domain
    if dom.layout not in ("NCHW", "NHWC"):
        raise DfkdError(f"--preview needs image inputs; this model's layout is {dom.layout}")
    plt = pyplot()

    x = ts.x if dom.layout == "NHWC" else np.moveaxis(ts.x, 1, -1)
    mean, std = np.asarray(dom.norm_mean), np.asarray(dom.norm_std)
    raw = np.clip((x * std + mean - dom.value_min) / (dom.value_max - dom.value_min), 0, 1)
    names = sidecar.model.class_names or [str(i) for i in range(sidecar.num_classes)]
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
