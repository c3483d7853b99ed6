"""Read back what an offline W&B run wrote: the records of its `.wandb` file, as W&B's own protobuf messages.

The file is W&B's LevelDB-style log: a 7-byte header (":W&B", a magic number, a version), then 32 KiB blocks of
chunks, each with a 7-byte header (CRC32, length, kind: 1 full, 2 first, 3 middle, 4 last); a record is one
full chunk or a first, middles and a last. A block's tail shorter than a header is padding.
"""

import struct
from pathlib import Path

BLOCK, HEADER = 32 * 1024, 7


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data, position, pending, out = Path(path).read_bytes(), HEADER, b"", []
    assert data[:4] == b":W&B", f"{path} is not a W&B log"
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < HEADER:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        if kind == 0:  # zero padding to the block's end
            position += left
            continue
        pending += data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def artifacts(path: Path) -> dict[str, dict]:
    """Each artifact the run logged: name -> {"type", "files": {path: digest}} (W&B's digest: base64 MD5)."""
    return {r.artifact.name: {"type": r.artifact.type, "files": {e.path: e.digest for e in r.artifact.manifest.contents}}
            for r in records(path) if r.WhichOneof("record_type") == "artifact"}


def run_and_history(path: Path) -> tuple[tuple[str, str], dict]:
    """(project, job_type) of the run, and every value its history logged, by key (`a/b` for nested keys), as JSON."""
    import json

    run, history = None, {}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run = (r.run.project, r.run.job_type)
        elif kind == "history":
            history.update({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item})
    return run, history
