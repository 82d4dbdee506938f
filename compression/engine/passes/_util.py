"""Small helpers shared by passes."""

from __future__ import annotations

import gzip
from pathlib import Path

import onnx


def file_size(path: str | Path) -> int:
    return Path(path).stat().st_size


def gzip_size(path: str | Path) -> int:
    # level 6 is what an HTTP/OTA transport would typically apply
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=6))


def load(path: str | Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=False)


def save(model: onnx.ModelProto, path: str | Path) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return str(path)


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def size_metrics(input_path: str | Path, output_path: str | Path) -> dict:
    before, after = file_size(input_path), file_size(output_path)
    return {
        "size_bytes_before": before,
        "size_bytes_after": after,
        "size_ratio": round(after / before, 4) if before else None,
    }


def strip_unused_opsets(path: str | Path) -> int:
    """Drop opset imports no node uses (onnxruntime saves every domain it knows),
    so variants do not demand domains a small device runtime lacks. Returns how many."""
    model = load(path)
    used = {n.domain for n in model.graph.node} | {""}
    for fn in model.functions:
        used |= {n.domain for n in fn.node} | {fn.domain}
    keep = [o for o in model.opset_import if o.domain in used or o.domain == "ai.onnx"]
    dropped = len(model.opset_import) - len(keep)
    if dropped:
        del model.opset_import[:]
        model.opset_import.extend(keep)
        save(model, path)
    return dropped
