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


def history_keys(run_dir: str | Path) -> set[str]:
    """Every key the run logged with `wandb.log` (its history rows), as W&B recorded it."""
    log = next(Path(run_dir).glob("run-*.wandb"))
    keys: set[str] = set()
    for rec in records(log):
        if rec.WhichOneof("record_type") == "history":
            keys.update(item.key or "/".join(item.nested_key) for item in rec.history.item)
    return keys


def final_summary(run_dir: str | Path) -> dict:
    """The run's summary as W&B left it: every summary update and removal applied in order
    (`{key: value_json}`; a nested key joined by '.', as W&B shows it)."""
    log = next(Path(run_dir).glob("run-*.wandb"))
    out: dict[str, str] = {}
    for rec in records(log):
        if rec.WhichOneof("record_type") == "summary":
            for item in rec.summary.update:
                out[item.key or ".".join(item.nested_key)] = item.value_json
            for item in rec.summary.remove:
                out.pop(item.key or ".".join(item.nested_key), None)
    return {k: v for k, v in out.items() if not k.startswith("_")}
