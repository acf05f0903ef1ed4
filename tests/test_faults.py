"""Nothing lost, nothing silently wrong: locked run folders, exact flags, training states that belong to
their run, every writer and every malformed input ending in one line. Each parametrised table is a kind
of fault tried on every entry point it applies to."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

import main as train_main
from conftest import ROOT
from faults import broken_dir
from helpers import run_py, tiny_demo, train_argv, write_nuswide, write_openimages
from utils.runs.run_lock import LOCK_FILE


def one_line_error(r, *needles, code=1):
    """The run ended with one 'error: ...' line, the last it printed, and no traceback (progress bars
    and the header of what was loaded may come before it)."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "%|" not in ln]
    assert r.returncode == code, (r.returncode, r.stderr[-1500:])
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in r.stderr, r.stderr[-1500:]
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    files = tiny_demo(root / "data", num_train=16, num_test=8)
    train_main.main(train_argv(files, root / "run", "--total_epoch", "1"))
    return root, files


# --- locked run folders ------------------------------------------------------------------------
def test_a_second_process_cannot_train_in_a_locked_run(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=160, num_test=8)
    argv = train_argv(files, tmp_path / "run", "--total_epoch", "1", "--batch_size", "4")
    assert run_py("main.py", *argv).returncode == 0
    assert not (tmp_path / "run" / LOCK_FILE).exists()  # released at the end
    more = argv[:argv.index("--total_epoch")] + argv[argv.index("--total_epoch") + 2:] + ["--total_epoch", "3",
                                                                                           "--resume", str(tmp_path / "run")]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "main.py", *more], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "run" / LOCK_FILE).exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.02)
    assert (tmp_path / "run" / LOCK_FILE).exists(), "the first run never took the lock"
    second = run_py("main.py", *more)
    one_line_error(second, "a run is in progress there", f"process {first.pid} on")
    first.communicate(timeout=240)
    assert first.returncode == 0
    epochs = [json.loads(line)["epoch"] for line in open(tmp_path / "run" / "log.jsonl")]
    assert epochs == [1, 2, 3]


def _write_lock(folder, **holder):
    (folder / LOCK_FILE).write_text(json.dumps(dict({"started": time.time() - 7200}, **holder)))


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    import socket
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    argv = train_argv(files, tmp_path / "run", "--total_epoch", "1")
    train_main.main(argv)
    gone = subprocess.Popen(["true"])
    gone.wait()
    _write_lock(tmp_path / "run", host=socket.gethostname(), pid=gone.pid, start_time=None)
    r = run_py("main.py", *argv[:-6], "--total_epoch", "2", "--resume", argv[argv.index("--output_dir") + 1])
    assert r.returncode == 0, r.stderr[-1500:]
    assert "took over the lock" in r.stdout and "no longer running" in r.stdout
    # another host's lock: taken over once its heartbeat is old, refused while fresh
    _write_lock(tmp_path / "run", host="elsewhere", pid=1)
    r = run_py("main.py", *argv[:-6], "--total_epoch", "3", "--resume", str(tmp_path / "run"))
    one_line_error(r, "a run is in progress there", "process 1 on elsewhere")
    old = time.time() - 3600
    os.utime(tmp_path / "run" / LOCK_FILE, (old, old))
    r = run_py("main.py", *argv[:-6], "--total_epoch", "3", "--resume", str(tmp_path / "run"))
    assert r.returncode == 0 and "silent for 60 minutes" in r.stdout, r.stdout[-800:] + r.stderr[-800:]


# --- exact flags --------------------------------------------------------------------------------
@pytest.mark.parametrize("script,argv,flag", [
    ("main.py", ["--resume", "--total", "3"], "--total"),
    ("main.py", ["--dataset", "demo", "--batch", "16"], "--batch"),
    ("val.py", ["--load", "x.pth"], "--load"),
    ("demo.py", ["--load_from", "x.pth", "--img_dir", "a.jpg", "--thresh", "0.3"], "--thresh"),
    ("utils/prepare/prepare_demo.py", ["--num_tr", "5"], "--num_tr"),
    ("tools/plot_curves.py", ["run", "--ou", "x.png"], "--ou"),
    ("predict_onnx.py", ["--onnx", "m.onnx", "--img_dir", "a", "--top", "2"], "--top"),
])
def test_abbreviated_flags_are_refused_in_one_line(script, argv, flag):
    r = run_py(script, *argv)
    one_line_error(r, "unrecognized arguments", flag, code=2)


# --- a training state belongs to its run ------------------------------------------------------------
def test_a_state_from_another_run_is_refused(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    train_main.main(train_argv(files, tmp_path / "a", "--total_epoch", "1"))
    train_main.main(train_argv(files, tmp_path / "b", "--total_epoch", "1", "--num_heads", "2", "--lr", "0.02"))
    shutil.copy(tmp_path / "b" / "train_state.pth", tmp_path / "a" / "train_state.pth")
    r = run_py("main.py", *train_argv(files, tmp_path / "a", "--total_epoch", "2", "--resume", tmp_path / "a"))
    one_line_error(r, "train_state.pth belongs to run", "a training state resumes only the run that wrote it")
    # a state from before run ids: its recorded options decide
    state = torch.load(tmp_path / "b" / "train_state.pth", weights_only=True)
    state.pop("run_id")
    torch.save(state, tmp_path / "a" / "train_state.pth")
    r = run_py("main.py", *train_argv(files, tmp_path / "a", "--total_epoch", "2", "--resume", tmp_path / "a"))
    one_line_error(r, "was written by a run with --num_heads 2", "records 1")
    # the right run, but a state that does not fit the model: one line, not a load_state_dict traceback
    state = torch.load(tmp_path / "b" / "train_state.pth", weights_only=True)
    state["run_id"] = json.loads((tmp_path / "a" / "args.json").read_text())["run_id"]
    torch.save(state, tmp_path / "a" / "train_state.pth")
    r = run_py("main.py", *train_argv(files, tmp_path / "a", "--total_epoch", "2", "--resume", tmp_path / "a"))
    one_line_error(r, "does not fit this run's model and optimizer")


def test_resume_where_auto_picks_another_precision_says_so_and_may_keep_it(tmp_path):
    """A run with --amp auto resumed on another kind of machine: simulated by recording the other choice
    in its state. A note names both precisions; --amp with the old one is taken (a run with a typed
    precision still refuses another)."""
    from pipeline.models.runtime import resolve_runtime
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    train_main.main(train_argv(files, tmp_path / "a", "--total_epoch", "1"))
    here = resolve_runtime(torch.device("cpu"), "small_cnn", "auto").amp
    other = "bf16" if here == "off" else "off"
    name = {"off": "float32", "bf16": "bf16 autocast"}
    state_path = tmp_path / "a" / "train_state.pth"
    state = torch.load(state_path, weights_only=True)
    assert state["runtime"]["amp"] == here  # the state records what its steps ran in
    state["runtime"]["amp"] = other
    torch.save(state, state_path)
    r = run_py("main.py", *train_argv(files, tmp_path / "a", "--total_epoch", "2", "--resume", tmp_path / "a"))
    assert r.returncode == 0, r.stderr[-1500:]
    assert (f"note: this run's last steps trained in {name[other]} on cpu; here --amp auto picks {name[here]}"
            in r.stdout) and f"add --amp {other} to keep" in r.stdout
    r = run_py("main.py", *train_argv(files, tmp_path / "a", "--total_epoch", "3", "--amp", other,
                                      "--resume", tmp_path / "a"))
    assert r.returncode == 0, r.stderr[-1500:]
    assert f"--amp auto -> {other}" in r.stdout and "last steps trained in" not in r.stdout
    log = [json.loads(line) for line in open(tmp_path / "a" / "log.jsonl")]
    assert [e["amp"] for e in log] == [here, here, other]
    record = json.loads((tmp_path / "a" / "args.json").read_text())
    assert record["amp"] == "auto" and f"--amp auto -> {other}" in record["resume_changes"]
    train_main.main(train_argv(files, tmp_path / "b", "--total_epoch", "1", "--amp", here))
    r = run_py("main.py", *train_argv(files, tmp_path / "b", "--total_epoch", "2", "--amp", other,
                                      "--resume", tmp_path / "b"))
    one_line_error(r, f"--amp is {other} but the run in", f"was started with {here}")


# --- non-finite weights -------------------------------------------------------------------------------
def test_every_loader_refuses_non_finite_weights(trained, tmp_path):
    root, files = trained
    sd = torch.load(root / "run" / "best.pth", weights_only=True)
    sd["classifier.multi_head.0.head.weight"][0, 0] = float("nan")
    bad = tmp_path / "run" / "best.pth"
    bad.parent.mkdir()
    torch.save(sd, bad)
    shutil.copy(root / "run" / "args.json", bad.parent / "args.json")
    img = json.loads(open(files["test"]).read())[0]["img_path"]
    for script, extra in (("demo.py", ["--img_dir", img]), ("val.py", []),
                          ("export.py", ["--format", "torchscript", "--out", tmp_path / "m.pt"])):
        r = run_py(script, "--load_from", bad, *extra)
        one_line_error(r, str(bad), "NaN or infinite weights")
    assert not (tmp_path / "m.pt").exists() and not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_starting_weight_files_with_non_finite_tensors_are_refused_naming_the_tensor(trained, tmp_path):
    """--pretrained PATH (main.py and the sweep) and --cutmix PATH, .pth and .safetensors: a NaN or an
    infinity anywhere in the file stops where the file is read, naming the file and the tensor (main.py
    used to stop at the first step with 'loss is nan'; the sweep printed accuracies of NaN logits)."""
    import torchvision
    from safetensors.torch import save_file

    from pipeline.models.backbones import get_backbone
    root, files = trained
    small = get_backbone("small_cnn").create(32).state_dict()
    key = next(k for k, v in small.items() if v.is_floating_point() and v.dim() > 1)
    small[key].view(-1)[3] = float("nan")
    torch.save({"state_dict": small}, tmp_path / "small.pth")
    resnet = torchvision.models.resnet18().state_dict()
    resnet["layer2.0.bn1.running_var"][1] = float("inf")
    save_file(resnet, str(tmp_path / "resnet18.safetensors"))
    mobilenet = torchvision.models.mobilenet_v2().state_dict()
    mobilenet["classifier.1.weight"][5, 7] = float("-inf")
    torch.save(mobilenet, tmp_path / "mobilenet_v2.pth")
    (tmp_path / "val" / "n0").mkdir(parents=True)
    shutil.copy(json.loads(open(files["test"]).read())[0]["img_path"], tmp_path / "val" / "n0" / "0.png")
    cases = [
        ("main.py", train_argv(files, tmp_path / "a", "--pretrained", tmp_path / "small.pth"),
         f"--pretrained {tmp_path / 'small.pth'}: tensor {key} holds NaN or infinite values"),
        ("main.py", train_argv(files, tmp_path / "b", "--model", "resnet18", "--cutmix", tmp_path / "resnet18.safetensors"),
         f"--cutmix {tmp_path / 'resnet18.safetensors'}: tensor layer2.0.bn1.running_var holds NaN or infinite"),
        ("tools/training_free_sweep.py", ["--model", "mobilenet_v2", "--pretrained", tmp_path / "mobilenet_v2.pth",
                                          "--img_dir", tmp_path / "val", "--num_workers", "0"],
         f"--pretrained {tmp_path / 'mobilenet_v2.pth'}: tensor classifier.1.weight holds NaN or infinite values"),
    ]
    for script, argv, needle in cases:
        one_line_error(run_py(script, *argv), needle)
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_export_failure_names_the_output_not_a_temporary(trained, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    root, _ = trained
    import pipeline.weights.export as ex
    real = ex.run_exported
    monkeypatch.setattr(ex, "run_exported", lambda *a: [o + 1.0 for o in real(*a)])  # a broken exporter
    r = run_py("export.py", "--load_from", root / "run" / "best.pth", "--format", "onnx", "--out", tmp_path / "m.onnx")
    msg = one_line_error(r, str(tmp_path / "m.onnx"), "differ from PyTorch's")
    assert ".tmp" not in msg and not os.listdir(tmp_path)


# --- writers: read-only and full disks, files where folders belong -------------------------------------
def writer_cases(root, files, out):
    """(script, argv) for every entry point that writes, writing into ``out``."""
    ckpt = root / "run" / "best.pth"
    img = json.loads(open(files["test"]).read())[0]["img_path"]
    return {
        "demo --heatmaps": ("demo.py", ["--load_from", ckpt, "--img_dir", img, "--heatmaps", out / "heat"]),
        "demo --output": ("demo.py", ["--load_from", ckpt, "--img_dir", img, "--output", out / "p.json"]),
        "val --report": ("val.py", ["--load_from", ckpt, "--report", out / "rep"]),
        "val --save_scores": ("val.py", ["--load_from", ckpt, "--save_scores", out / "s.json"]),
        "plot_curves": ("tools/plot_curves.py", [root / "run", "--out", out / "c.png"]),
        "prepare_demo": ("utils/prepare/prepare_demo.py", ["--out_dir", out / "d", "--num_train", "2",
                                                           "--num_test", "2"]),
        "prepare_custom": ("utils/prepare/prepare_custom.py", ["--img_dir", os.path.dirname(img), "--labels",
                                                               root / "labels.csv", "--out_dir", out / "c",
                                                               "--test_split", "0"]),
        "prepare_openimages": ("utils/prepare/prepare_openimages.py", ["--data_path", raw_data(root) / "oi",
                                                                       "--out_dir", out / "oi"]),
        "prepare_nuswide": ("utils/prepare/prepare_nuswide.py", ["--data_path", raw_data(root) / "nus",
                                                                 "--out_dir", out / "nus"]),
        "export": ("export.py", ["--load_from", ckpt, "--format", "torchscript", "--out", out / "m.pt"]),
        "convert": ("tools/convert_checkpoint.py", ["--load_from", ckpt, "--to", "zoo", "--out", out / "z.pth"]),
        "main": ("main.py", train_argv(files, out / "run", "--total_epoch", "1")),
    }


WRITERS = ["demo --heatmaps", "demo --output", "val --report", "val --save_scores", "plot_curves", "prepare_demo",
           "prepare_custom", "prepare_openimages", "prepare_nuswide", "export", "convert", "main"]


def raw_data(root):
    """OpenImages' and NUS-WIDE's files in their own layouts, made once under ``root``."""
    if not (root / "raw").exists():
        (root / "raw").mkdir()
        write_openimages(root / "raw" / "oi")
        write_nuswide(root / "raw" / "nus")
    return root / "raw"


@pytest.fixture(scope="module")
def labels_csv(trained):
    root, files = trained
    img = json.loads(open(files["test"]).read())[0]["img_path"]
    (root / "labels.csv").write_text(f"{os.path.basename(img)},circle\n")
    return root / "labels.csv"


@pytest.mark.parametrize("kind", ["readonly", "full"])
@pytest.mark.parametrize("case", WRITERS)
def test_writers_on_a_broken_disk_are_one_line(trained, labels_csv, tmp_path, monkeypatch, kind, case):
    root, files = trained
    with broken_dir(tmp_path, kind, monkeypatch) as out:
        script, argv = writer_cases(root, files, out)[case]
        r = run_py(script, *argv)
        one_line_error(r, str(out), "not writable" if kind == "readonly" else "no space left")


@pytest.mark.parametrize("case,folder", [("demo --heatmaps", "heat"), ("val --report", "rep"), ("prepare_demo", "d"),
                                         ("prepare_custom", "c"), ("prepare_openimages", "oi"),
                                         ("prepare_nuswide", "nus"), ("main", "run")])
@pytest.mark.parametrize("where", ["the folder", "a folder above"])
def test_writers_given_a_file_for_a_folder_are_one_line(trained, labels_csv, tmp_path, case, folder, where):
    root, files = trained
    above = tmp_path / "above"
    script, argv = writer_cases(root, files, tmp_path if where == "the folder" else above / "inside")[case]
    target = tmp_path / folder if where == "the folder" else above
    target.write_text("a file, not a folder")
    r = run_py(script, *argv)
    one_line_error(r, str(target), "is a file")
    assert target.read_text() == "a file, not a folder"


# --- plot_curves writes what it prints; refuses logs that are not numbers -------------------------------
def test_plot_curves_output_names_and_bad_logs(trained, tmp_path):
    root, _ = trained
    r = run_py("tools/plot_curves.py", root / "run", "--out", tmp_path)
    assert r.returncode == 0 and f"wrote {tmp_path / 'curves.png'}" in r.stdout and (tmp_path / "curves.png").is_file()
    r = run_py("tools/plot_curves.py", root / "run", "--out", tmp_path / "fig")
    assert r.returncode == 0 and f"wrote {tmp_path / 'fig.png'}" in r.stdout and (tmp_path / "fig.png").is_file()
    (tmp_path / "bad.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": "0.5"}) + "\n")
    one_line_error(run_py("tools/plot_curves.py", tmp_path / "bad.jsonl", "--out", tmp_path / "b.png"),
                   "bad.jsonl: entry 1: train_loss is '0.5', not a finite number")


# --- malformed raw annotations and flag values ---------------------------------------------------------
def _wider(root, images):
    (root / "Annotations").mkdir(parents=True)
    (root / "Image").mkdir()
    for split in ("trainval", "test"):
        (root / "Annotations" / f"wider_attribute_{split}.json").write_text(json.dumps({"images": images}))


@pytest.mark.parametrize("images,needle", [
    (5, "no 'images' list"),
    ([{"file_name": "a.jpg", "targets": None}], "image entry 0 needs a string 'file_name' and a 'targets' list"),
    ([{"file_name": "a.jpg", "targets": [[1, 2]]}], "a.jpg person 0: expected an object"),
    ([{"file_name": "a.jpg", "targets": [{"attribute": [1] * 14, "bbox": ["1", 2, 3, 4]}]}], "four finite numbers"),
    ([{"file_name": "a.jpg", "targets": [{"attribute": [1] * 14, "bbox": [float("inf"), 2, 3, 4]}]}],
     "four finite numbers"),
])
def test_malformed_wider_annotations(tmp_path, images, needle):
    _wider(tmp_path / "W", images)
    r = run_py("utils/prepare/prepare_wider.py", "--data_path", tmp_path / "W", "--out_dir", tmp_path / "o")
    one_line_error(r, needle)


def test_coco_image_without_file_name(tmp_path):
    root = tmp_path / "C"
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / "images" / f"{split}2014").mkdir(parents=True)
        data = {"images": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1}],
                "categories": [{"id": 1, "name": "person"}]}
        (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(data))
    r = run_py("utils/prepare/prepare_coco.py", "--data_path", root, "--out_dir", tmp_path / "o")
    one_line_error(r, "image 1 has no string 'file_name'")


@pytest.mark.parametrize("script,argv,needle", [
    ("main.py", ["--dataset", "demo", "--seed", str(10 ** 30)], "--seed must be an integer in [0, 2**63)"),
    ("utils/prepare/prepare_demo.py", ["--size", "0"], "--size must be a positive integer"),
    ("utils/prepare/prepare_demo.py", ["--num_train", "0"], "--num_train must be a positive integer (got 0)"),
    ("utils/prepare/prepare_demo.py", ["--num_train", "-5"], "--num_train must be a positive integer (got -5)"),
])
def test_bad_values_are_one_line(tmp_path, script, argv, needle):
    r = run_py(script, *argv, *(["--out_dir", tmp_path / "d"] if "prepare" in script else []))
    one_line_error(r, needle)
    assert not (tmp_path / "d").exists()


def test_unlabelled_json_without_class_count_and_nan_lams(trained, tmp_path):
    root, files = trained
    records = [{"img_path": r["img_path"]} for r in json.loads(open(files["test"]).read())]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "unlabelled.json").write_text(json.dumps(records))
    r = run_py("val.py", "--test_json", tmp_path / "mine" / "unlabelled.json", "--load_from", tmp_path / "none.pth",
               "--save_scores", tmp_path / "s.json", "--model", "small_cnn")
    one_line_error(r, "unlabelled.json has no labels to count the classes from")
    train_main.main(train_argv(files, tmp_path / "gap", "--total_epoch", "1", "--head", "gap"))
    r = run_py("tools/training_free_sweep.py", "--load_from", tmp_path / "gap" / "best.pth", "--lams", "0.1,nan")
    one_line_error(r, "--lams must be finite numbers >= 0")
