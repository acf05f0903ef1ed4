"""The MLflow sink (``main.py --mlflow [URI]``): one MLflow run per training run, its options as parameters and
each epoch's log.jsonl figures as metrics at that epoch (the last epoch's ``final`` entry as ``final_*``); a
sweep's runs are children of one parent run. The default store is a local SQLite file (``mlflow.db`` in the
working folder, the artifacts in ``mlartifacts/`` beside it: MLflow's own local backend, offline; MLflow 3
refuses its older ./mlruns file store unless MLFLOW_ALLOW_FILE_STORE=true). The run folder's ``mlflow.json``
keeps the MLflow run id, so a resumed run goes on logging into the same MLflow run."""
from __future__ import annotations

import json
import logging
import os
import pathlib
import time
from typing import Dict, List, Optional

from pipeline.errors import ConfigError
from utils.output.fileio import write_json_atomic
from utils.runs.loggers import Sink

INSTALL = "pip install mlflow"
LOCAL = "local"                 # --mlflow without a URI
ARTIFACTS = "mlartifacts"         # beside a local SQLite store: its experiments' artifacts
ID_FILE = "mlflow.json"          # in a run folder (and a sweep folder): the store and the MLflow run id
PARAM_LIMIT = 500                # characters of a parameter's value kept (MLflow's own limit is 6000)
NOT_PARAMS = {"class_names", "record_names", "config_changes"}


def resolve_uri(value: str) -> str:
    """--mlflow's value as a store URI: 'local' is the SQLite file mlflow.db in the working folder (absolute,
    so a run resumed from elsewhere finds it); a plain path to a .db file likewise."""
    if value == LOCAL:
        value = "mlflow.db"
    if "://" not in value and not value.startswith("file:"):
        return "sqlite:///" + os.path.abspath(value)
    return value


def client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError(f"--mlflow needs the mlflow package: {INSTALL}") from None
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # (its table creation notes are not the run's output)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


def artifact_root(uri: str) -> Optional[str]:
    """Where a new experiment in a local SQLite store keeps its artifacts: the folder ARTIFACTS beside the
    database file (MLflow's own default is ./mlruns in whatever folder the run happens to start from)."""
    if not uri.startswith("sqlite:"):
        return None  # a tracking server or another database decides for itself
    from sqlalchemy.engine import make_url  # (MLflow's own database layer: the file as SQLite will open it)
    database = make_url(uri).database
    if not database or database == ":memory:":
        return None
    return pathlib.Path(os.path.abspath(os.path.dirname(database)), ARTIFACTS).as_uri()


def experiment_id(c, name: str) -> str:
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return c.create_experiment(name, artifact_location=artifact_root(c.tracking_uri))


def start_run(uri: str, experiment: str, name: str, folder: str, tags: Dict[str, str]) -> str:
    """The MLflow run of ``folder`` (its ID_FILE's, when it names one in this store), else a new one."""
    c = client(uri)
    path = os.path.join(folder, ID_FILE)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                known = json.load(f)
            if known.get("tracking_uri") == uri:
                c.get_run(known["run_id"])
                return known["run_id"]
        except Exception:  # unreadable, or a run this store does not have: start another
            pass
    run = c.create_run(experiment_id(c, experiment), run_name=name, tags=tags)
    write_json_atomic({"tracking_uri": uri, "run_id": run.info.run_id, "experiment": experiment}, path)
    return run.info.run_id


def _params(record: dict):
    from mlflow.entities import Param
    out = []
    for k, v in record.items():
        if k in NOT_PARAMS or v is None:
            continue
        text = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
        out.append(Param(k, text[:PARAM_LIMIT]))
    return out


def _metrics(entry: dict, step: int) -> list:
    from mlflow.entities import Metric
    now = int(time.time() * 1000)
    values = {k: v for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    final = entry.get("final") or {}
    values.update({f"final_{k}": v for k, v in final.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return [Metric(k, float(v), now, step) for k, v in values.items()]


class MLflowSink(Sink):
    """log.jsonl's epochs into one MLflow run (a child of ``parent`` when a sweep started it)."""

    def __init__(self, uri: str, experiment: str, folder: str, record: dict, parent: Optional[str] = None):
        self.client = client(uri)
        tags = {"csra.run_folder": os.path.abspath(folder)}
        if record.get("run_id"):
            tags["csra.run_id"] = str(record["run_id"])
        if parent:
            tags["mlflow.parentRunId"] = parent
        self.run_id = start_run(uri, experiment, os.path.basename(os.path.normpath(folder)), folder, tags)
        logged = set(self.client.get_run(self.run_id).data.params)
        params = [p for p in _params(record) if p.key not in logged]  # (a parameter is logged once per run:
        for start in range(0, len(params), 100):                      # a resume's changes go into a tag)
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        if record.get("resume_changes"):
            self.client.set_tag(self.run_id, "csra.resume_changes", "; ".join(record["resume_changes"]))
        self.finished = False

    def epoch(self, entry: dict) -> None:
        metrics = _metrics(entry, int(entry["epoch"]))
        for start in range(0, len(metrics), 500):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 500])
        self.finished = self.finished or "final" in entry

    def close(self) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if self.finished else "KILLED")


def sweep_parent(uri: str, experiment: str, folder: str, params: Dict[str, str]) -> str:
    """A sweep's parent run (kept in the sweep folder's ID_FILE, so running the sweep again reuses it)."""
    run_id = start_run(uri, experiment, os.path.basename(os.path.normpath(folder)), folder,
                       {"csra.sweep_folder": os.path.abspath(folder)})
    c = client(uri)
    logged = set(c.get_run(run_id).data.params)
    from mlflow.entities import Param
    c.log_batch(run_id, params=[Param(k, v[:PARAM_LIMIT]) for k, v in params.items() if k not in logged])
    return run_id


def log_sweep_results(uri: str, run_id: str, files: List[str]) -> None:
    c = client(uri)
    for f in files:
        c.log_artifact(run_id, f)
    c.set_terminated(run_id, "FINISHED")
