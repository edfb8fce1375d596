"""Weights & Biases: a run of the project ``$WANDB_PROJECT`` (else ``lleval``), or the run the
process already has open (a training script's ``wandb.init``), which lleval then leaves open.

lleval passes no credentials: W&B reads its own (``WANDB_API_KEY``, ``wandb login``); with none,
the run is refused (one line) rather than W&B's interactive prompt blocking the command, and
``WANDB_MODE=offline`` keeps the run on disk for a later ``wandb sync``. Runs lleval opens
are silent (no console capture, no banner on stdout) and live in ``$WANDB_DIR``, else
``--log-dir``; the report and the page are saved as files of the run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from lleval.errors import OutputError
from lleval.trackers.points import Point


class WandbRun:
    """A W&B run: lleval's own, or the process's (``owned`` false: settings under ``lleval``)."""

    def __init__(self, run: Any, owned: bool) -> None:
        self.run, self.owned = run, owned

    def params(self, values: Mapping[str, Any]) -> None:
        self.run.config.update(dict(values) if self.owned else {"lleval": dict(values)}, allow_val_change=True)

    def metrics(self, point: Point) -> None:
        if point.step is None:
            self.run.log(dict(point.metrics))
        else:
            self.run.log(dict(point.metrics), step=point.step)

    def artifact(self, path: Path) -> None:
        # a copy in the run's own folder: W&B links a file from elsewhere, and the report is a temporary file
        kept = Path(self.run.dir) / path.name
        shutil.copyfile(path, kept)
        self.run.save(str(kept), base_path=str(self.run.dir), policy="now")

    def close(self) -> None:
        if self.owned:
            self.run.finish()


def open_run(run_name: str, log_dir: Path) -> WandbRun:
    """The process's open run, else a new one named ``run_name``."""
    import wandb

    if wandb.run is not None:
        return WandbRun(wandb.run, owned=False)
    offline = os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled")
    if not offline and not wandb.login(prompt=False, verify=False):  # never the interactive prompt
        raise OutputError("W&B has no credentials: set WANDB_API_KEY or run `wandb login` (or WANDB_MODE=offline "
                           "to keep the run on disk)")
    folder = Path(os.environ.get("WANDB_DIR") or log_dir)
    folder.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "lleval", name=run_name, dir=str(folder),
                     reinit="create_new", settings=wandb.Settings(silent=True, console="off"))
    return WandbRun(run, owned=True)
