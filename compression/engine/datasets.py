"""Datasets are ``.npz`` files: one array per model input (keyed by input name,
batch on axis 0) and optionally ``labels`` (class ids, shape [N]).

Loading never unpickles (``allow_pickle=False``): a dataset is untrusted input.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from compression.engine.errors import DatasetError
from compression.engine.inspect import graph_inputs

LABELS_KEY = "labels"

_ONNX_TO_NP = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
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
        dims = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
        ]
        specs.append(InputSpec(v.name, onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type), dims))
    return specs


def _fixed(dim) -> bool:
    return isinstance(dim, int) and dim > 0


def fixed_batch(specs: list[InputSpec]) -> int | None:
    """The batch size a model insists on (a fixed axis 0 on a per-sample input), or None."""
    dims = {s.shape[0] for s in specs if s.shape and _fixed(s.shape[0])}
    return min(dims) if dims else None


def check_contract(arrays: dict[str, dict], inputs: list[dict], *, name: str = "dataset") -> dict:
    """The one dataset contract, shared by the upload check and the job check.

    ``arrays``: ``{array name: {"shape": [...], "dtype": str}}`` (read from npz
    headers, nothing loaded); ``inputs``: the model's ``[{"name", "shape",
    "dtype"}]``. Each model input gets an array of the same name that is either

    - **per-sample**: samples on axis 0, the other axes as the model has them
      (a scalar input takes a 1-D array: one value per sample), or
    - **fixed**: exactly one sample's value, fed with every batch — a 0-d
      array for a scalar input (a sample rate), or an array of the model
      input's full fixed shape (a recurrent state) when the per-sample arrays
      hold a different number of samples.

    Returns ``{"samples": N, "roles": {input: "per-sample" | "fixed"}}``;
    raises ``DatasetError`` naming the first mismatch.
    """
    missing = [i["name"] for i in inputs if i["name"] not in arrays]
    if missing:
        extra = sorted(set(arrays) - {i["name"] for i in inputs} - {LABELS_KEY})
        raise DatasetError(
            f"Dataset {name!r} has no array for model input(s) {missing}; it holds "
            f"{extra or 'no other arrays'}. Arrays must be named after the model inputs."
        )
    roles: dict[str, str] = {}
    counts: dict[str, int] = {}
    candidates_fixed: list[str] = []
    for spec in inputs:
        want = list(spec.get("shape") or [])
        got = list(arrays[spec["name"]].get("shape") or [])
        label = spec["name"]
        if not want:  # scalar input
            if not got:
                roles[label] = "fixed"
            elif len(got) == 1:
                roles[label], counts[label] = "per-sample", got[0]
            else:
                raise DatasetError(
                    f"Array {label!r} has shape {got}; the model input is a scalar: give one "
                    f"value per sample (shape [N]) or a single value (shape [])."
                )
            continue
        if len(got) != len(want):
            raise DatasetError(
                f"Array {label!r} has shape {got} but the model input expects rank "
                f"{len(want)} {want} (samples first)."
            )
        for axis, (g, w) in enumerate(zip(got, want, strict=True)):
            if axis > 0 and _fixed(w) and g != w:
                raise DatasetError(
                    f"Array {label!r} has shape {got} but the model input expects {want}: "
                    f"axis {axis} differs."
                )
        if all(_fixed(w) for w in want) and got == want:
            candidates_fixed.append(label)
        roles[label], counts[label] = "per-sample", got[0]
    per_sample = {k: v for k, v in counts.items() if k not in candidates_fixed}
    sizes = set(per_sample.values())
    if candidates_fixed and sizes and len(sizes) == 1:
        n = next(iter(sizes))
        for label in candidates_fixed:
            if counts[label] != n:  # one full-shape value next to N samples: fixed
                roles[label] = "fixed"
                counts.pop(label)
    sizes = set(counts.values())
    if len(sizes) > 1:
        raise DatasetError(
            f"Every per-sample array must hold the same number of samples on axis 0; got {counts}."
        )
    n = next(iter(sizes)) if sizes else 1
    if n == 0:
        raise DatasetError(f"Dataset {name!r} holds no samples.")
    labels = arrays.get(LABELS_KEY)
    if labels is not None:
        shape = list(labels.get("shape") or [])
        kind = np.dtype(labels.get("dtype", "int64")).kind
        if len(shape) != 1 or shape[0] != n or kind not in "iu":
            raise DatasetError(
                f"'labels' must be {n} integer class ids (got {labels.get('dtype')} {shape})."
            )
    for spec in inputs:
        dtype = spec.get("dtype")
        have = arrays[spec["name"]].get("dtype")
        if dtype and have and have != dtype:
            try:
                ok = np.can_cast(np.dtype(have), np.dtype(dtype), casting="same_kind")
            except TypeError:
                ok = False
            if not ok:
                raise DatasetError(
                    f"Array {spec['name']!r} has dtype {have} but the model input expects {dtype}."
                )
    return {"samples": int(n), "roles": roles}


def spec_dicts(specs: list[InputSpec]) -> list[dict]:
    return [{"name": s.name, "shape": s.shape, "dtype": np.dtype(s.dtype).name} for s in specs]


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]  # per-sample arrays, samples on axis 0
    labels: np.ndarray | None
    fixed: dict[str, np.ndarray] = field(default_factory=dict)  # fed as is with every batch
    batch: int | None = None  # the model's own fixed batch, if any
    scalars: frozenset[str] = frozenset()  # per-sample scalar inputs: one sample per run

    @property
    def size(self) -> int:
        if not self.inputs:
            return 1
        return len(next(iter(self.inputs.values())))

    def feed_batch(self, wanted: int) -> int:
        """The batch size the model can take: its fixed batch, 1 for per-sample scalars."""
        if self.batch is not None:
            return self.batch
        return 1 if self.scalars else max(1, wanted)

    def batches(
        self, batch_size: int, limit: int | None = None, start: int = 0
    ) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of ``feed_batch(batch_size)`` samples from sample ``start`` up to ``limit``;
        a fixed-batch model drops a ragged tail."""
        size = self.feed_batch(batch_size)
        n = self.size if limit is None else min(limit, self.size)
        for first in range(start, n, size):
            stop = min(first + size, n)
            if self.batch is not None and stop - first != self.batch:
                break
            feed = {
                k: np.asarray(v[first]) if k in self.scalars else v[first:stop]
                for k, v in self.inputs.items()
            }
            feed.update(self.fixed)
            yield feed

    def sample_shapes(self) -> dict[str, list[int]]:
        """Shapes of the first feed (what latency is measured on)."""
        feed = next(self.batches(1))
        return {k: list(np.shape(v)) for k, v in feed.items()}


def load_dataset(
    path: str | Path,
    model_path: str | Path,
    *,
    require_labels: bool = False,
    max_samples: int | None = None,
) -> Dataset:
    """Load ``path`` and check it against the inputs of ``model_path`` (``check_contract``).

    Raises ``DatasetError`` with a sentence naming the first mismatch.
    """
    path = Path(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"Dataset file {str(path)!r} does not exist.") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"Dataset {path.name!r} is not a readable .npz file ({exc}).") from None
    with npz:
        try:
            arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            # object arrays would need unpickling, which we never do
            raise DatasetError(f"Dataset {path.name!r} cannot be read safely ({exc}).") from None
    specs = model_input_specs(model_path)
    meta = {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in arrays.items()}
    contract = check_contract(meta, spec_dicts(specs), name=path.name)
    inputs: dict[str, np.ndarray] = {}
    fixed: dict[str, np.ndarray] = {}
    scalars: set[str] = set()
    for spec in specs:
        arr = arrays[spec.name]
        if arr.dtype != spec.dtype:
            arr = arr.astype(spec.dtype)
        if contract["roles"][spec.name] == "fixed":
            fixed[spec.name] = arr
        else:
            inputs[spec.name] = arr
            if not spec.shape:
                scalars.add(spec.name)
    labels = arrays.get(LABELS_KEY)
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
    elif require_labels:
        raise DatasetError(f"Dataset {path.name!r} has no 'labels' array.")
    n = contract["samples"]
    if max_samples is not None and n > max_samples:
        inputs = {k: v[:max_samples] for k, v in inputs.items()}
        labels = labels[:max_samples] if labels is not None else None
    per_sample_specs = [s for s in specs if s.name in inputs and s.shape]
    return Dataset(inputs, labels, fixed, fixed_batch(per_sample_specs), frozenset(scalars))


def random_dataset(
    model_path: str | Path,
    path: str | Path,
    *,
    samples: int = 16,
    dim_values: dict[str, int] | None = None,
    seed: int = 0,
) -> str:
    """Write generated inputs for every model input (latency-only mode: no data yet).

    Dynamic dims take ``dim_values[name]`` or 1 for the batch axis, 32 elsewhere;
    floats are N(0, 1), integers zeros (always a valid index), scalars one value.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in model_input_specs(model_path):
        if not spec.shape:
            arrays[spec.name] = np.zeros((), spec.dtype) + (
                1 if np.dtype(spec.dtype).kind in "iu" else 0
            )
            continue
        shape = [samples] + [
            d if _fixed(d) else int((dim_values or {}).get(str(d), 32)) for d in spec.shape[1:]
        ]
        if np.dtype(spec.dtype).kind == "f":
            arrays[spec.name] = rng.normal(0, 1, shape).astype(spec.dtype)
        else:
            arrays[spec.name] = np.zeros(shape, spec.dtype)
    np.savez(path, **arrays)
    return str(path)


def make_calibration_reader(
    dataset_path: str | Path, model_path: str | Path, *, max_samples: int = 200
):
    """An onnxruntime ``CalibrationDataReader`` over at most ``max_samples`` samples.

    Samples are fed one at a time (or in the model's own fixed batch, which
    ``Dataset.batches`` enforces): calibration memory then grows with the
    activation statistics, not with the batch.
    """
    from onnxruntime.quantization import CalibrationDataReader

    dataset = load_dataset(dataset_path, model_path, max_samples=max_samples)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.size = len(list(dataset.batches(1)))
            self._it = dataset.batches(1)

        def __len__(self) -> int:
            return self.size

        def get_next(self):
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = dataset.batches(1)

    return _Reader()


def example_npz(inputs: list[dict], *, samples: int = 4, dim_default: int = 8) -> bytes:
    """A small valid dataset for a model's ``inputs`` metadata (the format help's example).

    One per-sample array per input (samples on axis 0; a scalar input gets one
    value per sample), dynamic dims set to ``dim_default``, plus ``labels``.
    """
    import io

    arrays: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)
    for spec in inputs:
        dtype = np.dtype(spec.get("dtype") or "float32")
        dims = list(spec.get("shape") or [])
        shape = [samples] + [d if _fixed(d) else dim_default for d in dims[1:]]
        if not dims:
            shape = [samples]
        arrays[spec["name"]] = (
            rng.normal(0, 1, shape) if dtype.kind == "f" else np.zeros(shape)
        ).astype(dtype)
    arrays[LABELS_KEY] = np.zeros(samples, np.int64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
