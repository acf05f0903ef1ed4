"""Export to ONNX and TorchScript with checked parity, and the torch-free ONNX predictor."""
import ast
import builtins
import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import main as train_main
from conftest import ROOT
from helpers import image_kinds, run_py, tiny_demo, train_argv
from pipeline.errors import ConfigError
from pipeline.models.model import CSRANet
from pipeline.weights import export as ex

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


def test_a_confident_models_classes_are_listed_in_the_same_order_by_demo_and_predict_onnx(tmp_path):
    """Both order classes by logit: float32's sigmoid is 1.0 from a logit of ~17 (float64's from ~37), and demo.py
    listed a confident model's saturated classes by class index where predict_onnx.py listed them by logit."""
    from predict_onnx import label_record, probabilities
    logits = [40.0, 17.0, 20.0, 38.0]
    p = probabilities(np.array(logits, dtype=np.float32))
    assert p[0] == p[3] == 1.0  # tied, even in float64
    rec = label_record("x.jpg", list("abcd"), p.tolist(), [0.5] * 4, topk=4, logits=logits)
    assert [e["class"] for e in rec["top"]] == [e["class"] for e in rec["labels"]] == ["a", "d", "c", "b"]
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=10)
    train_main.main(train_argv(files, tmp_path / "run", "--total_epoch", "1"))
    sd = torch.load(tmp_path / "run" / "best.pth", weights_only=True)
    for k in ("small_cnn.stage3.1.1.weight", "small_cnn.stage3.1.1.bias"):
        sd[k] = sd[k] * 1000  # the last feature map 1000 times larger: the logits too (a very confident model)
    sd["classifier.multi_head.0.head.weight"] *= -1  # (and very sure of the classes it was sure against)
    (tmp_path / "sure").mkdir()
    torch.save(sd, tmp_path / "sure" / "best.pth")
    shutil.copy(tmp_path / "run" / "args.json", tmp_path / "sure" / "args.json")
    model = str(tmp_path / "sure" / "best.pth")
    assert run_py("export.py", "--load_from", model, "--format", "onnx", "--out", tmp_path / "m.onnx").returncode == 0
    img_dir = os.path.dirname(json.loads(open(files["test"]).read())[0]["img_path"])
    r = run_py("demo.py", "--load_from", model, "--img_dir", img_dir, "--topk", "6", "--output", tmp_path / "a.json")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_py("predict_onnx.py", "--onnx", tmp_path / "m.onnx", "--img_dir", img_dir, "--topk", "6", "--output",
               tmp_path / "b.json")
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert sum(1 for x in a for s in x["scores"].values() if s == 1.0) > 10  # saturated (to 6 decimals)
    assert [[e["class"] for e in x["top"]] for x in a] == [[e["class"] for e in y["top"]] for y in b]


# --- predict_onnx.py stands alone ------------------------------------------------------------------------
STANDALONE_PACKAGES = ("numpy", "pillow", "onnxruntime")


def test_predict_onnx_imports_only_numpy_pillow_onnxruntime_and_the_standard_library():
    tree = ast.parse(open(os.path.join(ROOT, "predict_onnx.py")).read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    outside = sorted(m for m in imported if m not in sys.stdlib_module_names)
    assert outside == ["PIL", "numpy", "onnxruntime"]


def test_predictor_options_are_the_option_tables_rows():
    """The options predict_onnx.py shares with demo.py are declared as the table's rows declare them
    (it cannot import the table), and refuse the same values with the same line."""
    import predict_onnx
    from utils.configuration.options import BY_NAME, CHECKS
    shared = sorted(n for n in predict_onnx.OPTIONS if n in BY_NAME)
    assert shared == ["batch_size", "img_dir", "output", "threshold", "thresholds", "topk"]
    assert all("D" in BY_NAME[n].scripts for n in shared)
    for name in shared:
        row, mine = BY_NAME[name].settings("D"), dict(predict_onnx.OPTIONS[name])
        if name == "batch_size":  # the row's help says "(the dataset's)": a model file alone has no dataset
            assert row.pop("help").startswith(mine.pop("help"))
        assert mine == row, name
    assert sorted(predict_onnx.CHECKS) == sorted(n for n in shared if n in CHECKS)
    for name, (ok, what) in predict_onnx.CHECKS.items():
        assert what == CHECKS[name][1]
        assert [ok(v) for v in (-1, 0, 0.5, 1, 2)] == [CHECKS[name][0](v) for v in (-1, 0, 0.5, 1, 2)], name


@pytest.mark.parametrize("flags,line", [(["--topk", "0"], "error: --topk must be a positive integer (got 0)"),
                                        (["--threshold", "1.5"], "error: --threshold must be in [0, 1] (got 1.5)"),
                                        (["--batch_size", "0"], "error: --batch_size must be a positive integer (got 0)"),
                                        (["--output", "p.txt"], "error: --output must end in .json or .csv")])
def test_predictor_and_demo_refuse_a_bad_value_with_the_same_line(flags, line):
    common = ["--img_dir", "nowhere", *flags]
    demo = run_py("demo.py", "--load_from", "nothing.pth", *common)
    onnx = run_py("predict_onnx.py", "--onnx", "nothing.onnx", *common)
    assert demo.returncode == onnx.returncode != 0
    assert demo.stderr.strip().splitlines()[-1].startswith(line)
    assert onnx.stderr.strip().splitlines()[-1].startswith(line)


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory):
    """A Python with numpy, pillow and onnxruntime only (no torch, not this repository): a fresh virtual
    environment, made once per test session from the package registry."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"cannot make a virtual environment: {(made.stderr.strip().splitlines() or ['?'])[-1]}")
    python = venv / "bin" / "python"
    try:
        got = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              *STANDALONE_PACKAGES], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.skip("pip took over 15 minutes to install numpy, pillow and onnxruntime")
    if got.returncode:
        last = (got.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"pip cannot install numpy, pillow and onnxruntime from the package registry here ({last})")
    return python


def run_bare(python, *args, cwd):
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(cwd), "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(python), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A demo model trained here and exported to ONNX, images of every kind (and a broken file), and
    demo.py's JSON and CSV predictions on them."""
    root = tmp_path_factory.mktemp("served")
    files = tiny_demo(root / "data", num_train=16, num_test=6)
    train_main.main(train_argv(files, root / "run"))
    r = run_py("export.py", "--load_from", root / "run" / "best.pth", "--format", "onnx", "--out", root / "m.onnx")
    assert r.returncode == 0, r.stderr[-2000:]
    images = root / "images"
    images.mkdir()
    image_kinds(images)
    for rec in json.loads(open(files["test"]).read()):
        shutil.copy(rec["img_path"], images)
    (images / "broken.jpg").write_bytes(b"not a picture")
    demo = {}
    for ext in ("json", "csv"):
        r = run_py("demo.py", "--load_from", root / "run" / "best.pth", "--img_dir", images, "--topk", "3",
                   "--output", root / f"demo.{ext}")
        assert r.returncode == 0, r.stderr[-2000:]
        demo[ext] = (root / f"demo.{ext}").read_text()
    return root, images, demo, r.stderr


def test_predict_onnx_copied_beside_its_model_runs_without_torch_or_the_repository(bare_python, served, tmp_path):
    root, images, demo, demo_err = served
    serving = tmp_path / "serving"
    serving.mkdir()
    shutil.copy(os.path.join(ROOT, "predict_onnx.py"), serving)
    shutil.copy(root / "m.onnx", serving / "csra.onnx")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = run_bare(bare_python, "-c", "import importlib.util as u; print([m for m in ('torch', 'pipeline', "
                     "'utils', 'predict_onnx') if u.find_spec(m)])", cwd=elsewhere)
    assert probe.stdout.strip() == "[]", probe.stderr  # nothing of torch or of this repository to import
    out = {}
    for ext in ("json", "csv"):
        r = run_bare(bare_python, serving / "predict_onnx.py", "--onnx", serving / "csra.onnx", "--img_dir", images,
                     "--topk", "3", "--output", tmp_path / f"onnx.{ext}", cwd=elsewhere)
        assert r.returncode == 0, r.stderr[-2000:]
        out[ext] = (tmp_path / f"onnx.{ext}").read_text()
    assert f"warning: skipped {images / 'broken.jpg'}: cannot read image" in r.stderr
    assert f"warning: skipped {images / 'broken.jpg'}: cannot read image" in demo_err
    a, b = json.loads(demo["json"]), json.loads(out["json"])
    assert [x["image"] for x in a] == [x["image"] for x in b] and len(a) == 7 + 6
    for x, y in zip(a, b):
        assert [e["class"] for e in x["labels"]] == [e["class"] for e in y["labels"]], x["image"]
        assert [e["class"] for e in x["top"]] == [e["class"] for e in y["top"]], x["image"]
        assert max(abs(x["scores"][n] - y["scores"][n]) for n in x["scores"]) < 1e-4, x["image"]
    rows_a, rows_b = (list(csv.reader(io.StringIO(t))) for t in (demo["csv"], out["csv"]))
    assert rows_a[0] == rows_b[0] and [r[:2] for r in rows_a] == [r[:2] for r in rows_b]  # header, images, labels
    for ra, rb in zip(rows_a[1:], rows_b[1:]):
        assert np.abs(np.array(ra[3:], float) - np.array(rb[3:], float)).max() < 1e-4


def test_predict_onnx_alone_stops_with_one_line(bare_python, served, tmp_path):
    root, images, _, _ = served
    shutil.copy(os.path.join(ROOT, "predict_onnx.py"), tmp_path)
    for args, want in ((["--onnx", root / "m.onnx", "--img_dir", tmp_path / "nowhere"], "nowhere: no such file or folder"),
                       (["--onnx", tmp_path / "none.onnx", "--img_dir", images], "cannot load the ONNX model"),
                       (["--onnx", root / "m.onnx", "--img_dir", images, "--topk", "9"],
                        "--topk is 9 but there are only 6 classes"),
                       (["--onnx", root / "m.onnx", "--img_dir", images, "--thresholds", images / "rgb8.png"],
                        "rgb8.png: not UTF-8 text")):
        r = run_bare(bare_python, tmp_path / "predict_onnx.py", *args, cwd=tmp_path)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 1 and last.startswith("error: ") and want in last and "Traceback" not in r.stderr, r.stderr
