"""Read an offline W&B run's transaction log (`run-<id>.wandb`): W&B writes protobuf records in
LevelDB's log format (a 7-byte file header, then 32 KiB blocks of records with 7-byte headers).
Tests use it to check what a run sent to W&B, with W&B's own protobuf classes."""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, parts = HEADER, []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            parts = [chunk]
        elif kind == MIDDLE:
            parts.append(chunk)
        elif kind == LAST:
            parts.append(chunk)
            yield b"".join(parts)


def _complete_records(path: Path, timeout: float = 60.0) -> list[bytes]:
    """The records once the log holds the run's exit record: `run.finish()` can return before wandb-core
    has flushed an offline run's log (seen on a loaded 2-core machine: a 7-byte file, header only)."""
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + timeout
    while True:
        records = list(raw_records(path))
        kinds = []
        for data in records:
            record = pb.Record()
            record.ParseFromString(data)
            kinds.append(record.WhichOneof("record_type"))
        if "exit" in kinds or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def read_run(path: Path) -> dict:
    """{"run_id", "history": [{key: value}], "config": {key: value}, "summary": {key: value}}."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = {"run_id": None, "history": [], "config": {}, "summary": {}}
    for data in _complete_records(path):
        record = pb.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run_id"] = record.run.run_id
            out["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            out["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
    return out
