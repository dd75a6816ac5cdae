"""The shared arrays as they travel: one packed array per message, whatever the model.

Flower sends every array of an ArrayRecord as objects of their own (on the Deployment Engine
each one is a request on every hop), so a base of 150 tensors would cost 150 of them, both
ways. A message carries one uint8 array instead: a little-endian length, the layout (key,
dtype and shape of every tensor, JSON), then each tensor's bytes, every part starting on an
8-byte boundary so that a tensor is read in place. The bytes are the tensors' own: unpacking
gives back the same values, bit for bit.

A reply's layout must be the same bytes as the layout of the message it answers: that one
comparison checks that a client sent back the same keys, shapes and dtypes, in order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

PACKED = "packed"  # the one key of a packed ArrayRecord
ALIGN = 8
LENGTH_BYTES = 8
# what a shared tensor may be (as numpy names them): floats, integers and flags
DTYPES = frozenset(
    np.dtype(name).str
    for name in (
        "float16",
        "float32",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "bool",
    )  # fmt: skip
)


class PackingError(ValueError):
    """A packed array that cannot be read: its layout or its length is wrong."""


def padded(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def pack(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """The tensors as one packed array (an empty record for no tensors), in the given order."""
    if not state:
        return ArrayRecord()
    arrays = {key: tensor.detach().cpu().contiguous().numpy() for key, tensor in state.items()}
    layout = json.dumps([[key, a.dtype.str, list(a.shape)] for key, a in arrays.items()]).encode()
    offset = LENGTH_BYTES + padded(len(layout))
    buffer = np.zeros(offset + sum(padded(a.nbytes) for a in arrays.values()), dtype=np.uint8)
    buffer[:LENGTH_BYTES] = np.frombuffer(len(layout).to_bytes(LENGTH_BYTES, "little"), np.uint8)
    buffer[LENGTH_BYTES : LENGTH_BYTES + len(layout)] = np.frombuffer(layout, np.uint8)
    for array in arrays.values():
        buffer[offset : offset + array.nbytes] = array.reshape(-1).view(np.uint8)
        offset += padded(array.nbytes)
    return ArrayRecord({PACKED: Array(buffer)})


def packed_buffer(record: ArrayRecord) -> np.ndarray | None:
    """The packed array of a record; None for an empty record."""
    if not len(record):
        return None
    if list(record) != [PACKED]:
        raise PackingError(f"arrays {list(record)[:3]} instead of one packed array")
    buffer = record[PACKED].numpy()
    if buffer.dtype != np.uint8 or buffer.ndim != 1 or len(buffer) < LENGTH_BYTES:
        raise PackingError(f"a packed array of {buffer.dtype} {buffer.shape}, not uint8 bytes")
    return buffer


def layout_bytes(buffer: np.ndarray) -> bytes:
    """The layout part of a packed array, as it was written."""
    length = int.from_bytes(buffer[:LENGTH_BYTES].tobytes(), "little")
    if length > len(buffer) - LENGTH_BYTES:
        raise PackingError(f"a layout of {length} bytes in a packed array of {len(buffer)}")
    return buffer[LENGTH_BYTES : LENGTH_BYTES + length].tobytes()


def layout_of(record: ArrayRecord) -> bytes:
    """The layout of a record's packed array; b"" for no arrays."""
    buffer = packed_buffer(record)
    return b"" if buffer is None else layout_bytes(buffer)


def unpack_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The tensors of a packed record as numpy arrays that share its buffer, in packed order."""
    buffer = packed_buffer(record)
    if buffer is None:
        return {}
    layout = layout_bytes(buffer)
    try:
        entries = [(str(key), np.dtype(dtype), tuple(int(n) for n in shape))
                   for key, dtype, shape in json.loads(layout)]  # fmt: skip
    except (ValueError, TypeError) as error:
        raise PackingError(f"its layout cannot be read ({error})") from None
    offset, out = LENGTH_BYTES + padded(len(layout)), {}
    for key, dtype, shape in entries:
        if dtype.str not in DTYPES or min(shape, default=0) < 0:
            raise PackingError(f"{key} has dtype {dtype} and shape {shape}")
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if offset + size > len(buffer):
            raise PackingError(f"{len(buffer)} bytes, too few for its layout")
        out[key] = buffer[offset : offset + size].view(dtype).reshape(shape)
        offset += padded(size)
    if offset != len(buffer):
        raise PackingError(f"{len(buffer)} bytes where its layout takes {offset}")
    return out


def unpack(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """The tensors of a packed record, in packed order."""
    return {key: torch.from_numpy(array) for key, array in unpack_numpy(record).items()}
