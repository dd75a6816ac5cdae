"""The shared arrays travel as one packed array: the same tensors come out, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from helpers import make_config

from fedper.models import build_model
from fedper.packing import PACKED, PackingError, layout_of, pack, unpack, unpack_numpy


def test_a_model_state_packs_into_one_array_and_unpacks_bit_for_bit():
    model = build_model(make_config(["model.width_multiplier=0.25"]), seed=3)
    state = model.state_dict()
    record = pack(state)
    assert list(record) == [PACKED] and len(record) == 1  # one object, whatever the model
    out = unpack(record)
    assert list(out) == list(state)  # in the order given
    for key, tensor in state.items():
        assert out[key].dtype == tensor.dtype and out[key].shape == tensor.shape, key
        assert torch.equal(out[key], tensor), key
    assert out["base.0.1.num_batches_tracked"].shape == ()  # a 0-d counter stays 0-d


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float16,
        torch.float32,
        torch.float64,
        torch.int8,
        torch.int32,
        torch.int64,
        torch.uint8,
        torch.bool,
    ],  # fmt: skip
)
def test_every_dtype_and_odd_sizes_survive_and_stay_aligned(dtype):
    generator = torch.Generator().manual_seed(0)
    state = {
        "odd": (torch.randn(3, 5, generator=generator) * 50).to(dtype),
        "one": torch.ones((), dtype=dtype),
        "empty": torch.zeros(0, 4, dtype=dtype),
        "after": (torch.randn(7, generator=generator) * 50).to(dtype),
    }
    arrays = unpack_numpy(pack(state))
    for key, tensor in state.items():
        assert arrays[key].ctypes.data % 8 == 0, key  # read in place, aligned
        assert (
            np.array_equal(arrays[key], tensor.numpy())
            and arrays[key].dtype == tensor.numpy().dtype
        )


def test_nothing_to_share_is_an_empty_record():
    assert len(pack({})) == 0
    assert unpack(ArrayRecord()) == {} and layout_of(ArrayRecord()) == b""


def test_the_layout_names_keys_shapes_and_dtypes_in_order():
    a = pack({"w": torch.zeros(2, 3), "n": torch.tensor(4)})
    assert layout_of(a) == layout_of(pack({"w": torch.ones(2, 3), "n": torch.tensor(9)}))
    assert layout_of(a) != layout_of(pack({"w": torch.zeros(3, 2), "n": torch.tensor(4)}))
    assert layout_of(a) != layout_of(pack({"w": torch.zeros(2, 3).double(), "n": torch.tensor(4)}))
    assert layout_of(a) != layout_of(pack({"n": torch.tensor(4), "w": torch.zeros(2, 3)}))


def raw(data: bytes) -> ArrayRecord:
    return ArrayRecord({PACKED: Array(np.frombuffer(data, dtype=np.uint8).copy())})


@pytest.mark.parametrize(
    "record, message",
    [
        (ArrayRecord({"w": Array(np.zeros(3, np.float32))}), "instead of one packed array"),
        (ArrayRecord({PACKED: Array(np.zeros(3, np.float32))}), "not uint8 bytes"),
        (raw((10**6).to_bytes(8, "little") + b"[]"), "a layout of 1000000 bytes"),
        (raw((7).to_bytes(8, "little") + b"not json" + bytes(8)), "layout cannot be read"),
    ],
)
def test_a_damaged_packed_array_is_an_error_naming_what_is_wrong(record, message):
    with pytest.raises(PackingError, match=message):
        unpack_numpy(record)


def test_a_packed_array_shorter_or_longer_than_its_layout_is_refused():
    data = pack({"w": torch.zeros(4)})[PACKED].numpy().tobytes()
    with pytest.raises(PackingError, match="too few for its layout"):
        unpack_numpy(raw(data[:-8]))
    with pytest.raises(PackingError, match="where its layout takes"):
        unpack_numpy(raw(data + bytes(8)))
