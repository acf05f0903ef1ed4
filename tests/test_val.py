"""val.py as a user runs it, on a checkpoint in the authors' layout."""
import json
import os
import re

import numpy as np
import pytest
import torch
import torchvision

from helpers import run_py, tiny_demo
from pipeline.data.dataset import ImageTransform, MultiLabelDataset
from pipeline.models.model import CSRANet
from pipeline.models.runtime import to_model_input
from utils.evaluation import evaluate


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    files = tiny_demo(root / "data", num_train=8, num_test=20)
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)
    sd = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    for k in range(2):  # authors' head keys, spelled out
        sd[f"classifier.multi_head.{k}.head.weight"] = torch.randn(6, 512, 1, 1)
    ckpt = root / "authors.pth"
    torch.save({f"module.{k}": v for k, v in sd.items()}, ckpt)  # as saved from DataParallel
    return root, files, ckpt, sd


def common(files, ckpt):
    # float32 (--amp off): the tests compare with scores computed here in float32; bf16 is tested apart
    return ["val.py", "--amp", "off", "--model", "resnet18", "--num_heads", "2", "--lam", "0.3", "--dataset", "demo",
            "--test_json", files["test"], "--classes", files["classes"], "--img_size", "64", "--num_workers", "0",
            "--load_from", str(ckpt)]


def test_printed_map_equals_metrics_of_the_models_scores(setup, tmp_path):
    root, files, ckpt, sd = setup
    model = CSRANet("resnet18", 6, num_heads=2, lam=0.3, img_size=64, pretrained="none").eval()
    model.load_state_dict(sd)
    ds = MultiLabelDataset(files["test"], ImageTransform(64, train=False), 6)
    x = to_model_input(torch.stack([ds[i][0] for i in range(len(ds))]), (0, 0, 0), (1, 1, 1), torch.device("cpu"))
    with torch.no_grad():
        scores = torch.sigmoid(model(x)).numpy()
    want = evaluate(scores, ds.targets())
    out = tmp_path / "scores.json"
    r = run_py(*common(files, ckpt), "--save_scores", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    printed = float(re.search(r"^mAP: ([0-9.]+)", r.stdout, re.M).group(1))
    assert printed == pytest.approx(want.map, abs=0.006)
    assert "CF1(zoo)" in r.stdout and "circle" in r.stdout
    saved = json.loads(out.read_text())
    assert saved["metrics"]["mAP"] == pytest.approx(want.map, abs=1e-9)
    got = np.array([im["scores"] for im in saved["images"]])
    np.testing.assert_allclose(got, scores, atol=2e-6)
    assert [im["img_path"] for im in saved["images"]] == [rec["img_path"] for rec in ds.records]


def test_voc_submission_files(setup, tmp_path):
    root, files, ckpt, _ = setup
    unlabelled = tmp_path / "test_nolabels.json"
    unlabelled.write_text(json.dumps([{"img_path": r["img_path"]} for r in json.loads(open(files["test"]).read())]))
    args = common(files, ckpt)
    args[args.index("--test_json") + 1] = str(unlabelled)
    r = run_py(*args)
    assert r.returncode == 1 and "have no 'target' labels" in r.stderr and "--voc_submission" in r.stderr
    out = tmp_path / "sub"
    r = run_py(*args, "--voc_submission", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    lines = (out / "comp2_cls_test_circle.txt").read_text().splitlines()
    assert len(lines) == 20 and re.fullmatch(r"00000 0\.\d{6}", lines[0])
    assert len(os.listdir(out)) == 6


def test_val_errors_are_one_line(setup, tmp_path):
    root, files, ckpt, _ = setup
    args = common(files, ckpt)
    r = run_py(*[a if a != "2" else "6" for a in args])
    assert r.returncode == 1 and r.stderr.strip() == f"error: {ckpt}: checkpoint has 2 heads, --num_heads is 6"
    r = run_py(*args, "--num_cls", "20")
    assert r.returncode == 1 and "--num_cls is 20" in r.stderr
    r = run_py(*args, "--no_such_flag")
    assert r.returncode == 2 and "unrecognized arguments: --no_such_flag" in r.stderr
    # --save_scores names a file: a folder is refused before the model runs, saying what to give
    for folder in (str(tmp_path), str(tmp_path / "scores") + "/"):
        r = run_py(*args, "--save_scores", folder)
        assert r.returncode == 2 and f"--save_scores {folder}: a folder; name the file to write" in r.stderr
        assert "mAP" not in r.stdout
