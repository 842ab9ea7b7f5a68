"""The Open Inference Protocol (KServe V2) over REST: model metadata, the infer request and its response,
including the binary tensor extension tritonclient uses by default.

Request: `{"id": ..., "inputs": [{"name": "text", "datatype": "BYTES", "shape": [N], "data": [...]}],
"outputs": [{"name": "label"}, ...], "parameters": {"details": true}}`. With the binary extension the body
is that JSON header (its length in the `Inference-Header-Content-Length` header) followed by the tensors'
bytes (`parameters.binary_data_size`; BYTES elements as a 4-byte little-endian length + UTF-8).
Response outputs come from the task's `serving_outputs`: all non-detail outputs unless the request names
some; an output is sent binary when the request asks (`binary_data` on it, or `binary_data_output`).
"""
from __future__ import annotations

import json
import struct

import numpy as np

from domaintune.components.serving.protocols import ApiError, Limits, _type, check_texts, parse_json

HEADER = "inference-header-content-length"
NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_}


def metadata(model) -> dict:
    return {"name": model.name, "versions": [model.version], "platform": "onnxruntime",
            "inputs": [{"name": model.input_name, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{k: spec[k] for k in ("name", "datatype", "shape")} for spec in model.outputs],
            "parameters": {"task": model.task.name, "labels": model.labels, "file": model.file,
                           "detail_outputs": [s["name"] for s in model.outputs if s["detail"]]}}


def _bytes_elements(raw: bytes, where: str) -> list[str]:
    out, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise ApiError(400, f"{where}: truncated BYTES element length at byte {pos}")
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + size > len(raw):
            raise ApiError(400, f"{where}: BYTES element of {size} bytes runs past the end of the data")
        try:
            out.append(raw[pos:pos + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise ApiError(400, f"{where}: element {len(out)} is not UTF-8 text") from None
        pos += size
    return out


def _flatten(data):
    if isinstance(data, list) and data and all(isinstance(row, list) for row in data):
        return [v for row in data for v in _flatten(row)]
    return data


def parse_infer(body: bytes, header_length: str | None, input_name: str, limits: Limits):
    """-> (texts, requested output names or None, binary output names, details, request id)."""
    binary = b""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise ApiError(400, f"Inference-Header-Content-Length must be a number (got {header_length!r})") from None
        if not 0 < size <= len(body):
            raise ApiError(400, f"Inference-Header-Content-Length {size} does not fit a {len(body)}-byte body")
        body, binary = body[:size], body[size:]
    req = parse_json(body)
    if not isinstance(req, dict):
        raise ApiError(400, f"request body must be a JSON object with inputs (got {_type(req)})")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ApiError(400, f"inputs must be a non-empty list of tensors (got {_type(inputs)})")
    params = req.get("parameters") or {}
    if not isinstance(params, dict):
        raise ApiError(400, f"parameters must be an object (got {_type(params)})")
    if len(inputs) > 1:
        raise ApiError(400, f"inputs has {len(inputs)} tensors; this model takes one, {input_name!r} (BYTES)")
    texts, offset = None, 0
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            raise ApiError(400, f"{where} must be a tensor object (got {_type(tensor)})")
        tparams = tensor.get("parameters") or {}
        size = tparams.get("binary_data_size") if isinstance(tparams, dict) else None
        raw = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ApiError(400, f"{where}.parameters.binary_data_size {size!r} does not fit the binary data")
            raw, offset = binary[offset:offset + size], offset + size
        if tensor.get("name") != input_name:
            raise ApiError(400, f"{where}.name must be {input_name!r} (got {tensor.get('name')!r}); "
                                "see GET /v2/models/NAME for the inputs")
        if tensor.get("datatype") != "BYTES":
            raise ApiError(400, f"{where}.datatype must be 'BYTES' (got {tensor.get('datatype')!r})")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                   for d in shape):
            raise ApiError(400, f"{where}.shape must be a list of non-negative integers (got {shape!r})")
        if raw is None and "data" not in tensor:
            raise ApiError(400, f"{where} has no data (and no binary_data_size)")
        data = _bytes_elements(raw, where) if raw is not None else _flatten(tensor.get("data"))
        texts = check_texts(data, f"{where}.data", limits)
        if int(np.prod(shape)) != len(texts):
            raise ApiError(400, f"{where}.shape {shape} holds {int(np.prod(shape))} elements but data has {len(texts)}")
    details = params.get("details", False)
    if not isinstance(details, bool):
        raise ApiError(400, f"parameters.details must be true or false (got {_type(details)})")
    requested, binary_out = None, set()
    outputs = req.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                    for o in outputs):
            raise ApiError(400, "outputs must be a list of {\"name\": ...} objects")
        requested = [o["name"] for o in outputs]
        binary_out = {o["name"] for o in outputs if (o.get("parameters") or {}).get("binary_data")}
    elif params.get("binary_data_output"):
        binary_out = {"*"}
    return texts, requested, binary_out, details, req.get("id")


def select_outputs(model, requested: list[str] | None) -> list[dict]:
    if requested is None:
        return [s for s in model.outputs if not s["detail"]]
    known = {s["name"]: s for s in model.outputs}
    for name in requested:
        if name not in known:
            raise ApiError(400, f"unknown output {name!r}: this model has {', '.join(known)}")
    return [known[name] for name in requested]


def _tensor(spec: dict, answers: list[dict]) -> tuple[dict, np.ndarray | list]:
    values = [a[spec["name"]] for a in answers]
    if spec["datatype"] == "BYTES":
        data = [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in values]
        return {"name": spec["name"], "datatype": "BYTES", "shape": [len(data)]}, data
    values = [list(v.values()) if isinstance(v, dict) else v for v in values]
    array = np.asarray(values, dtype=NUMPY[spec["datatype"]])
    return {"name": spec["name"], "datatype": spec["datatype"], "shape": list(array.shape)}, array


def infer_response(model, answers: list[dict], specs: list[dict], binary_out: set, request_id) -> tuple[bytes, dict]:
    """(body, extra headers) of the infer response."""
    head = {"model_name": model.name, "model_version": model.version, "outputs": []}
    if request_id is not None:
        head["id"] = request_id
    chunks = []
    for spec in specs:
        tensor, data = _tensor(spec, answers)
        if "*" in binary_out or spec["name"] in binary_out:
            if isinstance(data, list):
                raw = b"".join(struct.pack("<I", len(b)) + b for b in (s.encode("utf-8") for s in data))
            else:
                raw = np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<"), copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = data if isinstance(data, list) else data.ravel().tolist()
        head["outputs"].append(tensor)
    header = json.dumps(head, ensure_ascii=False).encode("utf-8")
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {"content-type": "application/octet-stream",
                                       "inference-header-content-length": str(len(header))}
