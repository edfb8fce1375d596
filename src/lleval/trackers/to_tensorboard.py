"""TensorBoard: event files in ``LOG_DIR/RUN``, one folder per run, read by ``tensorboard --logdir LOG_DIR``.

Written with TensorBoard's own event writer (no TensorFlow, no torch): each metric a
scalar summary holding a float64 tensor, so the file keeps the report's number exactly
(a ``simple_value`` would round it to float32); the settings through the HParams
plugin and as a text table; the report and the page copied into the run's folder.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Mapping

from lleval.trackers.points import Point


class TensorBoardRun:
    """One run: an event file in a folder of its own."""

    def __init__(self, folder: Path) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._writer = EventFileWriter(str(folder))

    def _write(self, summary: Any, step: int | None) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self._writer.add_event(Event(wall_time=time.time(), step=step or 0, summary=summary))

    def params(self, values: Mapping[str, Any]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams import summary_v2
        from tensorboard.plugins.text import metadata as text_metadata
        from tensorboard.util import tensor_util

        self._write(summary_v2.hparams_pb(dict(values), trial_id=self.folder.name), None)
        table = "| setting | value |\n| --- | --- |\n" + "".join(f"| {k} | {v} |\n" for k, v in values.items())
        text = Summary.Value(tag="settings", tensor=tensor_util.make_tensor_proto(table),
                             metadata=text_metadata.create_summary_metadata(display_name="settings", description=""))
        self._write(Summary(value=[text]), None)
        self._writer.flush()

    def metrics(self, point: Point) -> None:
        import numpy as np
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.scalar import metadata
        from tensorboard.util import tensor_util

        values = [Summary.Value(tag=name, tensor=tensor_util.make_tensor_proto(np.float64(value)),
                                metadata=metadata.create_summary_metadata(display_name=name, description=""))
                  for name, value in point.metrics.items()]
        self._write(Summary(value=values), point.step)
        self._writer.flush()

    def artifact(self, path: Path) -> None:
        shutil.copyfile(path, self.folder / path.name)

    def close(self) -> None:
        self._writer.close()


def open_run(run_name: str, log_dir: Path) -> TensorBoardRun:
    """A run in ``log_dir/RUN_NAME-TIME`` (a folder of its own, so runs never share a curve)."""
    from lleval.trackers import run_label

    return TensorBoardRun(log_dir / run_label(run_name))
