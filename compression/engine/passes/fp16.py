"""fp16: convert float32 weights and compute to float16.

Halves the size. On CPUs without native fp16 arithmetic it is usually slower
(casts, fp32 fallback kernels) — the benchmark says so; on GPUs/NPUs it wins.
Inputs and outputs stay float32 (``keep_io_types``) so callers need no change.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from compression.engine.errors import PassRefused
from compression.engine.passes import _util
from compression.engine.passes.base import Pass, PassConfig, PassResult, doc, register


@dataclass
class Fp16Config(PassConfig):
    keep_io_types: bool = field(
        default=True, metadata=doc("Keep float32 graph inputs/outputs (adds Cast nodes).")
    )
    op_block_list: list[str] | None = field(
        default=None,
        metadata=doc(
            "Op types kept in float32 (default: the converter's list of ops unsafe in fp16)."
        ),
    )
    node_block_list: list[str] = field(
        default_factory=list, metadata=doc("Node names kept in float32.")
    )
    min_positive_val: float = field(
        default=1e-7, metadata=doc("Smaller magnitudes are clamped (fp16 underflow).")
    )
    max_finite_val: float = field(
        default=1e4, metadata=doc("Larger magnitudes are clamped (fp16 overflow).")
    )


@register
class Fp16Pass(Pass):
    name = "fp16"
    description = "Float16 weights and compute with float32 IO."
    Config = Fp16Config

    def run(self, input_path, config: Fp16Config, output_path) -> PassResult:
        from onnxconverter_common import float16

        model = _util.load(input_path)
        notes: list[str] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                # the converter warns once per clamped value; summarise instead of flooding logs
                warnings.simplefilter("always")
                converted = float16.convert_float_to_float16(
                    model,
                    min_positive_val=config.min_positive_val,
                    max_finite_val=config.max_finite_val,
                    keep_io_types=config.keep_io_types,
                    op_block_list=config.op_block_list,
                    node_block_list=config.node_block_list or None,
                )
            clamped = sum("truncated" in str(w.message) for w in caught)
            if clamped:
                notes.append(f"{clamped} value(s) clamped to the fp16 range")
        except (ValueError, RuntimeError, KeyError) as exc:
            raise PassRefused(f"fp16 conversion failed: {exc}") from None
        _util.save(converted, output_path)
        metrics = _util.size_metrics(input_path, output_path)
        return PassResult(str(output_path), metrics, notes)
