"""Request bodies -> texts, with errors that name the field: the plain API and MLflow's scoring protocol.

Every problem is an `ApiError` (HTTP status, message, kind for the error metric); the app answers it as
`{"error": message}`. Limits (texts per request, characters per text) are checked here, where the field
path is known: `texts[3]`, `dataframe_split.data[2][0]`, `inputs[0].data[1]`.

MLflow's `/invocations` accepts what `mlflow models serve` does for a one-column text model:
`{"dataframe_split": {"columns": ["text"], "data": [["..."], ...]}}`, `{"dataframe_records": [{"text": ...}]}`,
`{"inputs": {"text": [...]}}` (or a list of strings or of records; `instances` likewise), or a CSV body with
a `text` header; `params` may hold `{"details": true}`.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "bad_request"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass
class Limits:
    max_texts: int
    max_text_chars: int


def _type(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def parse_json(body: bytes):
    if not body.strip():
        raise ApiError(400, "empty request body: send a JSON object")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not UTF-8") from None
    except ValueError as exc:
        raise ApiError(400, f"request body is not valid JSON ({exc})") from None


def check_texts(texts, where: str, limits: Limits, item: str = "") -> list[str]:
    """TEXTS as the list of strings it must be; `item` names one text ("{where}[{i}]" by default)."""
    item = item or where + "[{i}]"
    if not isinstance(texts, list):
        raise ApiError(400, f"{where} must be a list of strings (got {_type(texts)})")
    if not texts:
        raise ApiError(400, f"{where} is empty: send at least one text")
    if len(texts) > limits.max_texts:
        raise ApiError(413, f"{where} has {len(texts)} texts; at most {limits.max_texts} per request "
                            "(--max-texts)", "too_large")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ApiError(400, f"{item.format(i=i)} must be a string (got {_type(text)})")
        if len(text) > limits.max_text_chars:
            raise ApiError(413, f"{item.format(i=i)} has {len(text)} characters; at most {limits.max_text_chars} "
                                "(--max-text-chars)", "too_large")
    return texts


def _flag(obj: dict, key: str, where: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise ApiError(400, f"{where}{key} must be true or false (got {_type(value)})")
    return value


def parse_predict(body: bytes, limits: Limits) -> tuple[list[str], bool]:
    """`{"texts": [...], "details": false}` -> (texts, details)."""
    obj = parse_json(body)
    if not isinstance(obj, dict):
        raise ApiError(400, f'request body must be a JSON object {{"texts": [...]}} (got {_type(obj)})')
    unknown = sorted(set(obj) - {"texts", "details"})
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}: the body takes texts and details")
    if "texts" not in obj:
        raise ApiError(400, 'missing field texts: send {"texts": ["..."]}')
    return check_texts(obj["texts"], "texts", limits), _flag(obj, "details", "")


MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "inputs", "instances")


def _column(rows, column: str, where: str) -> list:
    if not isinstance(rows, list):
        raise ApiError(400, f"{where} must be a list of records (got {_type(rows)})")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ApiError(400, f"{where}[{i}] must be an object with a {column!r} field (got {_type(row)})")
        if column not in row:
            raise ApiError(400, f"{where}[{i}] has no {column!r} field (fields: {', '.join(map(str, row)) or 'none'})")
        out.append(row[column])
    return out


def _split(split, column: str) -> tuple[list, int]:
    where = "dataframe_split"
    if not isinstance(split, dict):
        raise ApiError(400, f"{where} must be an object with columns and data (got {_type(split)})")
    data = split.get("data")
    if not isinstance(data, list):
        raise ApiError(400, f"{where}.data must be a list of rows (got {_type(data)})")
    columns = split.get("columns")
    if columns is None:
        index = 0
    elif not isinstance(columns, list) or column not in columns:
        raise ApiError(400, f"{where}.columns must name the {column!r} column (got {columns!r})")
    else:
        index = columns.index(column)
    out = []
    for i, row in enumerate(data):
        if isinstance(row, list):
            if len(row) <= index:
                raise ApiError(400, f"{where}.data[{i}] has {len(row)} values; {column!r} is column {index}")
            out.append(row[index])
        elif columns is None or len(columns) == 1:
            out.append(row)
        else:
            raise ApiError(400, f"{where}.data[{i}] must be a list of values (got {_type(row)})")
    return out, index


def _inputs(value, column: str, key: str) -> list:
    if isinstance(value, dict):
        if column not in value:
            raise ApiError(400, f"{key} must hold the {column!r} column (got fields: {', '.join(map(str, value))})")
        texts = value[column]
        return texts if isinstance(texts, list) else [texts]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return _column(value, column, key)
    if isinstance(value, str):
        return [value]
    return value


def parse_invocations(body: bytes, content_type: str, column: str, limits: Limits) -> tuple[list[str], bool]:
    mime = (content_type or "application/json").split(";")[0].strip().lower()
    if mime == "text/csv":
        try:
            rows = list(csv.DictReader(io.StringIO(body.decode("utf-8"))))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ApiError(400, f"CSV body is not readable ({exc})") from None
        if rows and column not in rows[0]:
            raise ApiError(400, f"CSV body has no {column!r} column (columns: {', '.join(rows[0])})")
        return check_texts([r[column] for r in rows], "csv rows", limits), False
    if mime != "application/json":
        raise ApiError(415, f"content type {mime!r} is not supported: send application/json or text/csv",
                       "unsupported_media_type")
    obj = parse_json(body)
    if not isinstance(obj, dict):
        raise ApiError(400, f"request body must be a JSON object with one of {', '.join(MLFLOW_KEYS)} (got {_type(obj)})")
    keys = [k for k in MLFLOW_KEYS if k in obj]
    if len(keys) != 1:
        raise ApiError(400, f"request body must have exactly one of {', '.join(MLFLOW_KEYS)} "
                            f"(got {', '.join(map(str, obj)) or 'no field'})")
    params = obj.get("params") or {}
    if not isinstance(params, dict):
        raise ApiError(400, f"params must be an object (got {_type(params)})")
    key, item = keys[0], ""
    if key == "dataframe_split":
        texts, index = _split(obj[key], column)
        item = f"dataframe_split.data[{{i}}][{index}]"
    elif key == "dataframe_records":
        texts, item = _column(obj[key], column, key), f"dataframe_records[{{i}}].{column}"
    else:
        texts = _inputs(obj[key], column, key)
    return check_texts(texts, key, limits, item), _flag(params, "details", "params.")
