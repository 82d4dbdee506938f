"""Datasets are ``.npz`` files: one array per model input (keyed by input name,
batch on axis 0) and optionally ``labels`` (class ids, shape [N]).

Loading never unpickles (``allow_pickle=False``): a dataset is untrusted input.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from compression.engine.errors import DatasetError
from compression.engine.inspect import graph_inputs

LABELS_KEY = "labels"

_ONNX_TO_NP = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


@dataclass
class InputSpec:
    name: str
    dtype: np.dtype
    shape: list  # ints, or str/None for dynamic dims


def model_input_specs(model_path: str | Path) -> list[InputSpec]:
    model = onnx.load(str(model_path), load_external_data=False)
    specs = []
    for v in graph_inputs(model):
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in tt.shape.dim]
        specs.append(InputSpec(v.name, onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type), dims))
    return specs


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None

    @property
    def size(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        n = self.size if limit is None else min(limit, self.size)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            yield {k: v[start:stop] for k, v in self.inputs.items()}


def load_dataset(path: str | Path, model_path: str | Path, *, require_labels: bool = False,
                 max_samples: int | None = None) -> Dataset:
    """Load ``path`` and check it against the inputs of ``model_path``.

    Raises ``DatasetError`` with a sentence naming the first mismatch.
    """
    path = Path(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"Dataset file {path.name!r} does not exist.") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"Dataset {path.name!r} is not a readable .npz file ({exc}).") from None
    with npz:
        try:
            arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            # object arrays would need unpickling, which we never do
            raise DatasetError(f"Dataset {path.name!r} cannot be read safely ({exc}).") from None
    specs = model_input_specs(model_path)
    expected = {s.name for s in specs}
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        extra = sorted(set(arrays) - expected - {LABELS_KEY})
        raise DatasetError(
            f"Dataset {path.name!r} has no array for model input(s) {missing}; "
            f"it holds {extra or 'no other arrays'}. Arrays must be named after the model inputs."
        )
    inputs: dict[str, np.ndarray] = {}
    n = None
    for spec in specs:
        arr = arrays[spec.name]
        if arr.ndim != len(spec.shape):
            raise DatasetError(
                f"Array {spec.name!r} has shape {list(arr.shape)} but the model input expects "
                f"rank {len(spec.shape)} {spec.shape} (batch first)."
            )
        for axis, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
            if axis > 0 and isinstance(want, int) and want > 0 and got != want:
                raise DatasetError(
                    f"Array {spec.name!r} has shape {list(arr.shape)} but the model input "
                    f"expects {spec.shape}: axis {axis} differs."
                )
        if arr.dtype != spec.dtype:
            if not np.can_cast(arr.dtype, spec.dtype, casting="same_kind"):
                raise DatasetError(
                    f"Array {spec.name!r} has dtype {arr.dtype} but the model input expects "
                    f"{np.dtype(spec.dtype).name}."
                )
            arr = arr.astype(spec.dtype)
        if n is not None and len(arr) != n:
            raise DatasetError("All dataset arrays must have the same number of samples.")
        n = len(arr)
        inputs[spec.name] = arr
    if n == 0:
        raise DatasetError(f"Dataset {path.name!r} holds no samples.")
    labels = arrays.get(LABELS_KEY)
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != n or labels.dtype.kind not in "iu":
            raise DatasetError(
                f"'labels' must be {n} integer class ids (got {labels.dtype} x {len(labels)})."
            )
    elif require_labels:
        raise DatasetError(f"Dataset {path.name!r} has no 'labels' array.")
    if max_samples is not None and n > max_samples:
        inputs = {k: v[:max_samples] for k, v in inputs.items()}
        labels = labels[:max_samples] if labels is not None else None
    return Dataset(inputs, labels)


def make_calibration_reader(dataset_path: str | Path, model_path: str | Path, *,
                            max_samples: int = 200):
    """An onnxruntime ``CalibrationDataReader`` over at most ``max_samples`` samples.

    Samples are fed one at a time: calibration memory then grows with the
    activation statistics, not with the batch.
    """
    from onnxruntime.quantization import CalibrationDataReader

    dataset = load_dataset(dataset_path, model_path, max_samples=max_samples)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.size = dataset.size
            self._it = dataset.batches(1)

        def get_next(self):
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = dataset.batches(1)

    return _Reader()
