"""fp16: convert float32 weights and compute to float16.

Halves the size. On CPUs without native fp16 arithmetic it is usually slower
(casts, fp32 fallback kernels) — the benchmark says so; on GPUs/NPUs it wins.
Inputs and outputs stay float32 (``keep_io_types``) so callers need no change.

The converter alone breaks real graphs: a ``Cast(to=float)`` of an integer
input (an attention mask, a sample rate) keeps producing float32 next to
converted fp16 ops (onnxruntime: "Type Error"), and recurrent ops have no
fp16 CPU kernel (onnxruntime can even crash loading them). So those nodes
stay float32 (the converter inserts the casts around them), and the result is
loaded in an isolated process; a node the loader names is added to the block
list and the conversion retried.
"""

from __future__ import annotations

import re
import tempfile
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

        notes: list[str] = []
        ops = list(
            config.op_block_list
            if config.op_block_list is not None
            else float16.DEFAULT_OP_BLOCK_LIST
        )
        ops += [op for op in _KEEP_FLOAT_OPS if op not in ops]
        nodes = list(config.node_block_list) + float_casts(_util.load(input_path))
        for _attempt in range(_RETRIES):
            self._convert(input_path, config, ops, nodes, output_path, notes)
            problem = load_problem(str(output_path))
            if problem is None:
                break
            named = _named_node(problem)
            if named is None or named in nodes:
                raise PassRefused(f"fp16 model does not load in onnxruntime: {problem}")
            nodes.append(named)
        else:
            raise PassRefused(f"fp16 model still does not load after {_RETRIES} fixes")
        if len(nodes) > len(config.node_block_list):
            notes.append(
                f"kept {len(nodes) - len(config.node_block_list)} node(s) in float32 "
                "(casts of integer tensors, nodes onnxruntime refused in fp16)"
            )
        metrics = _util.size_metrics(input_path, output_path)
        metrics["float32_nodes"] = len(nodes)
        return PassResult(str(output_path), metrics, list(dict.fromkeys(notes)))

    @staticmethod
    def _convert(input_path, config, ops, nodes, output_path, notes) -> None:
        from onnxconverter_common import float16

        model = _util.load(input_path)
        try:
            with warnings.catch_warnings(record=True) as caught:
                # the converter warns once per clamped value; summarise instead of flooding logs
                warnings.simplefilter("always")
                converted = float16.convert_float_to_float16(
                    model,
                    min_positive_val=config.min_positive_val,
                    max_finite_val=config.max_finite_val,
                    keep_io_types=config.keep_io_types,
                    op_block_list=ops,
                    node_block_list=nodes or None,
                )
            clamped = sum("truncated" in str(w.message) for w in caught)
            if clamped:
                notes.append(f"{clamped} value(s) clamped to the fp16 range")
        except (ValueError, RuntimeError, KeyError) as exc:
            raise PassRefused(f"fp16 conversion failed: {exc}") from None
        _util.save(converted, output_path)


_RETRIES = 6
# no fp16 CPU kernels; onnxruntime may refuse or crash loading them in fp16
_KEEP_FLOAT_OPS = ("LSTM", "GRU", "RNN")


def float_casts(model) -> list[str]:
    """Names of Cast nodes producing float32 (their input is an integer or bool tensor)."""
    from onnx import TensorProto

    out = []
    for node in model.graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type == "Cast" and to == TensorProto.FLOAT and node.name:
            out.append(node.name)
    return out


def _load_check(path: str) -> None:
    import onnxruntime as ort

    ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def load_problem(path: str) -> str | None:
    """None when onnxruntime loads ``path`` (in an isolated process), else why not."""
    from compression.engine.errors import EngineError
    from compression.engine.sandbox import run_isolated

    try:
        with tempfile.TemporaryDirectory():
            run_isolated(_load_check, path, timeout_s=120, memory_mb=4096)
    except EngineError as exc:
        return str(exc)
    return None


def _named_node(message: str) -> str | None:
    m = re.search(r"of node \(([^)]+)\)", message) or re.search(
        r"[Nn]ode:? ?'?([^\s',]+)'?", message
    )
    return m.group(1) if m else None
