"""Training and evaluation arrays for a recipe, with the teacher's outputs as targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compression.engine.datasets import load_dataset, model_input_specs
from compression.engine.errors import PassConfigError
from compression.engine.passes.base import doc


@dataclass
class TrainFields:
    """Options every training recipe shares (mixed into the pass configs)."""

    calibration_path: str | None = field(
        default=None, metadata=doc("Calibration .npz; the training data when train_path is unset.")
    )
    train_path: str | None = field(
        default=None,
        metadata=doc("Training .npz (inputs, optional 'labels'); default: the calibration data."),
    )
    eval_path: str | None = field(
        default=None,
        metadata=doc("Early-stopping .npz; default: `holdout` of the training data."),
    )
    holdout: float = field(
        default=0.2,
        metadata=doc("Share of the training data held out for early stopping (no eval_path)."),
    )
    epochs: int = field(
        default=10, metadata=doc("Training epochs (early stopping may end sooner).")
    )
    batch_size: int = field(default=64, metadata=doc("Samples per optimizer step."))
    lr: float = field(default=1e-3, metadata=doc("Adam learning rate (cosine-annealed)."))
    temperature: float = field(default=4.0, metadata=doc("Distillation temperature T."))
    alpha: float = field(
        default=0.7,
        metadata=doc(
            "Weight of the teacher term vs cross-entropy on labels (without labels: on the "
            "teacher's pseudo-labels, or 1 when pseudo_labels is off)."
        ),
    )
    patience: int = field(
        default=5,
        metadata=doc("Stop after this many epochs without a better evaluation metric (0: never)."),
    )
    use_labels: bool = field(
        default=True,
        metadata=doc("Use the 'labels' array when present (false: the teacher's outputs only)."),
    )
    pseudo_labels: bool = field(
        default=True,
        metadata=doc(
            "Without labels, the teacher's top class stands in for them (hard distillation: "
            "cross-entropy weighted 1 - alpha beside the teacher term); off: the teacher "
            "term alone (alpha 1)."
        ),
    )
    pseudo_label_confidence: float = field(
        default=0.0,
        metadata=doc(
            "Pseudo-labels only on samples whose teacher softmax peaks at this or more "
            "(0: every sample)."
        ),
    )
    max_samples: int = field(default=20000, metadata=doc("At most this many training samples."))
    time_budget_s: float | None = field(
        default=None,
        metadata=doc("Stop training after this many seconds (the best state so far is kept)."),
    )
    threads: int = field(default=1, metadata=doc("CPU threads torch may use."))
    seed: int = field(default=0, metadata=doc("Random seed (shuffling, initialisation)."))


@dataclass
class TrainData:
    names: list[str]
    train: list[np.ndarray]
    train_labels: np.ndarray | None
    eval: list[np.ndarray]
    eval_labels: np.ndarray | None
    notes: list[str]
    teacher_train: list[np.ndarray] = field(default_factory=list)
    teacher_eval: list[np.ndarray] = field(default_factory=list)

    def sample_feeds(self, n: int = 8) -> dict[str, np.ndarray]:
        return {k: v[:n] for k, v in zip(self.names, self.train, strict=True)}


def teacher_outputs(
    model_path: str | Path, names: list[str], arrays: list[np.ndarray], batch_size: int = 64
) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    static = any(
        isinstance(i.shape[0], int) and i.shape[0] > 0 for i in sess.get_inputs() if i.shape
    )
    step = 1 if static else batch_size
    chunks: list[list[np.ndarray]] = []
    for start in range(0, len(arrays[0]), step):
        outs = sess.run(
            None, {n: a[start : start + step] for n, a in zip(names, arrays, strict=True)}
        )
        chunks = chunks or [[] for _ in outs]
        for acc, o in zip(chunks, outs, strict=True):
            acc.append(np.asarray(o))
    return [np.concatenate(c) for c in chunks]


def load_train_data(teacher_path: str | Path, cfg) -> TrainData:
    """Training/early-stopping arrays per ``cfg`` (a config with ``TrainFields``), teacher
    outputs included. Says in ``notes`` where the data came from."""
    notes: list[str] = []
    source = cfg.train_path or cfg.calibration_path
    if not source:
        raise PassConfigError(
            "Training needs data: set train_path or calibration_path "
            "(CLI: --train TRAIN.npz or --calibration CAL.npz)."
        )
    if not cfg.train_path:
        notes.append("trained on the calibration data (no training set given)")
    names = [s.name for s in model_input_specs(teacher_path)]
    ds = load_dataset(source, teacher_path, max_samples=cfg.max_samples)
    train = [ds.inputs[n] for n in names]
    labels = ds.labels if cfg.use_labels else None
    if ds.labels is not None and not cfg.use_labels:
        notes.append("labels ignored (use_labels=false): the teacher is the only target")
    if cfg.eval_path:
        ev = load_dataset(cfg.eval_path, teacher_path)
        eval_arrays = [ev.inputs[n] for n in names]
        eval_labels = ev.labels
    else:
        n = len(train[0])
        k = int(n * min(max(cfg.holdout, 0.0), 0.5)) if n >= 40 else 0
        order = np.random.default_rng(cfg.seed).permutation(n)
        held, kept = (order[:k], order[k:]) if k else (order, order)
        eval_arrays = [a[held] for a in train]
        eval_labels = labels[held] if labels is not None else None
        train = [a[kept] for a in train]
        labels = labels[kept] if labels is not None else None
        notes.append(
            f"early stopping on {len(held)} held-out training samples"
            if k
            else "early stopping on the training data itself (fewer than 40 samples)"
        )
    data = TrainData(names, train, labels, eval_arrays, eval_labels, notes)
    data.teacher_train = teacher_outputs(teacher_path, names, train)
    data.teacher_eval = teacher_outputs(teacher_path, names, eval_arrays)
    return data


def settings_from(cfg):
    from compression.engine.training.loop import Settings

    return Settings(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        patience=cfg.patience,
        seed=cfg.seed,
        time_budget_s=cfg.time_budget_s,
        pseudo_labels=cfg.pseudo_labels,
        pseudo_label_confidence=cfg.pseudo_label_confidence,
    )
