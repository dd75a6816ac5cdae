"""fedper's state file format, for heads and the server checkpoint alike.

A state file is a `torch.save` dict with `format`, `kind` and a SHA-256 over every tensor and
every other value in it, read with `torch.load(weights_only=True)`, which refuses to run
pickled code; any damage is one `StateFileError` saying what the user can do.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from pathlib import Path

import torch

from fedper.atomic import NotOwnFile, open_own, write_atomic
from fedper.errors import StateFileError

FORMAT = 3  # 3: the digest covers every value of the record, not only its tensors


def tensors_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes: equal digests mean equal tensors."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def record_digest(payload: Mapping) -> str:
    """SHA-256 over every tensor (`tensors_digest`) and every other value of a record."""
    others = json.dumps(without_tensors(payload), sort_keys=True)
    return hashlib.sha256(
        f"{tensors_digest(dict(flat_tensors(payload)))}|{others}".encode()
    ).hexdigest()


def without_tensors(payload: Mapping) -> dict:
    out = {}
    for key, value in payload.items():
        if isinstance(value, Mapping):
            out[str(key)] = without_tensors(value)
        elif not isinstance(value, torch.Tensor):
            out[str(key)] = value
    return out


def encode_tensors(kind: str, payload: dict) -> bytes:
    """A fedper state file's bytes: `payload` plus format, kind and its digest.

    Serialized in memory first, so that a full disk surfaces as an OSError of the write, not
    as an error from inside torch's zip writer.
    """
    record = {"format": FORMAT, "kind": kind, "digest": record_digest(payload), **payload}
    buffer = io.BytesIO()
    torch.save(record, buffer)
    return buffer.getvalue()


def save_tensors(path: str | Path, kind: str, payload: dict) -> None:
    data = encode_tensors(kind, payload)
    write_atomic(path, lambda handle: handle.write(data))


def load_tensors(path: str | Path, kind: str, way_out: str) -> dict:
    """Read a state file written by `save_tensors`; any damage is one StateFileError."""
    path = Path(path)
    try:
        with open_own(path) as handle:
            record = torch.load(handle, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StateFileError(f"{path} is missing: {way_out}") from None
    except NotOwnFile as error:
        raise StateFileError(f"{error}: fedper never reads through a link; {way_out}") from None
    except Exception as error:
        raise StateFileError(f"{path} is damaged ({type(error).__name__}): {way_out}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("kind") != kind:
        raise StateFileError(f"{path} is not a fedper {kind} file (format {FORMAT}): {way_out}")
    payload = {k: v for k, v in record.items() if k not in ("format", "kind", "digest")}
    try:
        intact = record_digest(payload) == record.get("digest")
    except (TypeError, ValueError):
        intact = False
    if not intact:
        raise StateFileError(f"{path} is damaged (its checksum does not match): {way_out}")
    return record


def flat_tensors(payload: Mapping, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a nested dict, keyed by its path (the digest covers all of them)."""
    out = []
    for key, value in payload.items():
        if isinstance(value, torch.Tensor):
            out.append((f"{prefix}{key}", value))
        elif isinstance(value, Mapping):
            out += flat_tensors(value, f"{prefix}{key}/")
    return out
