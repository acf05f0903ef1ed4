"""The authors' numbers with no extra flag: float32 inference, normalisation by the checkpoint's record
or the authors' dataset rule, every WIDER person, class names from the files, one image reader, and the
authors' later ViT file recognised. Expected values are computed here with PIL, torchvision and numpy."""
import json
import os
import re

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import main as train_main
import demo as demo_script
import export as export_script
import val as val_script
from helpers import image_kinds, run_py, tiny_demo, train_argv
from pipeline.data.dataset import MultiLabelDataset, ImageTransform
from pipeline.errors import CheckpointError, ConfigError, DataError
from pipeline.images import read_rgb
from pipeline.models.model import CSRANet
from pipeline.models.runtime import resolve_runtime
from pipeline.weights.checkpoint import load_model_weights
from utils.configuration.cli import parse_args
from utils.prepare.prepare_wider import prepare as prepare_wider


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-epoch demo run trained with a non-default normalisation, so the record is what decides."""
    root = tmp_path_factory.mktemp("authors")
    files = tiny_demo(root / "data", num_train=16, num_test=12)
    train_main.main(train_argv(files, root / "run", "--total_epoch", "1", "--normalize", "half"))
    return files, root / "run"


# --- 1. float32 inference ---------------------------------------------------------------------
def test_inference_defaults_to_float32_and_training_to_auto(run):
    files, folder = run
    args = val_script.get_args(["--load_from", str(folder / "best.pth")])
    assert args.amp == "off"
    train_args = train_main.get_args(train_argv(files, folder.parent / "x"))
    assert train_args.amp == "auto" and train_args.eval_amp == "off"
    r = run_py("val.py", "--load_from", folder / "best.pth")
    assert r.returncode == 0, r.stderr
    header = next(line for line in r.stdout.splitlines() if "described by its run record" in line)
    assert "float32" in header and "opted in" not in r.stdout
    r = run_py("val.py", "--load_from", folder / "best.pth", "--amp", "bf16")
    assert r.returncode == 0, r.stderr
    assert "bf16 autocast opted in: scores differ slightly from float32" in r.stdout


def test_training_log_evaluates_in_float32(run):
    _, folder = run
    log = [json.loads(line) for line in open(folder / "log.jsonl")]
    record = json.loads((folder / "args.json").read_text())
    assert record["eval_amp"] == "off" and record["normalize"] == "half"
    assert record["runtime"]["normalize"] == "half"
    # val.py (float32 by default) on best.pth reproduces the logged mAP exactly
    r = run_py("val.py", "--load_from", folder / "best.pth")
    assert f"mAP: {log[-1]['mAP']:.2f}" in r.stdout


# --- 2. normalisation ---------------------------------------------------------------------------
def _val(argv):
    return val_script.get_args(argv)


@pytest.mark.parametrize("argv,want", [
    (["--dataset", "wider", "--model", "resnet101"], "half"),           # the authors' rule: by dataset
    (["--dataset", "coco", "--model", "vit_L16_224"], "unit"),          # ... whatever the backbone
    (["--dataset", "voc07"], "unit"),
    (["--dataset", "wider", "--model", "vit_B16_224", "--normalize", "imagenet"], "imagenet"),
])
def test_normalisation_follows_the_authors_dataset_rule_without_a_record(tmp_path, argv, want):
    assert _val(argv + ["--load_from", str(tmp_path / "theirs.pth")]).normalize == want
    assert train_main.get_args(argv).normalize == want


def test_normalisation_follows_the_record_and_reaches_the_pixels(run):
    _, folder = run
    args = _val(["--load_from", str(folder / "best.pth"), "--dataset", "custom"])  # the record still decides
    assert args.normalize == "half"
    with pytest.raises(ConfigError, match="--dataset voc07 has 20 classes"):  # other classes than the record's
        _val(["--load_from", str(folder / "best.pth"), "--dataset", "voc07"])
    rt = resolve_runtime(torch.device("cpu"), args.model, "off", False, args.normalize)
    pixels = torch.tensor([0, 51, 128, 255], dtype=torch.uint8).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    want = (np.array([0, 51, 128, 255], dtype=np.float32) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(rt.to_input(pixels)[0, 0].flatten().numpy(), want, atol=1e-6)
    with pytest.raises(ConfigError, match=re.escape("--normalize is unit but the checkpoint's run record")):
        _val(["--load_from", str(folder / "best.pth"), "--normalize", "unit"])
    assert _val(["--load_from", str(folder / "best.pth"), "--no_record", "--dataset", "demo"]).normalize == "unit"


def test_a_record_from_before_normalisation_was_recorded(tmp_path):
    rec = {"model": "vit_B16_224", "head": "csra", "num_heads": 1, "num_cls": 80, "img_size": 224, "lam": 0.3,
           "dataset": "coco"}
    (tmp_path / "args.json").write_text(json.dumps(rec))
    args = _val(["--load_from", str(tmp_path / "best.pth")])
    assert args.normalize == "half" and args.model == "vit_B16_224" and args.num_cls == 80  # what it was trained with


def test_export_metadata_carries_the_records_normalisation(run, tmp_path):
    pytest.importorskip("onnxruntime")
    _, folder = run
    out = tmp_path / "m.pt"
    r = run_py("export.py", "--load_from", folder / "best.pth", "--format", "torchscript", "--out", out)
    assert r.returncode == 0, r.stderr
    from pipeline.weights.export import read_metadata
    meta = read_metadata(str(out), "torchscript")
    assert meta["normalize"] == "half" and json.loads(meta["mean"]) == [0.5] * 3 and json.loads(meta["std"]) == [0.5] * 3
    assert json.loads(meta["classes"]) == ["circle", "square", "triangle", "cross", "ring", "bar"]


# --- 3. WIDER: every person -----------------------------------------------------------------
PERSONS = [  # (bbox, what it is)
    ([2, 3, 10, 12], "integer"),
    ([2.4, 3.6, 10.5, 7.5], "fractional"),
    ([5, 5, 0, 8], "zero width"),
    ([5, 5, 8, 0], "zero height"),
    ([30, 20, 25, 25], "partly outside"),
    ([60, 50, 10, 10], "fully outside"),
    ([-40, -30, 20, 10], "fully outside, negative corner"),
]


def make_wider(root, persons):
    (root / "Annotations").mkdir(parents=True)
    (root / "Image" / "p").mkdir(parents=True)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(root / "Image" / "p" / "a.png")
    targets = [{"attribute": [1, -1, 0] + [1] * 11, "bbox": b} for b, _ in persons]
    for split in ("trainval", "test"):
        data = {"images": [{"file_name": "p/a.png", "targets": targets}]}
        (root / "Annotations" / f"wider_attribute_{split}.json").write_text(json.dumps(data))


def authors_pixels(img_path, bbox, size):
    """The authors' loader, written here from their code: PIL crop of (x, y, x + w, y + h), then
    torchvision's Resize to a square."""
    x, y, w, h = bbox
    crop = Image.open(img_path).convert("RGB").crop((x, y, x + w, y + h))
    return np.asarray(T.Resize((size, size))(crop)).transpose(2, 0, 1)


def test_wider_keeps_every_person_with_the_authors_pixels(tmp_path):
    make_wider(tmp_path / "W", PERSONS)
    out = prepare_wider(str(tmp_path / "W"), str(tmp_path / "o"))
    records = json.loads(open(out["test"]).read())
    assert [r["bbox"] for r in records] == [[float(v) for v in b] for b, _ in PERSONS]  # all 7, in order
    assert records[0]["target"][:3] == [1, 0, 99]
    assert json.loads(open(out["trainval"]).read())[0]["target"][:3] == [1, 0, 0]
    ds = MultiLabelDataset(out["test"], ImageTransform(24, train=False, crop=False))
    img_path = tmp_path / "W" / "Image" / "p" / "a.png"
    for i, (bbox, what) in enumerate(PERSONS):
        want = authors_pixels(img_path, bbox, 24)
        got = ds[i][0].numpy()
        np.testing.assert_array_equal(got, want, err_msg=what)
        if "outside" in what and "partly" not in what or "zero" in what:
            assert got.max() == 0, what  # an empty or outside crop is black there and here


def test_wider_box_pil_refuses_is_one_line_naming_the_record(tmp_path):
    make_wider(tmp_path / "W", [([2, 3, 10, 12], "ok"), ([20, 5, -8, 6], "negative width")])
    out = prepare_wider(str(tmp_path / "W"), str(tmp_path / "o"))
    ds = MultiLabelDataset(out["test"], ImageTransform(24, train=False, crop=False))
    with pytest.raises(DataError, match=r"record 1 of .*test_wider\.json\): box \[20\.0, 5\.0, -8\.0, 6\.0\] cannot be "
                                        r"cropped"):
        ds[1]


# --- 4. class names ------------------------------------------------------------------------------
def test_class_names_survive_an_explicit_json(run, tmp_path):
    files, folder = run
    r = run_py("val.py", "--dataset", "demo", "--test_json", files["test"], "--load_from", folder / "best.pth",
               "--no_record", "--model", "small_cnn", "--img_size", "32", "--normalize", "half",
               "--save_scores", tmp_path / "s.json", "--report", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    assert "class_0" not in r.stdout and "circle" in r.stdout
    assert json.loads((tmp_path / "s.json").read_text())["classes"][0] == "circle"
    thresholds = json.loads((tmp_path / "rep" / "thresholds.json").read_text())
    assert list(thresholds["thresholds"]) == ["circle", "square", "triangle", "cross", "ring", "bar"]
    img = json.loads(open(files["test"]).read())[0]["img_path"]
    r = run_py("demo.py", "--load_from", folder / "best.pth", "--img_dir", img, "--thresholds",
               tmp_path / "rep" / "thresholds.json")
    assert r.returncode == 0, r.stderr


def test_class_names_that_contradict_the_checkpoints_record_stop(run, tmp_path):
    """The model's outputs are in its record's class order: a --classes file, or the names beside the data
    val.py scores, in another order (or with other names) would label or score every output as another class."""
    files, folder = run
    names = ["circle", "square", "triangle", "cross", "ring", "bar"]
    (tmp_path / "sorted.txt").write_text("\n".join(sorted(names)))
    (tmp_path / "same.txt").write_text("\n".join(names))
    (tmp_path / "other.txt").write_text("\n".join(names[:5] + ["pole"]))
    best = str(folder / "best.pth")
    for script, argv in (("val", ["--load_from", best]), ("demo", ["--load_from", best, "--img_dir", "x.jpg"]),
                         ("export", ["--load_from", best, "--format", "onnx", "--out", "x.onnx"])):
        get_args = {"val": val_script.get_args, "demo": demo_script.get_args,
                    "export": lambda a: parse_args(export_script.build_parser(), a)}[script]
        with pytest.raises(ConfigError, match=re.escape(f"--classes {tmp_path / 'sorted.txt'} lists the same classes "
                                                        "in another order than the checkpoint's run record "
                                                        f"{folder / 'args.json'} (class 0: 'bar' here, 'circle' there)")):
            get_args(argv + ["--classes", str(tmp_path / "sorted.txt")])
        with pytest.raises(ConfigError, match=r"lists other classes than .* \(class 5: 'pole' here, 'bar' there\)"):
            get_args(argv + ["--classes", str(tmp_path / "other.txt")])
        assert get_args(argv + ["--classes", str(tmp_path / "same.txt")]).class_names == names
    # data whose labels follow another order (its class file beside it says so)
    permuted = tmp_path / "permuted"
    permuted.mkdir()
    order = [names.index(n) for n in sorted(names)]
    records = [dict(r, target=[r["target"][i] for i in order]) for r in json.loads(open(files["test"]).read())]
    (permuted / "test.json").write_text(json.dumps(records))
    (permuted / "classes.txt").write_text("\n".join(sorted(names)))
    r = run_py("val.py", "--load_from", best, "--test_json", permuted / "test.json")
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert f"{permuted / 'test.json'}: its labels follow {permuted / 'classes.txt'}, which lists the same classes " \
           "in another order" in r.stderr
    r = run_py("val.py", "--load_from", best, "--test_json", files["test"])  # its own order: scored
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("labels,dataset,want,warned", [(20, "voc07", "aeroplane", False),
                                                        (7, "voc07", "class_0", True), (7, None, "class_0", True)])
def test_class_names_rule_without_a_names_file(tmp_path, capsys, labels, dataset, want, warned):
    path = tmp_path / "mine" / "test.json"
    path.parent.mkdir()
    path.write_text(json.dumps([{"img_path": "x.jpg", "target": [0] * labels}]))
    argv = ["--test_json", str(path), "--load_from", str(tmp_path / "m.pth"), "--num_cls", str(labels)]
    args = _val(argv + (["--dataset", dataset] if dataset else []))
    assert args.class_names[0] == want and len(args.class_names) == labels
    assert ("warning: no class names for these 7 classes" in capsys.readouterr().err) == warned
    assert args.dataset == (dataset or "custom")


# --- 5. one image reader ------------------------------------------------------------------------
def test_one_reader_gives_the_expected_pixels_for_every_kind(tmp_path):
    for name, want in image_kinds(tmp_path).items():
        got = np.asarray(read_rgb(str(tmp_path / name)))
        assert got.shape == want.shape, name
        assert np.abs(got.astype(int) - want.astype(int)).max() <= (1 if name == "cmyk.tif" else 0), name


def test_demo_and_onnx_predictor_agree_on_every_kind(run, tmp_path):
    pytest.importorskip("onnxruntime")
    _, folder = run
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    kinds = image_kinds(img_dir)
    r = run_py("export.py", "--load_from", folder / "best.pth", "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert r.returncode == 0, r.stderr
    r = run_py("demo.py", "--load_from", folder / "best.pth", "--img_dir", img_dir, "--topk", "6",
               "--output", tmp_path / "a.json")
    assert r.returncode == 0 and "skipped" not in r.stderr, r.stderr
    r = run_py("predict_onnx.py", "--onnx", tmp_path / "m.onnx", "--img_dir", img_dir, "--topk", "6",
               "--output", tmp_path / "b.json")
    assert r.returncode == 0 and "skipped" not in r.stderr, r.stderr
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert sorted(os.path.basename(x["image"]) for x in a) == sorted(kinds) == sorted(os.path.basename(x["image"]) for x in b)
    for x, y in zip(a, b):
        for n in x["scores"]:
            assert abs(x["scores"][n] - y["scores"][n]) < 1e-4, (x["image"], n)


# --- 6. the authors' later ViT file ----------------------------------------------------------------
def test_authors_biased_vit_heads_are_named_not_listed(tmp_path):
    sd = {"cls_token": torch.zeros(1, 1, 8), "pos_embed": torch.zeros(1, 785, 8), "head.weight": torch.zeros(80, 8),
          "head.bias": torch.zeros(80)}
    for k in range(1, 9):
        sd[f"head{k}.weight"], sd[f"head{k}.bias"] = torch.zeros(80, 8), torch.zeros(80)
    path = tmp_path / "vit_L16_224_coco_head8_86.5.pth"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    model = CSRANet("small_cnn", 80, num_heads=8, img_size=32, pretrained="none")
    with pytest.raises(CheckpointError) as e:
        load_model_weights(model, str(path))
    msg = str(e.value)
    assert "\n" not in msg and "8 heads with biases" in msg and "head1.weight/bias ... head8.weight/bias" in msg
    assert "[1, 785, 8]" in msg and "cannot be loaded faithfully" in msg and "missing" not in msg


def test_vit_checkpoint_at_the_requested_size_loads_without_interpolation(tmp_path):
    torch.manual_seed(0)
    trained = CSRANet("vit_B16_224", 3, num_heads=1, img_size=448, pretrained="none")
    sd = trained.state_dict()
    sd["encoder.pos_embedding"] = torch.randn(1, 785, 768)  # any interpolation would change these values
    torch.save(sd, tmp_path / "vit448.pth")
    fresh = CSRANet("vit_B16_224", 3, num_heads=1, img_size=448, pretrained="none")
    load_model_weights(fresh, str(tmp_path / "vit448.pth"))
    assert torch.equal(fresh.encoder.pos_embedding, sd["encoder.pos_embedding"])
