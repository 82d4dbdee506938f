"""Validate an untrusted ONNX upload before it is stored or run.

Cheap checks (existence, size, magic byte) run in the caller; everything that
parses or executes the model runs in a sandboxed child (``run_isolated``), so
a file crafted to crash protobuf, the checker or onnxruntime only kills that
child (docs/reliability.md O1, O3, O4).
"""

from __future__ import annotations

import math
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from compression.engine.errors import ModelRejected, SandboxCrashed, SandboxTimeout
from compression.engine.sandbox import run_isolated

ALLOWED_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}
MIN_OPSET = 7
# A serialized ModelProto starts with field 1 (ir_version, varint): tag byte 0x08.
_ONNX_MAGIC = 0x08
_CRASH_MODES = {"segfault", "hang", "oom"}


def validate_model(
    path: str | Path,
    *,
    timeout_s: float = 60,
    memory_mb: int = 2048,
    max_bytes: int | None = None,
    _test_crash: str | None = None,
) -> dict:
    """Check the model at ``path`` and return its ``inspect_model`` description.

    Beyond parsing and checking, the child runs one bounded inference on
    generated input, so inference-time memory bombs are refused
    (``inference_memory``) under the same ``memory_mb`` / ``timeout_s`` limits.

    Raises ``ModelRejected(code, message)`` for anything we refuse; codes are
    short slugs (``external_data``, ``truncated``, ``validator_crashed`` …).
    ``_test_crash`` ("segfault" | "hang" | "oom") makes the child misbehave on
    purpose so tests can prove the sandbox holds.
    """
    path = Path(path).resolve()  # the sandboxed child runs in its own directory
    check_file(path, max_bytes=max_bytes)
    _test_crash = _test_crash or None  # "" from an unset setting means "no crash"
    if _test_crash is not None and _test_crash not in _CRASH_MODES:
        raise ValueError(f"_test_crash must be one of {sorted(_CRASH_MODES)}")
    try:
        return run_isolated(
            "compression.engine.validate:check_in_child",
            str(path),
            _test_crash,
            memory_mb,
            timeout_s=timeout_s,
            memory_mb=memory_mb,
        )
    except SandboxTimeout as exc:
        raise ModelRejected(
            "validator_timeout",
            f"Validating the model took longer than {timeout_s:g} s; it was stopped ({exc}).",
        ) from None
    except SandboxCrashed as exc:
        raise ModelRejected(
            "validator_crashed",
            f"The model crashed the validator, so it was refused ({exc.reason}).",
        ) from None


def check_file(path: str | Path, *, max_bytes: int | None = None) -> None:
    """The checks that read no more than one byte: existence, size, magic.
    Cheap enough for a web request; everything else runs in the sandbox."""
    path = Path(path)
    if not path.is_file():
        raise ModelRejected("not_onnx", f"No model file at {path.name!r}.")
    size = path.stat().st_size
    if size == 0:
        raise ModelRejected("empty", "The uploaded file is empty.")
    if max_bytes is not None and size > max_bytes:
        raise ModelRejected(
            "too_large",
            f"The model is {size:,} bytes; the limit is {max_bytes:,} bytes.",
        )
    with open(path, "rb") as fh:
        first = fh.read(1)
    if first[0] != _ONNX_MAGIC:
        raise ModelRejected(
            "not_onnx", "The file is not an ONNX model (it does not start like an ONNX protobuf)."
        )


def iter_tensors(graph) -> Iterator[tuple[str, object]]:
    """Every TensorProto reachable from a graph: initializers, sparse values/indices,
    Constant and other node attributes, and the same inside subgraphs (If/Loop/Scan)."""
    for t in graph.initializer:
        yield f"initializer {t.name!r}", t
    for st in graph.sparse_initializer:
        yield f"sparse initializer {st.values.name!r}", st.values
        yield f"sparse initializer {st.values.name!r} indices", st.indices
    for node in graph.node:
        yield from _iter_node_tensors(node)


def _iter_node_tensors(node) -> Iterator[tuple[str, object]]:
    where = f"attribute of node {node.name or node.op_type!r}"
    for at in node.attribute:
        if at.HasField("t"):
            yield where, at.t
        for t in at.tensors:
            yield where, t
        if at.HasField("sparse_tensor"):
            yield where, at.sparse_tensor.values
            yield where, at.sparse_tensor.indices
        for st in at.sparse_tensors:
            yield where, st.values
            yield where, st.indices
        if at.HasField("g"):
            yield from iter_tensors(at.g)
        for g in at.graphs:
            yield from iter_tensors(g)


def _iter_nodes(graph) -> Iterator[object]:
    for node in graph.node:
        yield node
        for at in node.attribute:
            if at.HasField("g"):
                yield from _iter_nodes(at.g)
            for g in at.graphs:
                yield from _iter_nodes(g)


def _check_tensors(model, file_size: int) -> None:
    from onnx import TensorProto, helper

    def all_tensors():
        yield from iter_tensors(model.graph)
        for fn in model.functions:
            for node in fn.node:
                yield from _iter_node_tensors(node)

    for where, t in all_tensors():
        if t.data_location == TensorProto.EXTERNAL or len(t.external_data) > 0:
            target = next((e.value for e in t.external_data if e.key == "location"), "?")
            raise ModelRejected(
                "external_data",
                f"The {where} stores its data in an external file ({target!r}); "
                "only self-contained models are accepted.",
            )
        if t.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
            continue
        try:
            itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except (KeyError, TypeError, ValueError):
            itemsize = 1
        declared = math.prod(t.dims) * itemsize
        if declared > file_size:
            raise ModelRejected(
                "initializer_too_large",
                f"The {where} declares {declared:,} bytes of data but the whole file is "
                f"{file_size:,} bytes; refusing to materialise it.",
            )


def _check_domains(model) -> None:
    import onnx

    graphs = [model.graph]
    nodes = [n for g in graphs for n in _iter_nodes(g)]
    for fn in model.functions:
        nodes.extend(fn.node)
    used = {n.domain for n in nodes}
    for op in model.opset_import:
        # onnxruntime-saved models import every domain it knows; only a used one matters
        if op.domain not in ALLOWED_DOMAINS and op.domain in used:
            raise ModelRejected(
                "unknown_domain",
                f"The model imports operator domain {op.domain!r}; only the standard ONNX, "
                "ONNX-ML and com.microsoft domains are supported.",
            )
        if op.domain in ("", "ai.onnx"):
            latest = onnx.defs.onnx_opset_version()
            if not MIN_OPSET <= op.version <= latest:
                raise ModelRejected(
                    "unsupported_opset",
                    f"The model uses ONNX opset {op.version}; supported opsets are "
                    f"{MIN_OPSET} to {latest}.",
                )
    for node in nodes:
        if node.domain not in ALLOWED_DOMAINS:
            raise ModelRejected(
                "unknown_domain",
                f"Node {node.name or node.op_type!r} uses operator domain {node.domain!r}, "
                "which is not supported.",
            )


def _misbehave(mode: str) -> None:
    if mode == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif mode == "hang":
        while True:
            time.sleep(1)
    elif mode == "oom":
        hog = []
        while True:
            hog.append(bytearray(64 * 1024 * 1024))


def check_in_child(path: str, test_crash: str | None = None, memory_mb: int | None = None) -> dict:
    """The parsing/executing half of ``validate_model``; runs in the sandbox."""
    if test_crash:
        _misbehave(test_crash)
    import onnx
    from google.protobuf.message import DecodeError

    from compression.engine.inspect import describe_loaded

    file_size = Path(path).stat().st_size
    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelRejected(
            "truncated",
            f"The file could not be parsed as an ONNX model; it is truncated or corrupt ({exc}).",
        ) from None
    if not model.graph.node and not model.graph.output:
        raise ModelRejected("truncated", "The file parsed but holds no graph; it is truncated.")
    _check_tensors(model, file_size)
    _check_domains(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelRejected(
            "checker_failed", f"The ONNX checker rejected the model: {first[:400]}"
        ) from None
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as exc:
        raise ModelRejected(
            "checker_failed", f"Shape inference failed on the model: {str(exc)[:400]}"
        ) from None
    session = _open_session(path)
    _bounded_inference(session, memory_mb)
    return describe_loaded(model, file_size)


_OUT_OF_MEMORY = re.compile(r"alloc|out of memory|MemoryError|bad_alloc", re.IGNORECASE)


def sample_feeds(session) -> dict | None:
    """The device's post-install health-check input (`devices.agent.health`, Django-free):
    what passes here is what a device will run first. None when an input is not a
    tensor of a type we can make."""
    from devices.agent.health import sample_inputs

    return sample_inputs(session, strict=True)


def _bounded_inference(session, memory_mb: int | None) -> None:
    """Run the model once on generated input, inside the sandbox's memory and
    time limits: a graph that only explodes when it runs (ConstantOfShape
    100000×100000, a shape computed from the input) is refused here instead of
    on a device."""
    feeds = sample_feeds(session)
    if feeds is None:
        return  # sequences, maps, strings: nothing generic to feed; the checks above stand
    try:
        session.run(None, feeds)
    except MemoryError:
        raise ModelRejected("inference_memory", _memory_message(memory_mb, "MemoryError")) from None
    except Exception as exc:  # onnxruntime's own error types
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if _OUT_OF_MEMORY.search(str(exc)):
            text = re.sub(r"(?<!\S)/\S+", "…", text)[-300:]  # no server paths; keep the size
            raise ModelRejected("inference_memory", _memory_message(memory_mb, text)) from None
        # Any other failure may be our generated input's fault (a symbolic image
        # size of 1 under a 3×3 convolution): the device's health check, on its
        # own hardware, is the judge of those.


def _memory_message(memory_mb: int | None, detail: str) -> str:
    limit = f"the {memory_mb} MB limit" if memory_mb else "the memory limit"
    return (
        f"Running the model on a sample input needs more memory than {limit} "
        f"(a tensor is too large to allocate: {detail}); it was refused."
    )


def _open_session(path: str):
    import onnxruntime as ort

    if hasattr(ort, "disable_telemetry_events"):
        ort.disable_telemetry_events()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types; all mean "refuse"
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # drop "Load model from /server/path failed:" so no server path reaches the user
        msg = re.sub(r"^.*?Load model from .*? failed:\s*", "", msg)
        raise ModelRejected(
            "runtime_failed", f"The ONNX runtime could not load the model: {msg[:400]}"
        ) from None
