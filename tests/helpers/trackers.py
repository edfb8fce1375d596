"""Reading what lleval logged back, each tracker through its own library: MLflow's client on
the SQLite store, TensorBoard's event reader, and W&B's offline run file read with W&B's own
record protobufs (the file is a LevelDB-style log of them; this W&B version ships no Python
reader, so the framing is undone here: 7-byte header, 32 KiB blocks, each record chunk a
CRC32C, a length and a type)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterator

WANDB_BLOCK = 32768
WANDB_HEADER = 7  # ":W&B", magic (2 bytes), version (1 byte)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def mlflow_runs(log_dir: Path, uri: str | None = None) -> tuple[Any, list[Any]]:
    """MLflow's client on the store lleval used, and the runs of experiment ``lleval``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri or f"sqlite:///{(log_dir / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("lleval")
    assert experiment is not None
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def mlflow_metrics(client: Any, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Each metric's (step, value) history."""
    run = client.get_run(run_id)
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            for key in run.data.metrics}


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in ``folder`` (tensor summaries, float64), by tag."""
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator
    from tensorboard.util import tensor_util

    events = EventAccumulator(str(folder), size_guidance={TENSORS: 0})
    events.Reload()
    found = {}
    for tag in events.Tags()["tensors"]:
        values = [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]
        if all(v.dtype.kind == "f" and v.ndim == 0 for _, v in values):
            found[tag] = [(step, float(v)) for step, v in values]
    return found


def tensorboard_texts(folder: Path) -> dict[str, str]:
    """The text summaries (the settings' table), by tag."""
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator
    from tensorboard.util import tensor_util

    events = EventAccumulator(str(folder), size_guidance={TENSORS: 0})
    events.Reload()
    return {tag: tensor_util.make_ndarray(events.Tensors(tag)[0].tensor_proto).item().decode()
            for tag in events.Tags()["tensors"]
            if tensor_util.make_ndarray(events.Tensors(tag)[0].tensor_proto).dtype.kind in "OSU"}


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of a W&B run file, as W&B's protobuf ``Record``s."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = WANDB_HEADER, b""
    while pos + 7 <= len(data):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_run(log_dir: Path) -> dict[str, Any]:
    """The one offline run under ``log_dir``: its history rows (with ``_step``), config and
    display name, and its run folder."""
    (run_file,) = sorted(log_dir.glob("wandb/offline-run-*/run-*.wandb"))
    history, config, name = [], {}, None
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "run":
            name = record.run.display_name
    return {"history": history, "config": config, "name": name, "folder": run_file.parent}
