"""Files shipped inside the package: the Fashion-MNIST demo release and its held-out test slice.

Built by ``fixtures/make_fashion_demo.py`` from the original Fashion-MNIST files (MIT licence,
Zalando SE; the licence travels beside them in ``demo_assets/fashion-mnist/LICENSE``).
"""
from __future__ import annotations

from pathlib import Path

FASHION_DEMO = Path(__file__).resolve().parent / "demo_assets" / "fashion-mnist"
FASHION_RELEASE = FASHION_DEMO / "release"
FASHION_TEACHER = FASHION_RELEASE / "teacher.onnx"
FASHION_SIDECAR = FASHION_RELEASE / "teacher.dfkd.h5"
FASHION_SLICE = FASHION_DEMO / "test-slice.npz"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
