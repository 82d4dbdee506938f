"""Registered compression passes; importing this package registers them all."""

from compression.engine.passes import (  # noqa: F401 - imported for their @register side effect
    fp16,
    mixed_precision,
    nncf_quantize,
    optimize,
    prepare,
    prune,
    quantize,
)
from compression.engine.passes.base import (
    Pass,
    PassConfig,
    PassResult,
    get_pass,
    list_passes,
    register,
)
from compression.engine.training import passes as _training  # noqa: F401 - distill, qat

__all__ = ["Pass", "PassConfig", "PassResult", "get_pass", "list_passes", "register"]
