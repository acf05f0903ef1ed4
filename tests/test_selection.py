"""Held-out selection (--val_split, --val_json): the split's rules, checked by brute force on dense and sparse
files, and a run that chooses its epoch, weights and thresholds on validation data, never on the test set."""
import json

import numpy as np
import pytest
import torch

import main as train_main
import trainer
from helpers import run_py, tiny_demo, train_argv
from pipeline.data.labels import EVAL_UNKNOWN, from_dense, read_sparse, write_sparse
from pipeline.data.splits import stratified_split


def random_labels(n=300, c=12, seed=3):
    """Labels with a long tail: some classes with 2-3 positives, one with a single positive, one with none."""
    rng = np.random.default_rng(seed)
    t = (rng.random((n, c)) < np.linspace(0.4, 0.01, c)).astype(int)
    t[:, -3] = 0
    t[[5, 90], -3] = 1  # exactly two positives
    t[:, -2] = 0
    t[7, -2] = 1        # one positive: cannot split
    t[:, -1] = 0        # none
    return t


def dense_table(t):
    return from_dense([{"img_path": f"im{i}.jpg", "target": [int(v) for v in row]} for i, row in enumerate(t)], None)


def check_split(split, t, fraction):
    n = len(t)
    train, val = set(split.train.tolist()), set(split.val.tolist())
    assert not train & val and train | val == set(range(n))
    for c in range(t.shape[1]):  # brute force: every class with 2+ positives has one on each side
        positives = [i for i in range(n) if t[i, c] == 1]
        if len(positives) >= 2 and c not in split.unsplit:
            assert any(i in val for i in positives) and any(i in train for i in positives), c
    assert len(val) >= round(fraction * n)


def test_split_is_deterministic_disjoint_and_stratified():
    t = random_labels()
    table = dense_table(t)
    a = stratified_split(table, 0.1, seed=0)
    b = stratified_split(table, 0.1, seed=0)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    check_split(a, t, 0.1)
    assert a.unsplit == []
    assert len(a.val) <= round(0.1 * len(t)) + 3  # at most a few records beyond the quota, forced by rare classes
    other = stratified_split(table, 0.1, seed=1)
    check_split(other, t, 0.1)
    assert not np.array_equal(a.val, other.val)


def test_split_of_a_sparse_file_equals_the_dense_one(tmp_path):
    t = random_labels(n=200, c=9, seed=4)
    path = tmp_path / "train.jsonl"
    write_sparse(path, ((f"im{i}.jpg", np.flatnonzero(row == 1).tolist(), np.flatnonzero(row == 0).tolist())
                        for i, row in enumerate(t)), t.shape[1], "negative")
    sparse, _ = read_sparse(str(path))
    a = stratified_split(sparse, 0.25, seed=7)
    b = stratified_split(dense_table(t), 0.25, seed=7)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    check_split(a, t, 0.25)
    held = sparse.take(a.val)  # the validation records' labels and paths, without a dense matrix
    assert held.paths() == [f"im{i}.jpg" for i in a.val]
    assert np.array_equal(held.dense(), t[a.val])


def test_classes_that_cannot_split_are_named():
    """Positives on the pairs {0, 1}, {1, 2}, {0, 2} of records: no two-sided assignment exists for all three."""
    t = np.zeros((40, 3), dtype=int)
    t[0, [0, 2]] = 1
    t[1, [0, 1]] = 1
    t[2, [1, 2]] = 1
    split = stratified_split(dense_table(t), 0.2, seed=0)
    assert len(split.unsplit) == 1
    check_split(split, t, 0.2)


def test_a_partial_label_files_unknowns_stay_unknown_in_its_validation_split(tmp_path):
    from pipeline.data.dataset import ImageTransform, MultiLabelDataset
    records = [{"img_path": f"im{i}.jpg", "target": [1, -1, 0] if i % 2 else [0, 1, -1]} for i in range(10)]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    ds = MultiLabelDataset(str(path), ImageTransform(32, train=True), partial_labels=True)
    val = ds.subset(np.array([1, 2]), ImageTransform(32, train=False))
    # -1 is unknown here (left out of evaluation), not VOC's "absent" (a negative)
    assert val.targets().tolist() == [[1, EVAL_UNKNOWN, 0], [0, 1, EVAL_UNKNOWN]]
    assert val.describe_record(1) == f"record 2 of {path}"


def read_log(folder):
    return [json.loads(line) for line in open(folder / "log.jsonl")]


def test_without_validation_the_test_set_chooses_and_the_run_says_so(tmp_path, capsys):
    files = tiny_demo(tmp_path / "data", num_train=32, num_test=16)
    train_main.main(train_argv(files, tmp_path / "run", "--total_epoch", "3"))
    printed = capsys.readouterr().out
    log = read_log(tmp_path / "run")
    final = log[-1]["final"]
    assert [e["epoch"] for e in log] == [1, 2, 3] and all("final" not in e for e in log[:-1])
    best = max(log, key=lambda e: e["mAP"])
    assert final["selected_on"] == "test" and final["epoch"] == best["epoch"] and final["test_mAP"] == best["mAP"]
    assert final["test_CF1"] == best["CF1"] and final["last_test_mAP"] == log[-1]["mAP"]
    assert "training images (demo), epoch chosen on the test set (authors' protocol)" in printed
    assert "chosen on the test set (the authors' protocol)" in printed
    assert f"the last epoch scored {log[-1]['mAP']:.2f}" in printed
    assert json.loads((tmp_path / "run" / "args.json").read_text())["selection"] == {"on": "test", "validation": None}


FAKE = {"validation": [50.0, 80.0, 60.0], "test": [90.0, 40.0, 70.0]}  # validation picks epoch 2, test epoch 1


def fake_scores(monkeypatch, seen, chosen=None):
    """The reports' mAP replaced by FAKE[set][epoch - 1], so validation and test disagree on the best epoch;
    ``chosen`` collects the weights scored as the chosen ones."""
    real = trainer.Trainer.score
    chosen = [] if chosen is None else chosen

    def score(self, net, dataset, what, source, epoch):
        scored = real(self, net, dataset, what, source, epoch)
        seen.append((what, source, epoch))
        if source == "chosen":
            chosen.append({k: v.detach().clone() for k, v in net.state_dict().items()})
        scored.report.map = FAKE[what][epoch - 1]
        return scored
    monkeypatch.setattr(trainer.Trainer, "score", score)


def brute_force_thresholds(scores, targets):
    """Per class, the lowest score kept by the best F1 of predicting score >= t (the higher on a tie), and the
    threshold halfway from it to the next score below (to 0 below the lowest)."""
    out = []
    for c in range(scores.shape[1]):
        best = (-1.0, 0.5)
        distinct = sorted(set(scores[:, c].tolist()), reverse=True)
        for i, t in enumerate(distinct):
            tp = sum(1 for s, y in zip(scores[:, c], targets[:, c]) if s >= t and y == 1)
            pred = sum(1 for s in scores[:, c] if s >= t)
            f1 = 2 * tp / (pred + int((targets[:, c] == 1).sum()))
            if f1 > best[0]:
                best = (f1, (t + (distinct[i + 1] if i + 1 < len(distinct) else 0.0)) / 2)
        out.append(best[1] if (targets[:, c] == 1).any() else 0.5)
    return np.array(out)


def test_a_validation_file_chooses_the_epoch_weights_and_thresholds(tmp_path, monkeypatch, capsys):
    files = tiny_demo(tmp_path / "data", num_train=32, num_test=16)
    val = tiny_demo(tmp_path / "val", num_train=8, num_test=12, seed=5)["test"]
    seen = []
    fake_scores(monkeypatch, seen)
    train_main.main(train_argv(files, tmp_path / "run", "--total_epoch", "3", "--val_json", val,
                               "--test_every_epoch"))
    printed = capsys.readouterr().out
    run = tmp_path / "run"
    log = read_log(run)
    assert [e["val_mAP"] for e in log] == FAKE["validation"] and all("mAP" not in e for e in log)
    assert [e["test_mAP"] for e in log] == FAKE["test"]  # the curves: test scored every epoch, epoch 1 its best
    final = log[-1]["final"]
    assert final["selected_on"] == "val" and final["epoch"] == 2 and log[-1]["best_epoch"] == 2
    assert final["test_mAP"] == FAKE["test"][1]  # the chosen weights, scored once more on the test set
    assert [s for s in seen if s[0] == "test" and s[1] != "model"] == [("test", "chosen", 2)]  # never for a choice
    assert [s for s in seen if s[0] == "validation"] == [("validation", "model", e) for e in (1, 2, 3)]  # the
    # thresholds come from epoch 2's validation scores, kept: the validation set is not scored again at the end
    best, second = (torch.load(run / n, weights_only=True) for n in ("best.pth", "epoch_2.pth"))
    assert all(torch.equal(best[k], second[k]) for k in second)
    assert "chosen on the validation set: epoch 2" in printed and "scored once on those weights: mAP 40.00" in printed
    # thresholds.json: each class's best-F1 threshold on the chosen weights' validation scores
    r = run_py("val.py", "--load_from", run / "best.pth", "--test_json", val, "--num_workers", "0",
               "--save_scores", tmp_path / "val_scores.json")
    assert r.returncode == 0, r.stderr
    saved = json.loads((tmp_path / "val_scores.json").read_text())
    scores = np.array([im["scores"] for im in saved["images"]])
    targets = np.array([im["target"] for im in saved["images"]])
    chosen = json.loads((run / "thresholds.json").read_text())
    assert "validation" in chosen["chosen_on"]
    got = np.array([chosen["thresholds"][n] for n in saved["classes"]])
    assert np.allclose(got, brute_force_thresholds(scores, targets), atol=2e-6)  # (the file rounds scores to 1e-6)


def test_a_validation_split_holds_records_out_and_says_so(tmp_path, capsys):
    files = tiny_demo(tmp_path / "data", num_train=40, num_test=16)
    train_main.main(train_argv(files, tmp_path / "run", "--val_split", "0.25", "--test_every_epoch"))
    printed = capsys.readouterr().out
    log = read_log(tmp_path / "run")
    assert all("val_mAP" in e and "test_mAP" in e for e in log)
    assert "30 training images" in printed and "validation 10 of the 40 records" in printed
    record = json.loads((tmp_path / "run" / "args.json").read_text())
    assert record["val_split"] == 0.25 and record["split_seed"] == 0 and record["selection"]["on"] == "val"
    final = log[-1]["final"]
    assert final["selected_on"] == "val" and final["val_mAP"] == max(e["val_mAP"] for e in log)


def test_val_json_and_val_split_together_are_refused(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=8, num_test=8)
    r = run_py("main.py", *train_argv(files, tmp_path / "run", "--val_split", "0.2", "--val_json", files["test"]))
    assert r.returncode == 1 and "use one" in r.stderr and "Traceback" not in r.stderr
    r = run_py("main.py", *train_argv(files, tmp_path / "run", "--val_split", "1.5"))
    assert r.returncode == 1 and "--val_split must be a fraction in (0, 1)" in r.stderr


def test_a_resumed_run_reads_its_chosen_weights_back_from_best_pth(tmp_path, monkeypatch, capsys):
    """After a resume the best weights are not in memory: the test set scores best.pth's (validation's epoch 1)."""
    files = tiny_demo(tmp_path / "data", num_train=32, num_test=16)
    argv = train_argv(files, tmp_path / "run", "--val_split", "0.25")
    seen, chosen = [], []
    fake_scores(monkeypatch, seen, chosen)
    train_main.main(argv)  # 2 epochs: validation 50, 80 -> epoch 2
    epoch_2 = torch.load(tmp_path / "run" / "epoch_2.pth", weights_only=True)
    train_main.main(argv[:argv.index("--total_epoch")] + argv[argv.index("--total_epoch") + 2:] +
                    ["--total_epoch", "3", "--resume", str(tmp_path / "run")])  # epoch 3 scores 60: 2 stays best
    final = read_log(tmp_path / "run")[-1]["final"]
    assert final["epoch"] == 2 and final["test_mAP"] == FAKE["test"][1]
    best = torch.load(tmp_path / "run" / "best.pth", weights_only=True)
    assert all(torch.equal(best[k], epoch_2[k]) for k in epoch_2)
    assert seen[-2:] == [("validation", "chosen", 2), ("test", "chosen", 2)]  # (its validation scores are gone too)
    assert all(torch.equal(chosen[-1][k], epoch_2[k]) for k in epoch_2)  # best.pth's weights, not epoch 3's


def test_test_every_epoch_needs_a_validation_set(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    r = run_py("main.py", *train_argv(files, tmp_path / "run", "--test_every_epoch"))
    assert r.returncode == 1 and "--test_every_epoch applies with a validation set" in r.stderr

