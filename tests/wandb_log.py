"""Read an offline W&B run's transaction log (`run-<id>.wandb`): a LevelDB-style log of
protobuf `Record`s in 32 KiB blocks. Only for tests: it checks what W&B itself recorded."""

from __future__ import annotations

import struct
from pathlib import Path

BLOCK = 32768
HEADER = struct.Struct("<4sHB")   # ":W&B", magic 0xBEE1, version
RECORD = struct.Struct("<IHB")    # crc32, length, type (1 full, 2 first, 3 middle, 4 last)


def records(path: str | Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, _version = HEADER.unpack_from(data, 0)
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B transaction log"
    pos, out, parts = HEADER.size, [], []
    while pos + RECORD.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < RECORD.size:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = RECORD.unpack_from(data, pos)
        if kind == 0 and length == 0:
            break
        pos += RECORD.size
        parts.append(data[pos:pos + length])
        pos += length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(b"".join(parts))
            out.append(rec)
            parts = []
    return out


def summary(run_dir: str | Path) -> dict:
    """`{"name", "group", "job_type", "tags", "exit_code"}` of an offline run folder."""
    log = next(Path(run_dir).glob("run-*.wandb"))
    info: dict = {"exit_code": None}
    for rec in records(log):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            info.update(name=rec.run.display_name, group=rec.run.run_group,
                        job_type=rec.run.job_type, tags=list(rec.run.tags))
        elif kind == "exit":
            info["exit_code"] = rec.exit.exit_code
    return info
