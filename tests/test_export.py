"""Export to ONNX and TorchScript with checked parity, and the torch-free ONNX predictor."""
import builtins
import json
import math
import os
import re

import numpy as np
import pytest
import torch

import main as train_main
from helpers import run_py, tiny_demo, train_argv
from pipeline import export as ex
from pipeline.errors import ConfigError
from pipeline.model import CSRANet

ort = pytest.importorskip("onnxruntime")
NAMES = [f"c{i}" for i in range(5)]


def exported_outputs(path, fmt, x):
    return ex.run_exported(str(path), fmt, x.numpy())


@pytest.mark.parametrize("num_heads,head", [(1, "csra"), (2, "csra"), (4, "csra"), (6, "csra"), (8, "csra"),
                                            (1, "gap")])
def test_onnx_parity_for_every_head_configuration(tmp_path, num_heads, head):
    torch.manual_seed(num_heads)
    model = CSRANet("small_cnn", 5, head=head, num_heads=num_heads, lam=0.4, img_size=32, pretrained="none")
    path = tmp_path / "m.onnx"
    diffs = ex.export(model, NAMES, "onnx", str(path), with_maps=True, head=num_heads - 1 if head == "csra" else 0)
    assert diffs["logits"] < 1e-4 and diffs["maps"] < 1e-4
    x = ex.sample_inputs(model, batch=5, seed=9)  # a batch size never seen at export
    logits, maps = exported_outputs(path, "onnx", x)
    with torch.no_grad():
        out = model.eval().forward_with_maps(x)
    np.testing.assert_allclose(logits, out.logits.numpy(), atol=1e-4)
    k = num_heads - 1 if head == "csra" else 0
    T = out.temperatures[k]
    want = out.score_maps[k] if math.isinf(T) else out.attention[k]
    assert maps.shape == (5, 5, 4, 4)
    np.testing.assert_allclose(maps, want.numpy(), atol=1e-4)
    meta = ex.read_metadata(str(path), "onnx")
    assert json.loads(meta["classes"]) == NAMES and meta["input_size"] == "32" and meta["head"] == head
    if head == "csra":
        temps = json.loads(meta["temperatures"])
        assert len(temps) == num_heads and (num_heads == 1 or temps[-1] == "inf") and meta["lam"] == "0.4"


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_resnet_exports_in_both_formats(tmp_path, fmt):
    torch.manual_seed(0)
    model = CSRANet("resnet18", 5, num_heads=4, lam=0.2, img_size=64, pretrained="none")
    path = tmp_path / ("m.pt" if fmt == "torchscript" else "m.onnx")
    diffs = ex.export(model, NAMES, fmt, str(path))
    assert diffs["logits"] < 1e-4
    meta = ex.read_metadata(str(path), fmt)
    assert meta["model"] == "resnet18" and json.loads(meta["mean"]) == [0.0, 0.0, 0.0]


def test_vit_exports(tmp_path):
    torch.manual_seed(0)
    model = CSRANet("vit_B16_224", 3, num_heads=1, lam=0.3, img_size=224, pretrained="none")
    diffs = ex.export(model, NAMES[:3], "onnx", str(tmp_path / "vit.onnx"), with_maps=True, normalize="half")
    assert diffs["logits"] < 1e-4 and diffs["maps"] < 1e-4
    meta = ex.read_metadata(str(tmp_path / "vit.onnx"), "onnx")
    assert json.loads(meta["mean"]) == [0.5, 0.5, 0.5] and json.loads(meta["std"]) == [0.5, 0.5, 0.5]
    assert meta["normalize"] == "half"


def test_parity_failure_and_missing_package_are_one_line(tmp_path, monkeypatch):
    model = CSRANet("small_cnn", 5, img_size=32, pretrained="none")
    real = ex.run_exported
    monkeypatch.setattr(ex, "run_exported", lambda *a: [o + 1e-3 for o in real(*a)])
    with pytest.raises(ex.ExportError) as e:
        ex.export(model, NAMES, "onnx", str(tmp_path / "m.onnx"))
    assert "differ from PyTorch's by 1.00e-03" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.undo()
    real_import = builtins.__import__

    def no_onnx(name, *a, **k):
        if name in ("onnx", "onnxscript"):
            raise ImportError(name)
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ConfigError, match=re.escape("install the export extras: pip install -r requirements-export.txt")):
        ex.export(model, NAMES, "onnx", str(tmp_path / "n.onnx"))


def test_predict_onnx_without_torch_matches_demo(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=10)
    train_main.main(train_argv(files, tmp_path / "run", "--total_epoch", "1"))
    common = ["--dataset", "demo", "--classes", files["classes"], "--img_size", "32", "--load_from",
              str(tmp_path / "run" / "best.pth")]
    r = run_py("export.py", *common, "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"parity with PyTorch: max \|difference\| logits [0-9.e+-]+ \(limit 1e-04\)", r.stdout)
    r = run_py("export.py", *common, "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert r.returncode == 1 and "exists; pass --force" in r.stderr
    img_dir = os.path.dirname(json.loads(open(files["test"]).read())[0]["img_path"])
    r = run_py("demo.py", *common, "--img_dir", img_dir, "--topk", "2",  # float32 by default, as the ONNX file
               "--output", str(tmp_path / "demo.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    check = ("import sys, runpy; sys.argv = ['predict_onnx.py'] + sys.argv[1:]\n"
             "try:\n    runpy.run_path('predict_onnx.py', run_name='__main__')\n"
             "finally:\n    print('TORCH_IMPORTED', 'torch' in sys.modules)")
    r = run_py("-c", check, "--onnx", str(tmp_path / "m.onnx"), "--img_dir", img_dir, "--topk", "2",
               "--output", str(tmp_path / "onnx.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "TORCH_IMPORTED False" in r.stdout
    a = json.loads((tmp_path / "demo.json").read_text())
    b = json.loads((tmp_path / "onnx.json").read_text())
    assert [x["image"] for x in a] == [x["image"] for x in b] and len(a) == 10
    for x, y in zip(a, b):
        assert [l["class"] for l in x["labels"]] == [l["class"] for l in y["labels"]]
        for n in x["scores"]:
            assert abs(x["scores"][n] - y["scores"][n]) < 1e-4
