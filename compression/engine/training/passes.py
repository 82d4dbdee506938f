"""The ``distill`` and ``qat`` passes, and the recovery fine-tune the prune passes call.

All three share one path: convert the student ONNX to torch (checked against
onnxruntime), fit it to the teacher's outputs (``loop.fit``), write the trained
tensors back into the student graph and check that graph against the module.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from compression.engine.errors import PassRefused
from compression.engine.passes import _util
from compression.engine.passes.base import Pass, PassConfig, PassResult, doc, register
from compression.engine.training import require
from compression.engine.training.data import TrainFields, load_train_data, settings_from


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(n)))


def train_student(
    teacher_path, student_path, output_path, cfg, *, label: str, keep_zeros: bool = False, data=None
) -> dict:
    """Fine-tune ``student_path`` towards ``teacher_path``; write ``output_path``.

    ``keep_zeros`` holds pruned (zero) weights at zero after every step.
    Returns metrics (history, best metric, params) and notes.
    """
    require()
    import torch

    from compression.engine.training import convert
    from compression.engine.training.loop import fit

    _threads(cfg.threads)
    data = data or load_train_data(teacher_path, cfg)
    module = convert.to_torch(student_path)
    convert.verify(module, student_path, data.sample_feeds(), data.names)
    masks = []
    if keep_zeros:
        masks = [
            (p, (p != 0).float())
            for name, p in module.named_parameters()
            if name.endswith("weight") and p.dim() > 1 and bool((p == 0).any())
        ]

    def after_step():
        with torch.no_grad():
            for p, m in masks:
                p.mul_(m)

    result = fit(
        module,
        data.train,
        data.teacher_train,
        data.train_labels,
        data.eval,
        data.teacher_eval,
        data.eval_labels,
        settings_from(cfg),
        label=label,
        after_step=after_step if masks else None,
    )
    convert.write_back(module, student_path, output_path)
    convert.verify(
        module, output_path, data.sample_feeds(), data.names, what="the exported student"
    )
    return {**result, "notes": data.notes}


def _summary(result: dict) -> list[str]:
    notes = list(result.get("notes", []))
    m = result["metric"]
    notes.append(
        f"{m} {result['initial_metric']:.4f} -> {result['best_metric']:.4f} "
        f"(best epoch {result['best_epoch']} of {len(result['history']) - 1})"
    )
    if result.get("stopped"):
        notes.append(result["stopped"])
    if not result.get("used_labels"):
        notes.append("trained on the teacher's outputs only (no labels)")
    if result.get("pseudo_labels"):
        notes.append(
            f"the teacher's top class as pseudo-labels on "
            f"{result.get('pseudo_label_share') or 0:.0%} of the training samples"
        )
    return notes


def _train_metrics(result: dict) -> dict:
    return {
        k: result[k]
        for k in (
            "history",
            "metric",
            "best_epoch",
            "best_metric",
            "initial_metric",
            "train_seconds",
            "used_labels",
            "pseudo_labels",
            "pseudo_label_share",
        )
    }


@dataclass
class DistillConfig(TrainFields, PassConfig):
    student_path: str | None = field(
        default=None,
        metadata=doc(
            "Student ONNX with the teacher's inputs and outputs; default: the teacher "
            "structurally pruned at `ratio`."
        ),
    )
    ratio: float = field(
        default=0.5, metadata=doc("Fraction of Conv output channels the default student drops.")
    )
    min_channels: int = field(default=8, metadata=doc("Fewest channels a pruned layer keeps."))
    epochs: int = field(
        default=30, metadata=doc("Training epochs (early stopping may end sooner).")
    )


@register
class DistillPass(Pass):
    name = "distill"
    description = "Knowledge distillation into a smaller student (pruned copy or uploaded)."
    Config = DistillConfig
    needs_calibration = True

    def run(self, input_path, config: DistillConfig, output_path) -> PassResult:
        require()
        from compression.engine.inspect import count_parameters
        from compression.engine.passes.prune import StructuredConfig, StructuredPrunePass

        notes: list[str] = []
        with tempfile.TemporaryDirectory(prefix="edgefleet-distill-") as tmp:
            student = config.student_path
            if student:
                notes.append("student: the uploaded model")
            else:
                student = str(Path(tmp) / "student.onnx")
                pruned = StructuredPrunePass().run(
                    input_path,
                    StructuredConfig(
                        ratio=config.ratio, min_channels=config.min_channels, finetune_epochs=0
                    ),
                    student,
                )
                notes.append(
                    f"student: the teacher with {config.ratio:.0%} of Conv channels "
                    f"removed ({pruned.metrics['layers_pruned']} layers)"
                )
            result = train_student(input_path, student, output_path, config, label=self.name)
        teacher_p = count_parameters(_util.load(input_path))
        student_p = count_parameters(_util.load(output_path))
        metrics = {
            **_util.size_metrics(input_path, output_path),
            **_train_metrics(result),
            "parameters_teacher": teacher_p,
            "parameters_student": student_p,
            "parameter_ratio": round(student_p / teacher_p, 4) if teacher_p else None,
        }
        return PassResult(str(output_path), metrics, notes + _summary(result))


@dataclass
class QatConfig(TrainFields, PassConfig):
    CHOICES = {
        "activation_type": ("quint8", "qint8"),
        "calibrate_method": ("minmax", "entropy", "percentile"),
    }

    epochs: int = field(default=5, metadata=doc("Fake-quantized training epochs."))
    lr: float = field(default=3e-4, metadata=doc("Adam learning rate (small: fine-tuning)."))
    per_channel: bool = field(default=True, metadata=doc("Per-channel weight scales."))
    activation_type: str = field(
        default="quint8",
        metadata=doc("Activation type of the exported model (quint8: the x86 fast path)."),
    )
    keep_stem_float: bool = field(
        default=True,
        metadata=doc(
            "Keep the input stem Conv (<= 4 input channels) in float, as int8-static does."
        ),
    )
    learned_ranges: bool = field(
        default=True,
        metadata=doc(
            "Export with the scales and zero-points QAT learned (weights and activations); "
            "off: the exporting quantizer recalibrates every range."
        ),
    )
    calibrate_method: str = field(
        default="minmax",
        metadata=doc(
            "How the exporting quantizer calibrates the ranges QAT did not learn: minmax, "
            "entropy or percentile."
        ),
    )
    learn_scales: bool = field(
        default=True,
        metadata=doc(
            "Train the quantization scales with the weights (LSQ) after the fake-quantizers "
            "observed the calibration samples; off: the observers keep tracking min/max."
        ),
    )
    scale_lr: float = field(
        default=1e-2,
        metadata=doc("Learning rate of each scale, relative to its starting value (LSQ)."),
    )
    calibration_samples: int = field(
        default=200,
        metadata=doc(
            "Training samples the fake-quantizers start their ranges from, and the "
            "exporting quantizer calibrates the rest on."
        ),
    )


def _qat_module(
    module, stem_modules: list[str], example, per_channel: bool, act_signed: bool, nodes: dict
):
    import torch
    from torch.ao.quantization import (
        FakeQuantize,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
        QConfig,
        QConfigMapping,
    )
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    act = FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver,
        dtype=torch.qint8 if act_signed else torch.quint8,
        quant_min=-128 if act_signed else 0,
        quant_max=127 if act_signed else 255,
        qscheme=torch.per_tensor_affine,
    )
    if per_channel:
        weight = FakeQuantize.with_args(
            observer=MovingAveragePerChannelMinMaxObserver,
            dtype=torch.qint8,
            quant_min=-127,
            quant_max=127,
            qscheme=torch.per_channel_symmetric,
            ch_axis=0,
        )
    else:
        weight = FakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver,
            dtype=torch.qint8,
            quant_min=-127,
            quant_max=127,
            qscheme=torch.per_tensor_symmetric,
        )
    mapping = QConfigMapping().set_global(QConfig(activation=act, weight=weight))
    for name in stem_modules:
        mapping.set_module_name(name, None)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_qat_fx(module.train(), mapping, example)
    from compression.engine.training.qdq import share_like_onnxruntime

    share_like_onnxruntime(prepared, nodes)
    prepared.onnx_initializer_names = getattr(module, "onnx_initializer_names", {})
    return prepared


def _calibrate(qat, inputs, samples: int) -> None:
    """Start the fake-quantizers from the float model's ranges on ``samples`` training
    inputs (as post-training calibration would), not from their untrained defaults."""
    from torch.ao.quantization import disable_fake_quant, enable_fake_quant

    from compression.engine.training.loop import predict_torch

    qat.apply(disable_fake_quant)
    predict_torch(qat, [a[:samples] for a in inputs], batch_size=64)
    qat.apply(enable_fake_quant)


@register
class QatPass(Pass):
    name = "qat"
    description = (
        "Quantization-aware training (fake-quant, teacher as target), exported as int8 QDQ."
    )
    Config = QatConfig
    needs_calibration = True

    def run(self, input_path, config: QatConfig, output_path) -> PassResult:
        require()
        import numpy as np
        import torch

        from compression.engine.passes.prepare import PrepareConfig, PreparePass
        from compression.engine.passes.quantize import (
            StaticConfig,
            quantized_node_count,
            run_static,
            stem_convs,
        )
        from compression.engine.training import convert, lsq, qdq
        from compression.engine.training.loop import fit

        _threads(config.threads)
        notes: list[str] = []
        with tempfile.TemporaryDirectory(prefix="edgefleet-qat-") as tmp:
            # the graph the quantizer will see (BatchNorm folded, shapes known)
            prepared = str(Path(tmp) / "prepared.onnx")
            PreparePass().run(input_path, PrepareConfig(), prepared)
            data = load_train_data(input_path, config)
            notes += data.notes
            module = convert.to_torch(prepared)
            convert.verify(module, prepared, data.sample_feeds(), data.names)
            node_names = convert._node_map(_util.load(prepared))
            stems = stem_convs(prepared) if config.keep_stem_float else []
            stem_modules = [k for k, n in node_names.items() if n.name in stems]
            example = tuple(torch.from_numpy(a[:2]) for a in data.train)
            qat = _qat_module(
                module,
                stem_modules,
                example,
                config.per_channel,
                config.activation_type == "qint8",
                node_names,
            )
            _calibrate(qat, data.train, config.calibration_samples)
            params = None
            if config.learn_scales:
                groups = lsq.make_learnable(qat, config.scale_lr)
                params = [{"params": lsq.other_parameters(qat, groups)}, *groups]
                notes.append(f"{len(groups)} quantization scales learned (LSQ) after calibration")
            result = fit(
                qat,
                data.train,
                data.teacher_train,
                data.train_labels,
                data.eval,
                data.teacher_eval,
                data.eval_labels,
                settings_from(config),
                label=self.name,
                params=params,
            )
            # the ranges are final: nothing below may move them
            qat.apply(torch.ao.quantization.disable_observer)
            lsq.freeze(qat)
            trained = str(Path(tmp) / "trained.onnx")
            convert.write_back(qat, prepared, trained)
            # the learned weights in float, then onnxruntime's static quantizer (QDQ, int8
            # kernels) held to the scales QAT trained against; tensors QAT did not
            # fake-quantize are calibrated on the training inputs
            learned, counts = {}, {}
            if config.learned_ranges:
                learned, counts = qdq.learned_overrides(
                    qat, trained, data.sample_feeds(64), data.names
                )
                notes.append(
                    f"exported with the learned scales of {counts['learned_weight_scales']} "
                    f"weights and {counts['learned_activation_ranges']} of "
                    f"{counts['activation_quantizers']} activation quantizers"
                )
            calib = str(Path(tmp) / "calibration.npz")
            k = min(config.calibration_samples, len(data.train[0]))
            np.savez(calib, **{n: a[:k] for n, a in zip(data.names, data.train, strict=True)})
            static = StaticConfig(
                calibration_path=calib,
                max_samples=k,
                per_channel=config.per_channel,
                activation_type=config.activation_type,
                keep_stem_float=config.keep_stem_float,
                calibrate_method=config.calibrate_method,
                preprocess=False,
            )
            run_static(trained, static, output_path, notes=notes, tensor_overrides=learned)
            counts.update(qdq.export_fidelity(qat, output_path, data.eval, data.names))
        metrics = {
            **_util.size_metrics(input_path, output_path),
            **quantized_node_count(output_path),
            **counts,
            **_train_metrics(result),
        }
        if not metrics["integer_ops"] and not metrics["quantize_linear_nodes"]:
            raise PassRefused("QAT trained the model but the quantizer left every op in float.")
        return PassResult(str(output_path), metrics, notes + _summary(result))


def wants_recovery(cfg) -> int:
    """Fine-tune epochs a prune pass should run: explicit, or by default when torch
    and training data are both there."""
    from compression.engine.training import TrainingUnavailable, available

    if cfg.finetune_epochs is not None:
        if cfg.finetune_epochs > 0 and not available():
            raise TrainingUnavailable(f"finetune_epochs > 0 {_hint()}")
        return max(0, cfg.finetune_epochs)
    has_data = bool(cfg.train_path or cfg.calibration_path)
    return RECOVERY_EPOCHS if has_data and available() else 0


RECOVERY_EPOCHS = 15


def _hint() -> str:
    from compression.engine.training import EXTRA_HINT

    return EXTRA_HINT


def recover(original_path, pruned_path, output_path, cfg, *, keep_zeros: bool) -> tuple[dict, list]:
    """Distil ``pruned_path`` from ``original_path`` for ``cfg.finetune_epochs`` epochs."""
    epochs = wants_recovery(cfg)
    train_cfg = TrainFields(
        calibration_path=cfg.calibration_path,
        train_path=cfg.train_path,
        eval_path=cfg.eval_path,
        epochs=epochs,
        lr=cfg.finetune_lr,
    )
    result = train_student(
        original_path, pruned_path, output_path, train_cfg, label="finetune", keep_zeros=keep_zeros
    )
    metrics = {"finetune_epochs": epochs, **_train_metrics(result)}
    return metrics, ["fine-tuned by distillation from the unpruned model", *_summary(result)]
