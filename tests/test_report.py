"""The evaluation report: its numbers against independent computations, its page against the files."""
import json
import os
import re

import numpy as np
import pytest

import demo as demo_main
import main as train_main
from helpers import run_py, tiny_demo, train_argv
from utils.evaluation.analysis import analyse, best_f1_threshold, pr_curve, worst_mistakes
from utils.evaluation.metrics import evaluate, masks


def random_case(kind, seed, tied):
    rng = np.random.default_rng(seed)
    n, C = 90, 5
    scores = rng.integers(0, 8, size=(n, C)) / 7.0 if tied else rng.random((n, C))
    targets = {"voc": rng.choice([1, 0, -1], size=(n, C), p=[0.3, 0.1, 0.6]),
               "wider": rng.choice([1, 0, 99], size=(n, C), p=[0.3, 0.5, 0.2]),
               "binary": rng.choice([1, 0], size=(n, C), p=[0.3, 0.7])}[kind]
    return scores, targets


@pytest.mark.parametrize("kind", ["voc", "wider", "binary"])
@pytest.mark.parametrize("tied", [False, True])
def test_pr_curve_area_is_the_ap(kind, tied):
    scores, targets = random_case(kind, 1, tied)
    rep = evaluate(scores, targets)
    pos, neg, _, _ = masks(targets)
    for c in range(scores.shape[1]):
        curve = pr_curve(scores[:, c], pos[:, c], neg[:, c])
        r = [0.0] + list(curve.recall)
        area = sum((r[k + 1] - r[k]) * curve.precision[k] for k in range(len(curve.precision)))
        assert area == pytest.approx(rep.ap[c], abs=1e-9)
        assert all(np.diff(curve.recall) > 0) and curve.recall[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["voc", "wider", "binary"])
def test_per_class_table_and_best_thresholds_by_brute_force(kind):
    scores, targets = random_case(kind, 2, tied=True)
    rep = evaluate(scores, targets)
    a = analyse(scores, targets, rep.ap)
    voc = kind == "voc"
    for c in range(scores.shape[1]):
        t = targets[:, c]
        counted = ~(voc & (t == 0))  # P/R: VOC difficult left out; 99 negative
        pred = (scores[:, c] >= 0.5) & counted
        gt = (t == 1) & counted
        assert a.positives[c] == (t == 1).sum() and a.predicted[c] == pred.sum() and a.tp[c] == (pred & gt).sum()
        p = (pred & gt).sum() / pred.sum() if pred.sum() else 0.0
        r = (pred & gt).sum() / gt.sum()
        assert a.precision[c] == pytest.approx(p) and a.recall[c] == pytest.approx(r)
        best = (-1.0, None, None)
        distinct = sorted(set(scores[counted, c]), reverse=True)
        for i, thr in enumerate(distinct):  # every distinct score as the lowest one kept
            pr = (scores[:, c] >= thr) & counted
            f1 = 2 * (pr & gt).sum() / (pr.sum() + gt.sum())
            if f1 > best[0]:
                best = (f1, thr, distinct[i + 1] if i + 1 < len(distinct) else 0.0)
        assert a.best_f1[c] == pytest.approx(best[0]) and a.best_threshold[c] == pytest.approx((best[1] + best[2]) / 2)
        cut = (scores[:, c] >= a.best_threshold[c]) & counted  # the threshold keeps exactly those images
        assert 2 * (cut & gt).sum() / (cut.sum() + gt.sum()) == pytest.approx(best[0])
    # the global sweep equals the evaluator at each threshold
    for k, thr in enumerate(a.sweep["thresholds"]):
        again = evaluate(scores, targets, threshold=thr)
        assert a.sweep["CF1"][k] == pytest.approx(again.overall["CF1"])
        assert a.sweep["OF1"][k] == pytest.approx(again.overall["OF1"])


def test_worst_mistakes_by_sorting():
    scores, targets = random_case("voc", 3, tied=False)
    for c in range(scores.shape[1]):
        fp, fn = worst_mistakes(scores, targets, c)
        negatives = sorted((i for i in range(len(scores)) if targets[i, c] == -1), key=lambda i: -scores[i, c])
        positives = sorted((i for i in range(len(scores)) if targets[i, c] == 1), key=lambda i: scores[i, c])
        assert fp == negatives[:4] and fn == positives[:4]


def test_best_threshold_without_positives():
    assert best_f1_threshold(np.array([0.2, 0.9]), np.array([False, False]), np.array([True, True])) == (0.5, 0.0)


def test_best_threshold_lies_between_scores_by_hand():
    every = np.array([True] * 4)
    # keep 0.9 and 0.7 (F1 1): halfway to 0.4, so 0.7 - 1e-6 (another backend's score) is still kept
    t, f1 = best_f1_threshold(np.array([0.9, 0.4, 0.7, 0.2]), np.array([True, False, True, False]), every)
    assert (t, f1) == (pytest.approx(0.55), 1.0)
    # every image positive: keep all, halfway between the lowest score and 0
    t, f1 = best_f1_threshold(np.array([0.8, 0.6, 0.7, 0.9]), every, every)
    assert (t, f1) == (pytest.approx(0.3), 1.0)
    # a tie of F1 goes to the higher cut: keeping {0.9} gives 2/3 (1 of 2 positives), keeping all four 2/3 too
    t, f1 = best_f1_threshold(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, False, True]), every)
    assert (t, f1) == (pytest.approx(0.85), pytest.approx(2 / 3))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    files = tiny_demo(root / "data", num_train=32, num_test=16)
    train_main.main(train_argv(files, root / "run", "--total_epoch", "1", "--report", str(root / "from_main")))
    return root, files


def page_links_exist(folder):
    page = open(os.path.join(folder, "index.html"), encoding="utf-8").read()
    links = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert links
    for link in links:
        scheme = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*):", link)
        assert scheme is None or scheme.group(1) == "data", link
        if scheme is None:
            assert os.path.isfile(os.path.join(folder, link)), link
    assert "<script" not in page and "@import" not in page and "url(" not in page
    return page


def test_val_report_with_model_and_from_scores(trained, tmp_path):
    root, files = trained
    common = ["--dataset", "demo", "--test_json", files["test"], "--classes", files["classes"], "--img_size", "32",
              "--num_workers", "0"]
    scores_file = tmp_path / "scores.json"
    r = run_py("val.py", *common, "--load_from", str(root / "run" / "best.pth"), "--report", str(tmp_path / "rep"),
               "--report_classes", "2", "--save_scores", str(scores_file))
    assert r.returncode == 0, r.stderr[-2000:]
    page = page_links_exist(tmp_path / "rep")
    saved = json.loads(scores_file.read_text())
    metrics = saved["metrics"]  # the evaluator's, on the same scores the page was drawn from
    assert f"mAP {metrics['mAP']:.2f}" in page
    for name in saved["classes"]:
        assert f"<td class=name>{name}</td><td>{metrics['AP'][name]:.2f}</td>" in page
    # the saved file holds the float32 scores exactly; a page drawn from it agrees with the evaluator
    rep = evaluate(np.array([im["scores"] for im in saved["images"]]), np.array([im["target"] for im in saved["images"]]))
    assert page.count("<h3>") == 2 and len(os.listdir(tmp_path / "rep" / "thumbs")) > 0
    thresholds = json.loads((tmp_path / "rep" / "thresholds.json").read_text())
    assert set(thresholds["thresholds"]) == set(saved["classes"]) and "held-out" in thresholds["note"]
    r = run_py("val.py", *common, "--from_scores", str(scores_file), "--report", str(tmp_path / "again"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "again" / "thresholds.json").read_text())["chosen_on"] == str(scores_file)
    assert thresholds["chosen_on"] == files["test"]
    again = page_links_exist(tmp_path / "again")
    assert f"mAP {rep.map:.2f}" in again and "without attention heatmaps" in again
    page_links_exist(root / "from_main")


def test_demo_applies_per_class_thresholds(trained, tmp_path):
    root, files = trained
    names = open(files["classes"]).read().split()
    test_dir = os.path.dirname(json.loads(open(files["test"]).read())[0]["img_path"])
    common = ["--dataset", "demo", "--classes", files["classes"], "--img_size", "32", "--load_from",
              str(root / "run" / "best.pth"), "--img_dir", test_dir]
    plain = demo_main.run(demo_main.get_args(common))
    cut = {n: (0.0 if i % 2 == 0 else 1.0) for i, n in enumerate(names)}  # even classes always, odd never
    (tmp_path / "t.json").write_text(json.dumps({"thresholds": cut}))
    per_class = demo_main.run(demo_main.get_args(common + ["--thresholds", str(tmp_path / "t.json")]))
    for a, b in zip(plain, per_class):
        got = {x["class"] for x in b["labels"]}
        want = {n for n in names if b["scores"][n] >= cut[n]}
        assert got == want and a["scores"] == b["scores"]


def test_thumbnails_follow_dataset_indices_when_records_share_a_path(tmp_path):
    """WIDER: several persons (records) share one image file; each thumbnail must show its own crop."""
    import torch
    from PIL import Image

    from engine import thumbnails_by_row
    from pipeline.data.dataset import ImageTransform, MultiLabelDataset
    from pipeline.models.model import CSRANet
    from pipeline.models.runtime import Runtime

    Image.new("RGB", (60, 60), "gray").save(tmp_path / "group.jpg")
    recs = [{"img_path": str(tmp_path / "group.jpg"), "target": [1], "bbox": [0, 0, 40, 10]},   # wide person
            {"img_path": str(tmp_path / "group.jpg"), "target": [1], "bbox": [0, 0, 10, 40]}]   # tall person
    (tmp_path / "w.json").write_text(json.dumps(recs))
    ds = MultiLabelDataset(str(tmp_path / "w.json"), ImageTransform(32, train=False))
    model = CSRANet("small_cnn", 1, img_size=32, pretrained="none").eval()
    rt = Runtime(torch.device("cpu"), "off", False, (0.0,) * 3, (1.0,) * 3)
    thumbs = thumbnails_by_row(model, ds, rt, np.array([0, 1]), {0: [0], 1: [0]})
    assert thumbs[(0, 0)].width > thumbs[(0, 0)].height and thumbs[(1, 0)].height > thumbs[(1, 0)].width


def test_saved_scores_read_back_as_the_float32_values_they_were(tmp_path):
    """A confident model's scores differ below 1e-6 near 0 and 1: rounded, they tie, and --from_scores
    scored other ties (mAP 58.99 for the file's own 69.90, seen on a demo model)."""
    from utils.evaluation.report import save_scores
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 12, size=(300, 4))
    scores = (1 / (1 + np.exp(-logits))).astype(np.float32)  # many within 1e-6 of 0 or 1
    targets = np.where(rng.random((300, 4)) < 1 / (1 + np.exp(-logits / 3)), 1, -1)
    assert len(np.unique(np.round(scores, 6))) < len(np.unique(scores))  # rounding would merge some
    save_scores(str(tmp_path / "s.json"), [f"{i}.jpg" for i in range(300)], scores, targets, None,
                {"mAP": evaluate(scores, targets).map})
    saved = json.loads((tmp_path / "s.json").read_text())
    back = np.array([im["scores"] for im in saved["images"]], dtype=np.float32)
    assert np.array_equal(back, scores)
    assert evaluate(back, targets).map == saved["metrics"]["mAP"]
