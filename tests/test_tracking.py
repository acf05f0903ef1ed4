"""--mlflow: what mlflow's own client reads back equals the run's log.jsonl and record; a resumed run goes on in
the same MLflow run; a sweep's runs are children of the sweep's run."""
import json
import os
from urllib.parse import unquote, urlparse

import pytest

import main as train_main
from helpers import run_in_process, tiny_demo, train_argv

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402


def numeric(entry):
    return {k: v for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def test_mlflow_reads_back_the_log_and_the_record(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    run = tmp_path / "run"
    train_main.main(train_argv(files, run, "--mlflow", uri, "--mlflow_experiment", "tests", "--ema", "0.9"))
    train_main.main(train_argv(files, run, "--mlflow", uri, "--mlflow_experiment", "tests", "--ema", "0.9",
                               "--resume", str(run), "--total_epoch", "3"))
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(runs) == 1, "the resumed run logs into the same MLflow run"
    got = runs[0]
    assert got.info.run_id == json.loads((run / "mlflow.json").read_text())["run_id"]
    assert got.info.status == "FINISHED" and got.data.tags["csra.run_folder"] == str(run)
    log = [json.loads(line) for line in open(run / "log.jsonl")]
    assert [e["epoch"] for e in log] == [1, 2, 3]
    for key in set().union(*(numeric(e) for e in log)):
        history = sorted(client.get_metric_history(got.info.run_id, key), key=lambda m: (m.step, m.timestamp))
        last = {m.step: m.value for m in history}  # (a redone epoch is logged again: the last value counts)
        assert last == {e["epoch"]: pytest.approx(e[key], rel=1e-12) for e in log if key in numeric(e)}, key
    final = log[-1]["final"]
    assert got.data.metrics["final_test_mAP"] == pytest.approx(final["test_mAP"], rel=1e-12)
    record = json.loads((run / "args.json").read_text())
    for key in ("lr", "model", "lam", "ema", "seed"):
        assert got.data.params[key] == str(record[key]), key
    assert got.data.params["total_epoch"] == "2" and got.data.tags["csra.resume_changes"] == "--total_epoch 2 -> 3"


def test_a_sweeps_runs_are_children_of_its_run(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    elsewhere = tmp_path / "started_here"
    elsewhere.mkdir()
    r = run_in_process("tools/sweep.py", "--grid", "lam=0.1,0.3", "--out", tmp_path / "sw", "--mlflow", uri, "--",
               "--dataset", "demo", "--train_json", files["train"], "--test_json", files["test"], "--classes",
               files["classes"], "--img_size", "32", "--batch_size", "8", "--num_workers", "0", "--total_epoch", "1",
               cwd=elsewhere)
    assert r.returncode == 0, r.stderr[-2000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("csra").experiment_id])
    parent = next(x for x in runs if x.info.run_name == "sw")
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(x.info.run_name for x in children) == ["lam=0.1,seed=0", "lam=0.3,seed=0"]
    assert parent.data.params["grid"] == "lam=0.1,0.3" and parent.info.status == "FINISHED"
    for child in children:
        log = [json.loads(line) for line in open(tmp_path / "sw" / "runs" / child.info.run_name / "log.jsonl")]
        assert child.data.metrics["final_test_mAP"] == pytest.approx(log[-1]["final"]["test_mAP"], rel=1e-12)
    # the results files went beside the store, not into ./mlruns of the folder the sweep was started from
    assert list(elsewhere.iterdir()) == []
    artifacts = sorted(p.name for p in (tmp_path / "mlartifacts").rglob("*") if p.is_file())
    assert artifacts == sorted(x.path for x in client.list_artifacts(parent.info.run_id)) and "runs.csv" in artifacts


@pytest.mark.parametrize("uri,folder", [
    ("sqlite:////abs/store.db", "/abs"),
    ("sqlite:///rel/store.db", os.path.abspath("rel")),      # relative to the working folder, as SQLite opens it
    ("sqlite:////a%20b/store.db", "/a b"),                   # the URI's escapes decoded, as SQLite's are
    ("sqlite:////abs/store.db?mode=ro&x=c/d", "/abs"),       # a query is not part of the file's path
    ("sqlite:///:memory:", None), ("http://localhost:5000", None), ("postgresql://u@host/db", None),
])
def test_a_local_stores_artifacts_go_beside_its_database_file(uri, folder):
    from utils.experiments.tracking import ARTIFACTS, artifact_root
    got = artifact_root(uri)
    assert (got if folder is None else unquote(urlparse(got).path)) == (folder and os.path.join(folder, ARTIFACTS))
