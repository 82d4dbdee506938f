"""The one training loop every recipe uses: fit a student to a teacher's outputs.

Targets are the teacher's outputs, computed once with onnxruntime on the
training inputs; labels, when the data has them, add a cross-entropy term.
The loss follows the output kind:

- class logits ``[N, C]``: ``α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1−α)·CE(s, y)``;
  without labels ``y`` is the teacher's top class (hard distillation: pseudo-labels,
  only on samples whose teacher softmax peaks at ``pseudo_label_confidence`` or
  more), or α = 1 when ``pseudo_labels`` is off;
- sequences ``[N, T, C]``: the same KL per timestep (labels unused);
- anything else (embeddings, regression, boxes): mean squared error.

Early stopping keeps the state with the best evaluation metric (accuracy with
labels, else top-1 agreement with the teacher, else negative MSE); training
stops between batches on cancellation and at the deadline.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from compression.engine.errors import Cancelled
from compression.engine.training import hooks


@dataclass
class Settings:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    temperature: float = 4.0
    alpha: float = 0.7
    patience: int = 5
    weight_decay: float = 0.0
    seed: int = 0
    time_budget_s: float | None = None
    pseudo_labels: bool = True
    pseudo_label_confidence: float = 0.0


def pseudo_labels(teacher_logits: np.ndarray, confidence: float) -> np.ndarray:
    """The teacher's top class per sample, -1 where its softmax peaks below ``confidence``."""
    z = teacher_logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return np.where(p.max(1) >= confidence, z.argmax(1), -1).astype(np.int64)


def output_kind(arr: np.ndarray) -> str:
    """``logits`` [N, C], ``sequence`` [N, T, C] or ``regression`` (anything else)."""
    if not np.issubdtype(arr.dtype, np.floating):
        return "regression"
    if arr.ndim == 2 and arr.shape[1] > 1:
        return "logits"
    if arr.ndim == 3 and arr.shape[2] > 1:
        return "sequence"
    return "regression"


def _loss(outs, targets, kinds, labels, settings: Settings):
    import torch
    import torch.nn.functional as F

    total = 0.0
    t = settings.temperature
    ce_done = False
    for s, tgt, kind in zip(outs, targets, kinds, strict=True):
        if kind in ("logits", "sequence"):
            c = s.shape[-1]
            s2, t2 = s.reshape(-1, c), tgt.reshape(-1, c)
            kl = (
                F.kl_div(
                    F.log_softmax(s2 / t, dim=1),
                    F.log_softmax(t2 / t, dim=1),
                    reduction="batchmean",
                    log_target=True,
                )
                * t
                * t
            )
            if kind == "logits" and labels is not None and not ce_done and settings.alpha < 1:
                keep = labels >= 0  # pseudo-labels: -1 where the teacher is unsure
                ce = F.cross_entropy(s2[keep], labels[keep]) if bool(keep.any()) else 0.0
                total = total + settings.alpha * kl + (1 - settings.alpha) * ce
                ce_done = True
            else:
                total = total + kl
        else:
            total = total + F.mse_loss(s, tgt)
    return total if isinstance(total, torch.Tensor) else torch.zeros(())


def _forward(module, batch: list) -> list:
    out = module(*batch)
    return list(out) if isinstance(out, tuple | list) else [out]


def predict_torch(module, inputs: list[np.ndarray], batch_size: int = 256) -> list[np.ndarray]:
    import torch

    module.eval()
    chunks: list[list[np.ndarray]] = []
    n = len(inputs[0])
    with torch.no_grad():
        for start in range(0, n, batch_size):
            outs = _forward(
                module, [torch.from_numpy(a[start : start + batch_size]) for a in inputs]
            )
            if not chunks:
                chunks = [[] for _ in outs]
            for acc, o in zip(chunks, outs, strict=True):
                acc.append(o.numpy())
    return [np.concatenate(c) for c in chunks]


@contextlib.contextmanager
def observers_frozen(module):
    """Fake-quantizers keep their ranges while evaluation runs (they observe in eval mode
    too, and the evaluation set must not become calibration data)."""
    from torch.ao.quantization import FakeQuantizeBase

    fqs = [m for m in module.modules() if isinstance(m, FakeQuantizeBase)]
    states = [m.observer_enabled.clone() for m in fqs]
    for m in fqs:
        m.disable_observer()
    try:
        yield
    finally:
        for m, on in zip(fqs, states, strict=True):
            m.observer_enabled.copy_(on)


def score(
    outs: list[np.ndarray], teacher: list[np.ndarray], labels: np.ndarray | None, kinds: list[str]
) -> tuple[str, float]:
    """(metric name, value; higher is better) on the first output."""
    s, t, kind = outs[0], teacher[0], kinds[0]
    if kind == "logits" and labels is not None:
        return "accuracy", float(np.mean(s.argmax(1) == labels))
    if kind in ("logits", "sequence"):
        return "agreement", float(np.mean(s.argmax(-1) == t.argmax(-1)))
    return "neg_mse", -float(np.mean((s.astype(np.float64) - t) ** 2))


def fit(
    module,
    train_inputs: list[np.ndarray],
    train_targets: list[np.ndarray],
    train_labels: np.ndarray | None,
    eval_inputs: list[np.ndarray],
    eval_targets: list[np.ndarray],
    eval_labels: np.ndarray | None,
    settings: Settings,
    *,
    label: str,
    after_step: Callable[[], None] | None = None,
    params=None,
) -> dict:
    """Train ``module`` in place (best state restored); return the history and a summary."""
    import torch

    torch.manual_seed(settings.seed)
    kinds = [output_kind(t) for t in train_targets]
    use_labels = train_labels is not None and kinds[0] == "logits"
    use_pseudo = not use_labels and kinds[0] == "logits" and settings.pseudo_labels
    pseudo_share = None
    if use_labels:
        labels_t = torch.from_numpy(train_labels.astype(np.int64))
    elif use_pseudo:
        pseudo = pseudo_labels(train_targets[0], settings.pseudo_label_confidence)
        pseudo_share = float(np.mean(pseudo >= 0))
        labels_t = torch.from_numpy(pseudo)
    else:
        labels_t = None
        settings = dataclasses.replace(settings, alpha=1.0)
    xs = [torch.from_numpy(np.ascontiguousarray(a)) for a in train_inputs]
    ts = [torch.from_numpy(np.ascontiguousarray(a.astype(np.float32))) for a in train_targets]
    opt = torch.optim.Adam(
        params if params is not None else module.parameters(),
        lr=settings.lr,
        weight_decay=settings.weight_decay,
    )
    epochs = max(0, int(settings.epochs))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    gen = torch.Generator().manual_seed(settings.seed)
    deadline = hooks.deadline(settings.time_budget_s)
    started = time.monotonic()

    eval_t = [torch.from_numpy(np.ascontiguousarray(a.astype(np.float32))) for a in eval_targets]

    def evaluate() -> tuple[str, float, float]:
        with observers_frozen(module):
            outs = predict_torch(module, eval_inputs)
        name, value = score(outs, eval_targets, eval_labels, kinds)
        with torch.no_grad():  # the teacher term alone: breaks ties of a saturated metric
            loss = float(_loss([torch.from_numpy(o) for o in outs], eval_t, kinds, None, settings))
        return name, value, loss

    metric_name, best, best_loss = evaluate()
    history = [
        {"epoch": 0, "loss": None, metric_name: round(best, 6), "eval_loss": round(best_loss, 6)}
    ]
    best_state, best_epoch, stale, stopped = copy.deepcopy(module.state_dict()), 0, 0, ""
    n = len(xs[0])
    for epoch in range(1, epochs + 1):
        module.train()
        total, count = 0.0, 0
        for idx in torch.randperm(n, generator=gen).split(max(1, settings.batch_size)):
            if hooks.stop_requested():
                raise Cancelled(f"{label}: training cancelled in epoch {epoch}")
            if deadline is not None and time.time() > deadline:
                stopped = f"time budget reached in epoch {epoch}"
                break
            opt.zero_grad()
            loss = _loss(
                _forward(module, [x[idx] for x in xs]),
                [t[idx] for t in ts],
                kinds,
                labels_t[idx] if labels_t is not None else None,
                settings,
            )
            if not math.isfinite(float(loss.detach())):
                stopped = f"loss diverged in epoch {epoch}"
                break
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        if stopped and not count:
            break
        sched.step()
        _, value, eval_loss = evaluate()
        row = {
            "epoch": epoch,
            "loss": round(total / max(1, count), 6),
            metric_name: round(value, 6),
            "eval_loss": round(eval_loss, 6),
            "seconds": round(time.monotonic() - started, 2),
        }
        history.append(row)
        hooks.emit({"pass": label, "epochs": epochs, "metric": metric_name, **row})
        if value > best + 1e-9 or (value >= best - 1e-9 and eval_loss < best_loss):
            best, best_loss, best_epoch, stale = value, eval_loss, epoch, 0
            best_state = copy.deepcopy(module.state_dict())
        else:
            stale += 1
        if stopped:
            break
        if settings.patience and stale >= settings.patience:
            stopped = f"early stop: no better {metric_name} for {settings.patience} epochs"
            break
    module.load_state_dict(best_state)
    module.eval()
    return {
        "history": history,
        "metric": metric_name,
        "best_epoch": best_epoch,
        "best_metric": round(best, 6),
        "initial_metric": history[0][metric_name],
        "stopped": stopped,
        "kinds": kinds,
        "used_labels": use_labels,
        "pseudo_labels": use_pseudo,
        "pseudo_label_share": None if pseudo_share is None else round(pseudo_share, 4),
        "train_seconds": round(time.monotonic() - started, 2),
    }
