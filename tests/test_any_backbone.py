"""Any backbone, any weights: torchvision's families and timm models build, recognise their checkpoints,
train, evaluate and export; weight files load exactly or stop in one line; the training-free rule on an
ImageNet classifier agrees with torchvision's own forward."""
import json
import os
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from PIL import Image

import main as train_main
from helpers import run_py, tiny_demo, train_argv
from pipeline.errors import ConfigError, PretrainedWeightsError
from pipeline.models.backbones import BACKBONES, get_backbone, identify
from pipeline.models.model import CSRANet
from pipeline.weights.pretrained import create_model

STRIDE = {"vit": 16, "cnn": 8}


def first_linear_width(model: nn.Module, attribute: str) -> int:
    """The input width of the first linear layer of the provider's own classifier."""
    return next(m for m in getattr(model, attribute).modules() if isinstance(m, nn.Linear)).in_features


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_registered_backbone_builds_on_meta_with_its_feature_shape(name):
    spec = BACKBONES[name]
    with torch.device("meta"):  # the provider's model: the feature function runs on it as on CSRANet
        provider = spec.create(224)
        shapes = {size: tuple(spec.features(provider, torch.empty(2, 3, size, size)).shape) for size in (224, 448)}
    stride = STRIDE.get(spec.family, 32)
    for size, shape in shapes.items():
        assert shape == (2, spec.feat_dim, size // stride, size // stride)
    if spec.classifier:  # the width the provider's own classifier reads is the map's
        assert first_linear_width(provider, spec.classifier[0]) == spec.feat_dim
    sd = provider.state_dict()  # with its ImageNet classifier, as a file would hold it
    assert identify(sd) == name
    assert identify(sd, first="resnet18") == name


def test_regnet_y_builds_as_torchvisions_own():
    for name in ("regnet_y_400mf", "regnet_y_800mf"):
        ours, theirs = BACKBONES[name].create(224), getattr(torchvision.models, name)()
        assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
            [(k, v.shape) for k, v in theirs.state_dict().items()]


def test_unknown_models_name_close_matches(monkeypatch):
    with pytest.raises(ConfigError, match="did you mean efficientnet_b3"):
        get_backbone("efficientnet-b3")
    pytest.importorskip("timm")
    with pytest.raises(ConfigError, match=r"timm has no model 'resnet181'.*timm/resnet18"):
        get_backbone("timm/resnet181")
    monkeypatch.setitem(__import__("sys").modules, "timm", None)  # as if timm were not installed
    from pipeline.models import timm_backbones
    timm_backbones.timm_backbone.cache_clear()
    with pytest.raises(ConfigError, match="pip install timm") as e:
        get_backbone("timm/resnet34")
    assert "\n" not in str(e.value)
    timm_backbones.timm_backbone.cache_clear()


@pytest.mark.parametrize("name,fmt", [
    ("mobilenet_v2", "torchscript"), ("efficientnet_b0", "torchscript"), ("convnext_tiny", "torchscript"),
    ("swin_t", "torchscript"), ("regnet_y_400mf", "torchscript"), ("timm/resnet18", "torchscript"),
    ("timm/vit_tiny_patch16_224", "onnx")])
def test_backbone_trains_evaluates_and_exports(tmp_path, name, fmt):
    if name.startswith("timm/"):
        pytest.importorskip("timm")
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    argv = train_argv(files, tmp_path / "run", "--total_epoch", "1", "--model", name, "--img_size", "64")
    args = train_main.get_args(argv)
    out = train_main.train(args)
    with open(os.path.join(out["folder"], "log.jsonl")) as f:
        entry = json.loads(f.readline())
    assert np.isfinite(entry["train_loss"]) and 0 <= entry["mAP"] <= 100
    with open(os.path.join(out["folder"], "args.json")) as f:
        record = json.load(f)
    assert record["model"] == name and record["pretrained"] == "none"
    assert record["normalize"] == ("half" if name == "timm/vit_tiny_patch16_224" else "imagenet")
    ckpt = os.path.join(out["folder"], "best.pth")
    r = run_py("val.py", "--load_from", ckpt)  # everything from the run record
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{name}, csra head" in r.stdout and "input normalisation " + record["normalize"] in r.stdout
    target = tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt")
    r = run_py("export.py", "--load_from", ckpt, "--format", fmt, "--out", target)
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(re.search(r"logits ([0-9.e+-]+)", r.stdout).group(1)) <= 1e-4


def test_timm_model_heatmaps_and_the_done_when_command(tmp_path):
    pytest.importorskip("timm")
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    out = train_main.train(train_main.get_args(train_argv(files, tmp_path / "run", "--total_epoch", "1", "--model",
                                                          "timm/resnet18", "--pretrained", "none")))
    r = run_py("demo.py", "--load_from", os.path.join(out["folder"], "best.pth"), "--img_dir",
               os.path.dirname(json.load(open(files["test"]))[0]["img_path"]), "--heatmaps", tmp_path / "maps")
    assert r.returncode == 0, r.stderr[-2000:]
    assert any(n.endswith("_grid.png") for n in os.listdir(tmp_path / "maps"))


# --- weights from files ------------------------------------------------------------------------------
def seeded(build, seed=3):
    torch.manual_seed(seed)
    model = build()
    with torch.no_grad():  # BatchNorm statistics too, so a load that skipped them would show
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return model


def assert_loaded_exactly(file_sd, model):
    own = model.state_dict()
    for k, v in file_sd.items():
        assert torch.equal(own[k], v), k


@pytest.mark.parametrize("wrap", ["plain", "module", "state_dict", "model"])
def test_torchvision_weight_file_loads_exactly(tmp_path, wrap):
    tv = seeded(torchvision.models.mobilenet_v2)
    sd = tv.state_dict()
    obj = {"plain": sd, "module": {f"module.{k}": v for k, v in sd.items()},
           "state_dict": {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
           "model": {"model": sd, "optimizer": {}}}[wrap]
    path = tmp_path / "mnv2.pth"
    torch.save(obj, path)
    model = CSRANet("mobilenet_v2", 4, img_size=64, pretrained=str(path))
    assert_loaded_exactly({k: v for k, v in sd.items() if k.startswith("features.")}, model)
    provider = create_model(get_backbone("mobilenet_v2"), 224, str(path), keep_classifier=True)
    assert_loaded_exactly(sd, provider)  # the classifier too, for the training-free sweep


def test_timm_safetensors_and_vit_at_another_size(tmp_path):
    pytest.importorskip("timm")
    from safetensors.torch import save_file
    import timm
    net = seeded(lambda: timm.create_model("resnet18"))
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    model = CSRANet("timm/resnet18", 3, img_size=64, pretrained=str(path))
    assert_loaded_exactly({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, model)
    assert not any(k.startswith("fc.") for k in model.state_dict())  # its classifier dropped
    vit = seeded(lambda: timm.create_model("vit_tiny_patch16_224"))
    path = tmp_path / "vit.pth"
    torch.save({"state_dict": vit.state_dict()}, path)
    same = CSRANet("timm/vit_tiny_patch16_224", 3, img_size=224, pretrained=str(path))
    assert_loaded_exactly({k: v for k, v in vit.state_dict().items() if not k.startswith("head.")}, same)
    big = CSRANet("timm/vit_tiny_patch16_224", 3, img_size=448, pretrained=str(path))  # 14 x 14 -> 28 x 28
    assert big.pos_embed.shape == (1, 1 + 28 * 28, 192)
    assert torch.equal(big.pos_embed[:, 0], vit.pos_embed[:, 0]) and torch.equal(big.blocks[0].attn.qkv.weight,
                                                                                 vit.blocks[0].attn.qkv.weight)
    with torch.no_grad():
        assert big.forward_features(torch.rand(1, 3, 448, 448)).shape == (1, 192, 28, 28)


def test_wrong_weight_files_are_one_line_naming_a_key(tmp_path):
    sd = seeded(torchvision.models.mobilenet_v2).state_dict()
    cases = {
        "missing": {k: v for k, v in sd.items() if k != "features.3.conv.1.1.weight"},
        "unexpected": dict(sd, **{"features.99.weight": torch.zeros(3)}),
        "misshapen": dict(sd, **{"features.0.0.weight": torch.zeros(32, 3, 5, 5)}),
    }
    for what, bad in cases.items():
        path = tmp_path / f"{what}.pth"
        torch.save(bad, path)
        with pytest.raises(PretrainedWeightsError) as e:
            CSRANet("mobilenet_v2", 4, img_size=64, pretrained=str(path))
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg and f"1 {what}" in msg, msg
        assert {"missing": "features.3.conv.1.1.weight", "unexpected": "features.99.weight",
                "misshapen": "features.0.0.weight (32, 3, 5, 5) vs (32, 3, 3, 3)"}[what] in msg
    headless = tmp_path / "headless.pth"
    torch.save({k: v for k, v in sd.items() if not k.startswith("classifier.")}, headless)
    CSRANet("mobilenet_v2", 4, img_size=64, pretrained=str(headless))  # CSRA needs no classifier
    with pytest.raises(PretrainedWeightsError, match=r"2 missing \(classifier.1.weight.*the sweep needs the file's"):
        create_model(get_backbone("mobilenet_v2"), 224, str(headless), keep_classifier=True)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    for path, match in ((tmp_path / "junk.safetensors", "not a readable safetensors file"),
                        (tmp_path / "absent.pth", "must be imagenet, none or a weights file")):
        with pytest.raises((PretrainedWeightsError, ConfigError), match=match):
            CSRANet("mobilenet_v2", 4, img_size=64, pretrained=str(path))


def test_imagenet_without_network_names_the_file_and_the_way_out(monkeypatch):
    with pytest.raises(PretrainedWeightsError) as e:
        CSRANet("efficientnet_b3", 4, pretrained="imagenet")
    msg = str(e.value)
    assert "efficientnet_b3_rwightman-b3899882.pth" in msg and "--pretrained PATH" in msg and "\n" not in msg
    timm = pytest.importorskip("timm")

    def offline(*a, pretrained=False, **k):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(*a, **k)
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(PretrainedWeightsError) as e:
        CSRANet("timm/resnet18", 4, pretrained="imagenet")
    msg = str(e.value)
    assert "huggingface.co/timm/resnet18" in msg and "--pretrained PATH" in msg and "\n" not in msg


def test_normalisation_follows_the_weights_except_for_the_authors_backbones():
    get = train_main.get_args
    assert get(["--model", "convnext_tiny"]).normalize == "imagenet"
    assert get(["--model", "efficientnet_b3", "--dataset", "wider"]).normalize == "imagenet"
    assert get(["--model", "resnet101", "--dataset", "wider"]).normalize == "half"  # the authors' rule
    assert get(["--model", "resnet101"]).normalize == "unit"
    assert get(["--model", "convnext_tiny", "--normalize", "0.5,0.4,0.3/0.2,0.2,0.2"]).normalize == \
        "0.5,0.4,0.3/0.2,0.2,0.2"
    with pytest.raises(ConfigError, match="--normalize must be one of"):
        get(["--model", "convnext_tiny", "--normalize", "0.5/0"])
    if pytest.importorskip("timm"):
        assert get(["--model", "timm/vit_tiny_patch16_224"]).normalize == "half"  # its pretrained configuration


def test_converter_refuses_the_authors_layout_for_other_backbones(tmp_path):
    model = CSRANet("mobilenet_v2", 3, img_size=64, pretrained="none")
    path = tmp_path / "m.pth"
    torch.save(model.state_dict(), path)
    r = run_py("tools/convert_checkpoint.py", "--load_from", path, "--to", "authors", "--out", tmp_path / "a.pth")
    assert r.returncode == 1 and "no MobileNet-V2 backbone" in r.stderr and r.stderr.count("\n") == 1
    r = run_py("tools/convert_checkpoint.py", "--load_from", path, "--to", "zoo", "--out", tmp_path / "z.pth")
    assert r.returncode == 0, r.stderr


# --- the training-free rule on an ImageNet classifier --------------------------------------------------
def test_sweep_on_a_classifier_agrees_with_torchvisions_forward(tmp_path):
    rng = np.random.default_rng(0)
    images = []
    for i in range(6):
        low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        images.append(Image.fromarray(low).resize((int(rng.integers(220, 320)), int(rng.integers(220, 320))),
                                      Image.BICUBIC))
    view = torchvision.transforms.Compose([  # torchvision's own ImageNet evaluation, independently of ours
        torchvision.transforms.Resize(256), torchvision.transforms.CenterCrop(224),
        torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    x = torch.stack([view(im) for im in images])
    # random weights whose predictions depend on the pixels: BatchNorm statistics of these images, a
    # classifier with large weights, centred on their mean feature (else one class wins for every image)
    torch.manual_seed(3)
    tv = torchvision.models.mobilenet_v2()
    for m in tv.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        tv.train()(x)
        pooled = tv.eval().features(x).mean((2, 3))
        tv.classifier[1].weight.normal_(0, 1)
        tv.classifier[1].bias.copy_(-tv.classifier[1].weight @ pooled.mean(0))
        logits = tv(x)
    weights = tmp_path / "mobilenet_v2.pth"
    torch.save(tv.state_dict(), weights)
    predicted = logits.argmax(1).tolist()
    # four images in the folders of their predicted outputs, two in another's: top-1 is 4/6
    index, root = {}, tmp_path / "val"
    for i, im in enumerate(images):
        output = predicted[i] if i < 4 else (predicted[i] + 1) % 1000
        folder = f"n{output:08d}"
        index[str(output)] = [folder, f"class {output}"]
        os.makedirs(root / folder, exist_ok=True)
        im.save(root / folder / f"{i}.png")
    (tmp_path / "index.json").write_text(json.dumps(index))
    r = run_py("tools/training_free_sweep.py", "--model", "mobilenet_v2", "--pretrained", weights, "--img_dir", root,
               "--class_index", tmp_path / "index.json", "--num_workers", "0", "--lams", "0.05")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {float(m.group(1)): (float(m.group(2)), float(m.group(3))) for m in
            re.finditer(r"^\s+([0-9.]+)\s+([0-9.]+)\s+[+-][0-9.]+\s+([0-9.]+)", r.stdout, re.M)}
    assert sorted(rows) == [0.0, 0.05, 0.2]  # the plain model, the sweep, the paper's fixed lam for non-ResNets
    assert rows[0.0][0] == pytest.approx(100 * 4 / 6, abs=0.01)
    top5 = sum(int(((predicted[i] if i < 4 else (predicted[i] + 1) % 1000) in logits[i].topk(5).indices.tolist()))
               for i in range(6))
    assert rows[0.0][1] == pytest.approx(100 * top5 / 6, abs=0.01)
    assert "(plain model)" in r.stdout and "(the paper's fixed lam)" in r.stdout
    r = run_py("tools/training_free_sweep.py", "--model", "mobilenet_v2", "--img_dir", root, "--load_from", weights)
    assert r.returncode == 1 and "either --load_from" in r.stderr


def test_sweep_refuses_folders_mapped_beyond_the_models_outputs(tmp_path):
    """A folder mapped to an output the classifier does not have could never score: one line naming the
    mapping, the folder and the model's output count (mobilenet_v2: 1,000 outputs), before any image is read."""
    root = tmp_path / "val"
    (root / "n00000001").mkdir(parents=True)
    Image.new("RGB", (40, 40), (200, 10, 10)).save(root / "n00000001" / "0.png")
    (root / "n00005000").mkdir()
    sweep = ["tools/training_free_sweep.py", "--model", "mobilenet_v2", "--pretrained", "none", "--img_dir", root,
             "--num_workers", "0", "--lams", "0.05"]
    for index, needle in (
            ({"1": ["n00000001", "a"], "5000": ["n00005000", "b"]},
             f"error: --class_index {tmp_path / 'index.json'} maps folder n00005000 to output 5000, but mobilenet_v2 "
             "has 1000 outputs (0..999; 1 of 2 folders map beyond them)"),
            ({"1": ["n00000001", "a"], "-1": ["n00005000", "b"]},
             f"error: {tmp_path / 'index.json'}: n00005000 maps to output -1; outputs are numbered from 0")):
        (tmp_path / "index.json").write_text(json.dumps(index))
        r = run_py(*sweep, "--class_index", tmp_path / "index.json")
        assert r.returncode == 1 and r.stderr.strip() == needle, r.stderr[-2000:]
    for i in range(1000):  # 1,002 sorted folders: m0000..m0999 are outputs 0..999, the n* folders 1000 and 1001
        (root / f"m{i:04d}").mkdir()
    r = run_py(*sweep)
    assert r.returncode == 1 and r.stderr.strip() == ("error: the sorted folder names map folder n00000001 to output "
                                                      "1000, but mobilenet_v2 has 1000 outputs (0..999; 2 of 1002 "
                                                      "folders map beyond them)"), r.stderr[-2000:]


def test_resume_is_exact_with_stochastic_depth(tmp_path):
    """ConvNeXt drops residual branches at random while training: each step's draws are seeded from
    (seed, step, rank), so a resumed run ends with the uninterrupted run's weights."""
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)

    def run(out, *extra):
        argv = train_argv(files, tmp_path / out, "--model", "convnext_tiny", "--img_size", "64", *extra)
        return train_main.train(train_main.get_args(argv))
    run("full")
    run("part", "--total_epoch", "1")
    run("part", "--resume", str(tmp_path / "part"))
    full, part = (torch.load(tmp_path / run_ / "epoch_2.pth", weights_only=True) for run_ in ("full", "part"))
    assert all(torch.equal(full[k], part[k]) for k in full)
