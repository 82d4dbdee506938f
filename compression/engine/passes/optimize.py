"""optimize: onnxruntime's offline graph optimization saved as a new model.

"basic" does constant folding and redundant-node elimination; "extended" adds
fusions (Conv+BN folding, Conv+activation, GELU/LayerNorm/attention fusions)
that may emit com.microsoft ops. "all" (layout/NCHWc) is refused: those graphs
are tied to the CPU they were optimized on, wrong for a model shipped to a fleet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from compression.engine.passes import _util
from compression.engine.passes.base import Pass, PassConfig, PassResult, doc, register


@dataclass
class OptimizeConfig(PassConfig):
    CHOICES = {"level": ("basic", "extended")}

    level: str = field(default="extended", metadata=doc("basic or extended graph optimization."))


@register
class OptimizePass(Pass):
    name = "optimize"
    description = "onnxruntime offline graph optimization (fusions), saved as a model."
    Config = OptimizeConfig

    def run(self, input_path, config: OptimizeConfig, output_path) -> PassResult:
        import onnxruntime as ort

        before = _util.load(input_path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        }[config.level]
        opts.optimized_model_filepath = str(output_path)
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        ort.InferenceSession(str(input_path), sess_options=opts, providers=["CPUExecutionProvider"])
        after = _util.load(output_path)
        metrics = {
            **_util.size_metrics(input_path, output_path),
            "nodes_before": len(before.graph.node),
            "nodes_after": len(after.graph.node),
        }
        return PassResult(str(output_path), metrics, [f"level={config.level}"])
