"""The result files through which the grader and a submission's kernel talk: inputs in, outputs back.

The grader never trusts the kernel: the kernel runs the learner's code. So the
kernel gets nothing to judge with and reports nothing but data:

1. before the run, the grader writes each case's inputs into
   ``record_dir/inputs/<exercise>/``: arrays as ``.npy`` (``allow_pickle=False``)
   and a ``cases.json`` manifest (numbers and ``None`` inline);
2. in the kernel, a test cell's ``check(name, function)`` (graded mode) loads
   those inputs, calls the function, and writes what came back into
   ``record_dir/outputs/<exercise>/``: ``<case>.json`` describes the result
   (an array, a tuple of them, an exception, or just a description of
   anything else) and the arrays sit beside it as ``<case>[.i].npy``;
3. after the run, the grader reads the outputs back defensively (regular
   files only, size caps, header checked before any allocation, numeric
   dtypes only, never pickle) and judges them against a reference it
   computes itself, from inputs it regenerates itself.

File names are built from the exercise and case names, never read from the
kernel's files.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import numpy as np

from .judge import Opaque, Raised, describe

__all__ = [
    "RecordError",
    "load_array",
    "open_regular",
    "read_inputs",
    "read_result",
    "set_aside",
    "write_inputs",
    "write_result",
]

MAX_ARRAY_BYTES = 16 * 2**20  # one recorded array
MAX_JSON_BYTES = 2**20  # one record or manifest
MAX_ITEMS = 8  # items of a returned tuple or list that are described one by one
MAX_DEPTH = 2  # nesting of returned tuples and lists that is followed
NUMERIC_KINDS = "biufc"  # bool, signed and unsigned integers, floats, complex

# Kept at import time (before any learner code runs), so that a later
# monkeypatch of numpy in the kernel does not change how results are written.
_save = np.save
_load = np.load


class RecordError(ValueError):
    """A record or array file is missing, too large, of the wrong kind, or damaged."""


def _inputs_dir(record_dir, exercise: str) -> Path:
    return Path(record_dir) / "inputs" / exercise


def _outputs_dir(record_dir, exercise: str) -> Path:
    return Path(record_dir) / "outputs" / exercise


# --------------------------------------------------------------------------- grader -> kernel: inputs


def write_inputs(record_dir, exercise: str, cases: dict[str, tuple]) -> None:
    """Write the arguments of each case (``{case_name: args}``) for the kernel to load (grader side)."""
    folder = _inputs_dir(record_dir, exercise)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = []
    for case_name, args in cases.items():
        encoded = []
        for index, arg in enumerate(args):
            if isinstance(arg, np.ndarray):
                file_name = f"{case_name}.{index}.npy"
                with open(folder / file_name, "wb") as handle:
                    _save(handle, arg, allow_pickle=False)
                encoded.append({"npy": file_name})
            elif arg is None or isinstance(arg, (bool, int, float, str)):
                encoded.append({"value": arg})
            else:
                raise TypeError(f"case {case_name!r}: cannot pass an argument of type {type(arg).__name__}")
        manifest.append({"case": case_name, "args": encoded})
    (folder / "cases.json").write_text(json.dumps({"exercise": exercise, "cases": manifest}))


def read_inputs(record_dir, exercise: str) -> list[tuple[str, tuple]]:
    """``[(case_name, args), ...]`` as written by :func:`write_inputs` (kernel side)."""
    folder = _inputs_dir(record_dir, exercise)
    manifest = json.loads((folder / "cases.json").read_text())
    cases = []
    for entry in manifest["cases"]:
        args = []
        for arg in entry["args"]:
            if "npy" in arg:
                args.append(_load(folder / arg["npy"], allow_pickle=False))
            else:
                args.append(arg["value"])
        cases.append((entry["case"], tuple(args)))
    return cases


# --------------------------------------------------------------------------- kernel -> grader: results


def _encode(value, folder: Path, stem: str, depth: int) -> dict:
    if type(value) is np.ndarray and value.dtype.kind in NUMERIC_KINDS:
        if value.nbytes > MAX_ARRAY_BYTES:
            return {"kind": "opaque", "description": f"{describe(value)}, too large to record", "type": "ndarray"}
        with open(folder / f"{stem}.npy", "wb") as handle:
            _save(handle, value, allow_pickle=False)
        return {"kind": "array"}
    if isinstance(value, (tuple, list)) and depth < MAX_DEPTH and len(value) <= MAX_ITEMS:
        items = [_encode(item, folder, f"{stem}.{index}", depth + 1) for index, item in enumerate(value)]
        return {"kind": "sequence", "type": "tuple" if isinstance(value, tuple) else "list", "items": items}
    return {"kind": "opaque", "description": describe(value), "type": type(value).__name__}


def _write_json(path: Path, record: dict) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record))
    os.replace(partial, path)  # the grader sees a whole record or none


def write_result(record_dir, exercise: str, case_name: str, value=None, error: BaseException | None = None) -> None:
    """Record what the learner's function did on one case: returned ``value``, or raised ``error`` (kernel side)."""
    folder = _outputs_dir(record_dir, exercise)
    folder.mkdir(parents=True, exist_ok=True)
    if error is not None:
        raised = Raised.from_exception(error)
        record = {"status": "raised", "type": raised.type_name, "message": raised.message}
    else:
        try:
            record = {"status": "returned", "value": _encode(value, folder, case_name, 0)}
        except Exception as err:  # e.g. the disk quota of the sandbox
            record = {
                "status": "returned",
                "value": {
                    "kind": "opaque",
                    "description": f"a result that could not be recorded ({err!r})"[:300],
                    "type": type(value).__name__,
                },
            }
    _write_json(folder / f"{case_name}.json", record)


def open_regular(path: Path, limit: float, name: str | None = None):
    """Open ``path`` for reading if it is a regular file (not a link) of at most ``limit`` bytes:
    ``(binary handle, size)``; else a :class:`RecordError` that calls the file ``name`` (default: its file name).

    Opened without following a link and without blocking (a named pipe or a
    device would otherwise hang the grader), then checked with ``fstat``.
    """
    name = path.name if name is None else name
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise RecordError(f"{name} is missing") from None
    except OSError as err:
        raise RecordError(f"{name} cannot be opened ({err.strerror})") from None
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        os.close(descriptor)
        raise RecordError(f"{name} is not a regular file")
    if info.st_size > limit:
        os.close(descriptor)
        raise RecordError(f"{name} is {info.st_size} bytes, more than the {limit} allowed")
    return os.fdopen(descriptor, "rb"), info.st_size


def load_array(path) -> np.ndarray:
    """Load a ``.npy`` file written by the kernel, checking it before allocating anything (grader side)."""
    path = Path(path)
    handle, size = open_regular(path, MAX_ARRAY_BYTES + 4096)
    with handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise RecordError(f"{path.name}: unsupported .npy version {version}")
        except RecordError:
            raise
        except Exception as err:
            raise RecordError(f"{path.name} is not a valid .npy file ({err})") from None
        if dtype.hasobject or dtype.kind not in NUMERIC_KINDS or dtype.fields is not None:
            raise RecordError(f"{path.name} holds dtype {dtype}; only numbers and booleans are accepted")
        needed = math.prod(shape) * dtype.itemsize
        if needed > size:
            raise RecordError(f"{path.name} declares {needed} bytes of data but the file has {size}")
        handle.seek(0)
        try:
            return np.lib.format.read_array(handle, allow_pickle=False)
        except Exception as err:
            raise RecordError(f"{path.name} cannot be read ({err})") from None


def _decode(node, folder: Path, stem: str, depth: int):
    if not isinstance(node, dict):
        raise RecordError("damaged record")
    kind = node.get("kind")
    if kind == "array":
        return load_array(folder / f"{stem}.npy")
    if kind == "sequence" and depth < MAX_DEPTH:
        items = node.get("items")
        if not isinstance(items, list) or len(items) > MAX_ITEMS or node.get("type") not in ("tuple", "list"):
            raise RecordError("damaged record")
        decoded = [_decode(item, folder, f"{stem}.{index}", depth + 1) for index, item in enumerate(items)]
        return tuple(decoded) if node["type"] == "tuple" else decoded
    if kind == "opaque" and isinstance(node.get("description"), str):
        return Opaque(node["description"][:300], str(node.get("type", ""))[:100])
    raise RecordError("damaged record")


def read_result(record_dir, exercise: str, case_name: str):
    """What the kernel recorded for one case (grader side).

    Returns None when nothing was recorded, a :class:`Raised` when the
    function raised, else the returned value (arrays, tuples or lists of
    them, :class:`Opaque` descriptions). Raises :class:`RecordError` for a
    damaged or oversized record.
    """
    folder = _outputs_dir(record_dir, exercise)
    for parent in (Path(record_dir), folder.parent, folder):  # real folders, not links to somewhere else
        if os.path.lexists(parent) and not stat.S_ISDIR(os.lstat(parent).st_mode):
            raise RecordError(f"{parent.name} is not a folder")
    path = folder / f"{case_name}.json"
    if not os.path.lexists(path):
        return None
    handle, _ = open_regular(path, MAX_JSON_BYTES)
    with handle:
        try:
            record = json.loads(handle.read().decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise RecordError(f"{path.name} is not valid JSON") from None
    if not isinstance(record, dict):
        raise RecordError("damaged record")
    if record.get("status") == "raised":
        type_name, message = record.get("type"), record.get("message")
        if not isinstance(type_name, str) or not isinstance(message, str):
            raise RecordError("damaged record")
        return Raised(type_name[:100], message[:300])
    if record.get("status") == "returned":
        return _decode(record.get("value"), folder, case_name, 0)
    raise RecordError("damaged record")


def set_aside(record_dir, exercise: str) -> None:
    """Move an exercise's outputs folder out of the way (grader side): records written before its test cell
    started, or after it finished, are never read. The folder is renamed, never followed."""
    folder = _outputs_dir(record_dir, exercise)
    if os.path.islink(folder.parent) or (os.path.lexists(folder.parent) and not os.path.isdir(folder.parent)):
        os.unlink(folder.parent)  # a link planted where the outputs folder belongs: never followed
        return
    if os.path.lexists(folder):
        stale = folder.parent / f".stale-{exercise}-{os.urandom(4).hex()}"
        try:
            os.rename(folder, stale)
        except OSError:
            if os.path.islink(folder) or not os.path.isdir(folder):
                os.unlink(folder)
