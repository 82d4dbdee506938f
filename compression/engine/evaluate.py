"""Accuracy against labels and fidelity against a reference model.

Fidelity is reported for every output because a compressed detector can keep
its class scores and still drift on its box regressions.
"""

from __future__ import annotations

import filecmp
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from compression.engine.datasets import Dataset, load_dataset
from compression.engine.errors import DatasetError

# The task-aware comparison lives with the agent, which runs it in shadow mode too.
from devices.agent.fidelity import OUTPUT_KINDS, fidelity


def _session(path: str | Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def predict(
    model_path: str | Path, dataset: Dataset, *, batch_size: int = 32, threads: int = 1
) -> dict[str, np.ndarray]:
    """Run the dataset through the model in its own batch size (fixed batch stays fixed)."""
    return next(predict_segments(model_path, dataset, [dataset.size], batch_size, threads))


def predict_segments(
    model_path: str | Path,
    dataset: Dataset,
    stops: list[int],
    batch_size: int = 32,
    threads: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """The outputs on samples ``[0, stop)`` for each ``stop`` in turn (one session; each
    segment's samples are run once)."""
    sess = _session(model_path, threads)
    names = [o.name for o in sess.get_outputs()]
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    start = 0
    for stop in stops:
        for feed in dataset.batches(batch_size, limit=stop, start=start):
            for n, v in zip(names, sess.run(names, feed), strict=True):
                v = np.asarray(v)
                chunks[n].append(v.reshape(1) if v.ndim == 0 else v)  # 0-d: one sample
        start = stop
        yield {n: np.concatenate(v) if v else np.zeros((0,)) for n, v in chunks.items()}


def checkpoints(dataset: Dataset, first: int = 8) -> list[int]:
    """Where a sequential evaluation looks at its bound: ``first`` samples, then doubling
    (whole feeds of a fixed-batch model), the last at the end of the data."""
    unit = dataset.batch or 1
    n = dataset.size if dataset.batch is None else dataset.size // unit * unit
    stop, out = max(unit, -(-first // unit) * unit), []
    while stop < n:
        out.append(stop)
        stop *= 2
    return [*out, n]


def _is_classifier(arr: np.ndarray, n: int) -> bool:
    return (
        arr.ndim == 2
        and arr.shape[0] == n
        and arr.shape[1] > 1
        and np.issubdtype(arr.dtype, np.floating)
    )


def accuracy(scores: np.ndarray, labels: np.ndarray) -> dict:
    flat = scores.reshape(len(labels), -1)
    top1 = float(np.mean(flat.argmax(axis=1) == labels))
    out = {"top1": round(top1, 6)}
    if flat.shape[1] > 5:
        top5 = np.argsort(-flat, axis=1)[:, :5]
        out["top5"] = round(float(np.mean((top5 == labels[:, None]).any(axis=1))), 6)
    return out


_PROB_OPS = {"Softmax", "LogSoftmax"}


def output_kinds(model_path: str | Path) -> dict[str, str]:
    """Classify every output from its dtype, rank and producing op (see OUTPUT_KINDS)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    producer = {o: n for n in model.graph.node for o in n.output}
    kinds = {}
    for out in model.graph.output:
        tt = out.type.tensor_type
        rank = len(tt.shape.dim) if tt.HasField("shape") else None
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else None
        last = tt.shape.dim[-1].dim_value if rank else 0
        op = producer.get(out.name)
        op_type = op.op_type if op is not None else ""
        name = out.name.lower()
        if dtype is not None and np.dtype(dtype).kind in "iub":
            kinds[out.name] = "indices"
        elif rank == 3 and last == 4 and ("box" in name or op_type != "Softmax"):
            kinds[out.name] = "boxes"
        elif rank == 3 and (op_type in _PROB_OPS or "logit" in name or "prob" in name):
            kinds[out.name] = "sequence"
        elif rank == 2 and last != 1 and (last > 1 or last == 0):
            kinds[out.name] = "embedding" if ("embed" in name or "feature" in name) else "classes"
        elif rank is not None and (rank <= 1 or (rank == 2 and last == 1)):
            kinds[out.name] = "regression"
        else:
            kinds[out.name] = "embedding"
    return kinds


def evaluate(
    model_path: str | Path,
    dataset_path: str | Path,
    *,
    reference_path: str | Path | None = None,
    batch_size: int = 32,
    threads: int = 1,
    max_samples: int | None = None,
    kinds: dict[str, str] | None = None,
    reference_outputs: dict[str, np.ndarray] | None = None,
    stop_below: dict | None = None,
) -> dict:
    """Score ``model_path`` on ``dataset_path``.

    ``accuracy`` (top1/top5) uses the first classifier-shaped output and the
    dataset's ``labels``; ``fidelity`` compares every output to the reference
    with the metric of its kind (``output_kinds`` of the reference, overridden
    per output by ``kinds``) and says which metric it used.

    ``reference_outputs`` (``predict`` of the reference on this data) saves
    running the reference again; a byte-identical copy of the reference is not
    run at all. ``stop_below`` (``min_fidelity`` and/or ``max_accuracy_drop`` in
    points, needs a reference) makes the evaluation sequential: the model runs on
    ``checkpoints`` of the data and stops as soon as even agreeing with the
    reference on every remaining sample could not reach them; the result then
    has ``stopped`` and its figures are upper bounds (the best still reachable).
    """
    dataset = load_dataset(dataset_path, model_path, max_samples=max_samples)
    ref, chosen = None, {}
    if reference_path is not None:
        ref = reference_outputs or predict(
            reference_path, dataset, batch_size=batch_size, threads=threads
        )
        unknown = set((kinds or {}).values()) - set(OUTPUT_KINDS)
        if unknown:
            raise DatasetError(
                f"unknown output kind(s) {sorted(unknown)}; known: {', '.join(OUTPUT_KINDS)}"
            )
        guessed = output_kinds(reference_path)
        chosen = {**guessed, **{k: v for k, v in (kinds or {}).items() if k in guessed}}
    if ref is not None and filecmp.cmp(model_path, reference_path, shallow=False):
        segments = iter([ref])
    elif ref is not None and stop_below:
        stops = checkpoints(dataset)
        segments = predict_segments(model_path, dataset, stops, batch_size, threads)
    else:
        segments = iter([predict(model_path, dataset, batch_size=batch_size, threads=threads)])
    for outputs in segments:
        result = _score(outputs, dataset, ref, chosen)
        if ref is not None and stop_below and _cannot_reach(result, stop_below):
            done = len(next(iter(outputs.values()), ()))
            total = len(next(iter(ref.values()), ()))
            if done < total:
                result["stopped"] = {"samples": done, "of": total}
                break
    return result


def _score(outputs: dict, dataset: Dataset, ref: dict | None, kinds: dict) -> dict:
    """Accuracy and fidelity. ``outputs`` on fewer samples than ``ref`` are completed with
    the reference's own outputs and the accuracy with right answers: the best case."""
    done = {n: len(v) for n, v in outputs.items()}
    if ref is not None:
        outputs = {
            n: np.concatenate([v, ref[n][len(v) :]]) if n in ref and len(v) < len(ref[n]) else v
            for n, v in outputs.items()
        }
    result: dict = {"samples": dataset.size, "outputs": list(outputs)}
    if dataset.labels is not None:
        scored = next((n for n, v in outputs.items() if _is_classifier(v, dataset.size)), None)
        if scored is not None:
            result["accuracy"] = {"output": scored, **accuracy(outputs[scored], dataset.labels)}
            m, total = done[scored], len(outputs[scored])
            if m < total:
                hits = int((outputs[scored][:m].argmax(1) == dataset.labels[:m]).sum())
                result["accuracy"] = {
                    "output": scored,
                    "top1": round((hits + total - m) / total, 6),
                }
    if ref is not None:
        result["fidelity"] = {
            n: fidelity(ref[n], outputs[n], kinds.get(n)) for n in outputs if n in ref
        }
        missing = sorted(set(ref) - set(outputs))
        if missing:
            result["missing_outputs"] = missing
        if dataset.labels is not None and "accuracy" in result:
            name = result["accuracy"]["output"]
            if name in ref:
                result["reference_accuracy"] = accuracy(ref[name], dataset.labels)
    return result


def _cannot_reach(result: dict, stop_below: dict) -> bool:
    """True when the (best-case) figures already miss ``stop_below``, compared after the
    same rounding the search applies: a stopped model would have missed anyway."""
    floor = stop_below.get("min_fidelity")
    fids = [f.get("fidelity", f["cosine"]) for f in result.get("fidelity", {}).values()]
    if floor is not None and fids and min(fids) < floor:
        return True
    max_drop = stop_below.get("max_accuracy_drop")
    acc, ref_acc = result.get("accuracy"), result.get("reference_accuracy")
    if max_drop is not None and acc and ref_acc:
        return round((ref_acc["top1"] - acc["top1"]) * 100, 4) > max_drop
    return False
