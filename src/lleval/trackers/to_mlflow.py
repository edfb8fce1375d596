"""MLflow: a run of the experiment ``$MLFLOW_EXPERIMENT_NAME`` (else ``lleval``) on the server
or store ``$MLFLOW_TRACKING_URI`` names, else in a SQLite store ``LOG_DIR/mlflow.db`` (a real
database that needs no server; ``mlflow ui --backend-store-uri sqlite:///LOG_DIR/mlflow.db``
shows it), its artifacts in ``LOG_DIR/mlartifacts``. When the process already has an
active run (a training script's ``mlflow.start_run``), lleval logs into it, its settings
as ``lleval.NAME`` parameters (MLflow refuses to change a parameter the script logged),
and leaves it open.

A server that does not answer is retried twice (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, when
unset), not MLflow's default seven times with a growing wait (two minutes), and
MLflow's own log lines (creating the database tables) are kept off stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from lleval.trackers.points import Point

BATCH = 1000  # MLflow's limit of metrics (and of parameters: 100) in one log_batch
QUIET_LOGGERS = ("mlflow", "alembic")
DEFAULT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


@contextlib.contextmanager
def _quiet_and_brief() -> Iterator[None]:
    """MLflow's INFO lines off stderr, and a server that does not answer given up on in seconds;
    both as they were afterwards."""
    added = [name for name in DEFAULT_RETRIES if name not in os.environ]
    os.environ.update({name: DEFAULT_RETRIES[name] for name in added})
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


class MlflowRun:
    """A run of an MLflow tracking store, through its client (no global state of lleval's)."""

    def __init__(self, client: Any, run_id: str, owned: bool) -> None:
        self.client, self.run_id, self.owned = client, run_id, owned

    def params(self, values: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        prefix = "" if self.owned else "lleval."
        items = [Param(f"{prefix}{k}", str(v)) for k, v in values.items()]
        with _quiet_and_brief():
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i : i + 100])

    def metrics(self, point: Point) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        items = [Metric(k, v, stamp, point.step or 0) for k, v in point.metrics.items()]
        with _quiet_and_brief():
            for i in range(0, len(items), BATCH):
                self.client.log_batch(self.run_id, metrics=items[i : i + BATCH])

    def artifact(self, path: Path) -> None:
        with _quiet_and_brief():
            self.client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        if self.owned:
            with _quiet_and_brief():
                self.client.set_terminated(self.run_id)


def default_uri(log_dir: Path) -> str:
    """The SQLite store lleval uses when ``MLFLOW_TRACKING_URI`` is unset."""
    return f"sqlite:///{(log_dir / 'mlflow.db').resolve()}"


def open_run(run_name: str, log_dir: Path) -> MlflowRun:
    """The process's active run, else a new run named ``run_name`` (see the module's docstring)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    with _quiet_and_brief():
        active = mlflow.active_run()
        if active is not None:
            return MlflowRun(MlflowClient(), active.info.run_id, owned=False)
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        location = None
        if not uri:
            log_dir.mkdir(parents=True, exist_ok=True)
            uri, location = default_uri(log_dir), (log_dir / "mlartifacts").resolve().as_uri()
        client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "lleval"
        experiment = client.get_experiment_by_name(name)
        found = experiment.experiment_id if experiment is not None else client.create_experiment(
            name, artifact_location=location)
        run = client.create_run(found, run_name=run_name)
        return MlflowRun(client, run.info.run_id, owned=True)
