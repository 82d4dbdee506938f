"""Training-based compression: distillation, quantization-aware training, pruning recovery.

PyTorch is an optional extra (``pip install 'edgefleet[train]'``). Nothing in
this package imports torch at import time: the passes register without it and
refuse with ``TrainingUnavailable`` when they run on a host that lacks it.
"""

from __future__ import annotations

import importlib.util

from compression.engine.errors import PassRefused

EXTRA_HINT = "needs the training extra: pip install 'edgefleet[train]' (PyTorch, onnx2torch)"


class TrainingUnavailable(PassRefused):
    """A training pass ran where PyTorch (the ``train`` extra) is not installed."""


def available() -> bool:
    """True when torch and onnx2torch are importable (without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "onnx2torch"))


def require() -> None:
    if not available():
        raise TrainingUnavailable(f"This recipe trains the model and {EXTRA_HINT}.")


# recipes that always train (pruning trains only when asked or when torch is present)
TRAINING_PASSES: tuple[str, ...] = ("distill", "qat")
