"""demo.py predictions and heatmaps, training curves, and the training-free sweep."""
import csv
import json
import math
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import main as train_main
from conftest import SHARED_SAMPLES, needs_voc_samples
from helpers import run_py, tiny_demo, train_argv
from pipeline.models.csra import MultiHeadCSRA
from utils.output.visualize import CAPTION_HEIGHT, PANEL_HEIGHT, SCALE_WIDTH, class_map, overlay, upsample


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CSRA model and a tiny GAP model trained on the tiny demo data."""
    root = tmp_path_factory.mktemp("vis")
    files = tiny_demo(root / "data", num_train=32, num_test=16)
    train_main.main(train_argv(files, root / "csra", "--total_epoch", "1", "--num_heads", "2"))
    train_main.main(train_argv(files, root / "gap", "--total_epoch", "1", "--head", "gap"))
    return root, files


def demo_args(root, files, *extra, heads="2"):
    return ["demo.py", "--dataset", "demo", "--classes", files["classes"], "--img_size", "32", "--num_heads", heads,
            "--load_from", str(root / "csra" / "best.pth"), *extra]


def test_hand_built_corner_gets_the_highest_attention():
    mha = MultiHeadCSRA(2, 0.1, in_dim=3, num_classes=2)
    with torch.no_grad():
        for h in mha.multi_head:
            h.head.weight.zero_()
            h.head.weight[0, 0] = 1.0  # class 0 reads channel 0
            h.head.weight[1, 1] = 1.0  # class 1 reads channel 1
    x = torch.full((1, 3, 7, 7), 0.1)
    x[0, 0, 0, 0] = 5.0  # class 0's object: top-left corner
    x[0, 1, 6, 6] = 5.0  # class 1's object: bottom-right corner
    out = mha.forward_with_maps(x)
    for head in (0, 1):  # T = 1 (softmax) and T = inf (score map)
        for cls, corner in ((0, (0, 0)), (1, (69, 69))):
            heat = upsample(class_map(out, 0, cls, head), (70, 70))
            r, c = np.unravel_index(heat.argmax(), heat.shape)
            assert abs(r - corner[0]) < 10 and abs(c - corner[1]) < 10
    img = Image.new("RGB", (70, 70), "gray")
    ov = np.asarray(overlay(img, upsample(class_map(out, 0, 0, 0), (70, 70)))).astype(int)
    heat = upsample(class_map(out, 0, 0, 0), (70, 70))
    peak = np.unravel_index(heat.argmax(), heat.shape)
    assert ov[peak][0] > ov[peak][2] + 60  # jet's high end (dark red) laid over the object
    far = heat < 1e-3
    assert far.sum() > 1000 and (ov[far] == 128).all()  # where the model does not look, the image is untouched
    assert math.isinf(out.temperatures[1])


def test_demo_predictions_outputs_and_skips(trained, tmp_path):
    root, files = trained
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    records = json.loads(open(files["test"]).read())[:3]
    for r in records:
        Image.open(r["img_path"]).save(img_dir / os.path.basename(r["img_path"]))
    (img_dir / "notes.txt").write_text("not an image")
    (img_dir / "broken.jpg").write_bytes(b"garbage")
    out_csv = tmp_path / "preds.csv"
    r = run_py(*demo_args(root, files, "--img_dir", str(img_dir), "--topk", "2", "--output", str(out_csv)))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skipped" in r.stderr and "notes.txt" in r.stderr and "broken.jpg" in r.stderr
    assert "labels: score >= 0.5 for every class" in r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(str(img_dir))]
    assert len(lines) == 3 and all(len(re.findall(r"\(\d\.\d{3}\)", ln.split("; top 2: ")[1])) == 2 for ln in lines)
    rows = list(csv.DictReader(open(out_csv)))
    assert len(rows) == 3 and all(len(row["top"].split(";")) == 2 for row in rows)
    names = [k for k in rows[0] if k not in ("image", "labels", "top")]
    for row in rows:  # the labels column holds exactly the classes at or above the threshold, the top 2 their own
        assert set(filter(None, row["labels"].split(";"))) == {n for n in names if float(row[n]) >= 0.5}
        top = sorted(names, key=lambda n: -float(row[n]))[:2]
        assert [t.split(":")[0] for t in row["top"].split(";")] == top
    out_json = tmp_path / "preds.json"
    r = run_py(*demo_args(root, files, "--img_dir", str(img_dir / "00000.jpg"), "--threshold", "0.0",
                          "--output", str(out_json)))
    res = json.loads(out_json.read_text())
    assert len(res) == 1 and len(res[0]["labels"]) == 6
    assert [x["score"] for x in res[0]["labels"]] == sorted((x["score"] for x in res[0]["labels"]), reverse=True)


def test_heatmap_files(trained, tmp_path):
    root, files = trained
    src = json.loads(open(files["test"]).read())[0]["img_path"]
    big = tmp_path / "big.png"
    Image.open(src).resize((90, 60)).save(big)  # non-square, larger than the model's input
    out_dir = tmp_path / "hm"
    r = run_py(*demo_args(root, files, "--img_dir", str(big), "--heatmaps", str(out_dir),
                          "--heatmap_classes", "circle,bar,ring"))
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("circle", "bar", "ring"):  # 90 x 60 enlarged 5 times: the shorter side reaches 256 px
        im = Image.open(out_dir / f"big_{name}.png")
        im.load()
        assert im.size == (450, 300)
    grid = Image.open(out_dir / "big_grid.png")
    panel_w = round(90 * PANEL_HEIGHT / 60)
    assert grid.size == (4 * panel_w + SCALE_WIDTH, PANEL_HEIGHT + CAPTION_HEIGHT)  # input + 3 classes + scale
    r = run_py(*demo_args(root, files, "--img_dir", str(big), "--heatmaps", str(out_dir),
                          "--heatmap_classes", "dragon"))
    assert r.returncode != 0 and "unknown class 'dragon'" in r.stderr


@needs_voc_samples
def test_heatmaps_on_real_voc_images(trained, tmp_path):
    root, files = trained
    r = run_py(*demo_args(root, files, "--img_dir", SHARED_SAMPLES, "--heatmaps", str(tmp_path / "hm")))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "labels.json" in r.stderr  # skipped, not an image
    grids = sorted(p for p in os.listdir(tmp_path / "hm") if p.endswith("_grid.png"))
    assert len(grids) == 6


def test_training_curves(trained, tmp_path):
    root, _ = trained
    out = tmp_path / "curves.png"
    r = run_py("tools/plot_curves.py", str(root / "csra"), str(root / "gap"), "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    im = Image.open(out)
    im.load()
    assert im.size == (1500, 400)
    r = run_py("tools/plot_curves.py", str(tmp_path / "missing"), "--out", str(out))
    assert r.returncode == 1 and "no such metrics log" in r.stderr


def test_training_free_sweep_table(trained):
    root, files = trained
    common = ["--dataset", "demo", "--test_json", files["test"], "--classes", files["classes"], "--img_size", "32",
              "--num_workers", "0", "--load_from", str(root / "gap" / "best.pth")]
    r = run_py("tools/training_free_sweep.py", *common, "--lams", "0.02,0.2")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {float(m.group(1)): float(m.group(2)) for m in re.finditer(r"^\s+([0-9.]+)\s+([0-9.]+)\s+[+-]", r.stdout, re.M)}
    assert sorted(rows) == [0.0, 0.02, 0.2]
    for lam in (0.0, 0.2):
        v = run_py("val.py", *common, "--head", "gap", "--lam", str(lam))
        assert v.returncode == 0, v.stderr[-2000:]
        assert float(re.search(r"^mAP: ([0-9.]+)", v.stdout, re.M).group(1)) == pytest.approx(rows[lam], abs=0.006)
    r = run_py("tools/training_free_sweep.py", *common[:-1], str(root / "csra" / "best.pth"))
    assert r.returncode == 1 and "checkpoint has a CSRA head" in r.stderr and "needs a GAP head" in r.stderr
