"""Reading back what the experiment trackers wrote: TensorBoard event files, an MLflow store,
W&B's offline run files (their records are W&B's own protobuf messages)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

W_AND_B_HEADER = b":W&B\xe1\xbe\x00"  # identifier, magic 0xBEE1, version 0
BLOCK = 32 * 1024  # records never straddle a block header; a block's tail under 7 bytes is padding
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list:
    """Every record of a `.wandb` file, as `wandb_internal_pb2.Record` messages."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data.startswith(W_AND_B_HEADER), f"{path} is not a W&B run file"
    records, pending, offset = [], b"", len(W_AND_B_HEADER)
    while offset + 7 <= len(data):
        if BLOCK - offset % BLOCK < 7:  # padding to the next block
            offset += BLOCK - offset % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        payload = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_history(folder: Path) -> tuple[list[str], dict[int, dict]]:
    """The run ids and every logged step's values of the offline runs below `folder`."""
    run_ids, steps = [], {}
    for path in sorted(folder.rglob("run-*.wandb")):
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run_ids.append(record.run.run_id)
            elif kind == "history":
                items = {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
                steps[int(items["_step"])] = items
    return run_ids, steps


def tensorboard_scalars(folder: Path):
    """An EventAccumulator with everything loaded (scalars, histograms, hparams)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events
