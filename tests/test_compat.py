"""What the authors' users already have works unchanged: their ViT checkpoints, their WIDER layout,
their crops and pixels, their P/R convention; and one converter between all layouts."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import run_py
from pipeline.data.dataset import ImageReading, ImageTransform, MultiLabelDataset
from pipeline.models.model import CSRANet
from pipeline.weights.checkpoint import load_model_weights, rename_vit
from tools.convert_checkpoint import convert
from utils.evaluation.metrics import evaluate


def authors_vit_state_dict(tv_sd, depth=12):
    """The authors' ViT-CSRA names, spelled out here from their model definition (timm style)."""
    out = {"cls_token": tv_sd["class_token"], "pos_embed": tv_sd["encoder.pos_embedding"],
           "patch_embed.proj.weight": tv_sd["conv_proj.weight"], "patch_embed.proj.bias": tv_sd["conv_proj.bias"],
           "norm.weight": tv_sd["encoder.ln.weight"], "norm.bias": tv_sd["encoder.ln.bias"]}
    for i in range(depth):
        tv = f"encoder.layers.encoder_layer_{i}."
        for p in ("weight", "bias"):
            out[f"blocks.{i}.norm1.{p}"] = tv_sd[tv + f"ln_1.{p}"]
            out[f"blocks.{i}.attn.qkv.{p}"] = tv_sd[tv + f"self_attention.in_proj_{p}"]
            out[f"blocks.{i}.attn.proj.{p}"] = tv_sd[tv + f"self_attention.out_proj.{p}"]
            out[f"blocks.{i}.norm2.{p}"] = tv_sd[tv + f"ln_2.{p}"]
            out[f"blocks.{i}.mlp.fc1.{p}"] = tv_sd[tv + f"mlp.0.{p}"]
            out[f"blocks.{i}.mlp.fc2.{p}"] = tv_sd[tv + f"mlp.3.{p}"]
    return out


@pytest.fixture(scope="module")
def vit_reference():
    torch.manual_seed(0)
    model = CSRANet("vit_B16_224", 14, num_heads=1, lam=0.3, img_size=224, pretrained="none").eval()
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def test_authors_vit_checkpoint_loads_with_identical_logits(tmp_path, vit_reference):
    model, sd = vit_reference
    theirs = authors_vit_state_dict(sd)
    theirs["classifier.multi_head.0.head.weight"] = sd["classifier.multi_head.0.head.weight"]
    assert len(theirs) == len(sd)
    path = tmp_path / "their_vit.pth"
    torch.save({f"module.{k}": v for k, v in theirs.items()}, path)  # saved from DataParallel
    loaded = CSRANet("vit_B16_224", 14, num_heads=1, lam=0.3, img_size=224, pretrained="none").eval()
    load_model_weights(loaded, str(path))
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    big = CSRANet("vit_B16_224", 14, num_heads=1, lam=0.3, img_size=448, pretrained="none")
    load_model_weights(big, str(path))  # position embeddings resized as for ours
    assert big.encoder.pos_embedding.shape == (1, 1 + 28 * 28, 768)
    assert set(rename_vit(sd, "to_timm")) == set(theirs)


def test_converter_round_trips_are_lossless(tmp_path):
    torch.manual_seed(1)
    model = CSRANet("resnet18", 5, num_heads=4, img_size=64, pretrained="none")
    ours = tmp_path / "ours.pth"
    torch.save(model.state_dict(), ours)
    paths = {"ours": ours}
    for src, dst in (("ours", "authors"), ("authors", "zoo"), ("zoo", "ours2")):
        out = tmp_path / f"{dst}.pth"
        r = run_py("tools/convert_checkpoint.py", "--load_from", str(paths[src]), "--to", dst.rstrip("2"),
                   "--out", str(out))
        assert r.returncode == 0, r.stderr
        paths[dst] = out
    zoo = torch.load(paths["zoo"], weights_only=True)
    assert "backbone.layer4.1.bn2.running_var" in zoo["state_dict"]
    assert "head.csra_heads.3.head.weight" in zoo["state_dict"] and zoo["meta"]["num_heads"] == 4
    back = torch.load(paths["ours2"], weights_only=True)
    original = model.state_dict()
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in original)
    before = paths["zoo"].read_bytes()
    r = run_py("tools/convert_checkpoint.py", "--load_from", str(ours), "--to", "zoo", "--out", str(paths["zoo"]))
    assert r.returncode == 1 and "exists; pass --force" in r.stderr and paths["zoo"].read_bytes() == before


def test_vit_converts_to_the_authors_names_and_back(vit_reference):
    _, sd = vit_reference
    theirs = convert_in_memory(sd, "authors")
    assert "blocks.11.mlp.fc2.bias" in theirs and "cls_token" in theirs and "class_token" not in theirs
    back = rename_vit(theirs, "to_torchvision")
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def convert_in_memory(sd, to):
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.pth")
        torch.save(sd, path)
        return convert(path, to)


# --- WIDER ------------------------------------------------------------------------------------
def make_wider(root, folder):
    (root / folder).mkdir(parents=True)
    (root / "Image" / "p").mkdir(parents=True)
    Image.new("RGB", (40, 30), "red").save(root / "Image" / "p" / "a.jpg")
    for split in ("trainval", "test"):
        data = {"images": [{"file_name": "p/a.jpg", "targets": [{"attribute": [1] * 14, "bbox": [1, 2, 10, 12]}]}]}
        (root / folder / f"wider_attribute_{split}.json").write_text(json.dumps(data))


def test_wider_accepts_the_authors_annotations_folder(tmp_path):
    make_wider(tmp_path / "W", "Annotations")
    r = run_py("utils/prepare/prepare_wider.py", "--data_path", str(tmp_path / "W"), "--out_dir", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "o" / "test_wider.json").read_text())[0]["bbox"] == [1, 2, 10, 12]
    (tmp_path / "E").mkdir()
    (tmp_path / "E" / "Image").mkdir()
    r = run_py("utils/prepare/prepare_wider.py", "--data_path", str(tmp_path / "E"), "--out_dir", str(tmp_path / "o2"))
    assert r.returncode == 1
    assert "wider_attribute_trainval.json: not found; tried" in r.stderr
    assert os.path.join("E", "Annotations") in r.stderr and os.path.join("E", "Anno") in r.stderr


def one_record(tmp_path, img, bbox):
    path = tmp_path / "w.json"
    path.write_text(json.dumps([{"img_path": str(img), "target": [1], "bbox": bbox}]))
    return MultiLabelDataset(str(path), ImageTransform(16, train=False))


@pytest.mark.parametrize("bbox", [[2.5, 3.4, 10.6, 7.5], [0.49, 0.5, 20.51, 17.5], [1.5, 2.5, 3.5, 4.5],
                                  [30.2, 20.7, 15.0, 15.0]])
def test_wider_crop_is_pils_crop_of_the_fractional_box(tmp_path, bbox):
    rng = np.random.default_rng(0)
    img_path = tmp_path / "p.png"
    Image.fromarray(rng.integers(0, 256, (31, 41, 3), dtype=np.uint8)).save(img_path)
    x, y, w, h = bbox
    want = Image.open(img_path).convert("RGB").crop((x, y, x + w, y + h))  # the authors' loader
    got = one_record(tmp_path, img_path, bbox).load_image(0)
    assert got.size == want.size
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# --- metric conventions and pixels ----------------------------------------------------------------
def test_authors_pr_convention_by_hand():
    # class 0: predicted twice (1 right), 2 positives; class 1: never predicted, 1 positive
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.3]])
    targets = np.array([[1, 0], [0, 1], [1, 0]])
    ours, theirs = evaluate(scores, targets), evaluate(scores, targets, pr_convention="authors")
    assert ours.overall["OP"] == pytest.approx(100 * 1 / 2)  # 1 right of 2 predicted
    assert theirs.overall["OP"] == pytest.approx(100 * 1 / 3)  # the empty class counts one predicted
    assert ours.overall["CP"] == theirs.overall["CP"] == pytest.approx(100 * (1 / 2 + 0 / 1) / 2)
    assert ours.overall["OR"] == theirs.overall["OR"] == pytest.approx(100 * 1 / 3)


def test_evaluation_pixels_are_a_plain_pil_resize(tmp_path):
    rng = np.random.default_rng(2)
    big = tmp_path / "big.jpg"
    Image.fromarray(rng.integers(0, 256, (2000, 1412, 3), dtype=np.uint8)).resize((1412, 2000)).save(big, quality=90)
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"img_path": str(big), "target": [1]}]))
    exact = MultiLabelDataset(str(path), ImageTransform(64, train=False))[0][0]
    want = np.asarray(Image.open(big).convert("RGB").resize((64, 64), Image.BILINEAR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(exact.numpy(), want)
    fast = MultiLabelDataset(str(path), ImageTransform(64, train=False), reading=ImageReading(fast_decode=True))[0][0]
    assert not torch.equal(fast, exact)  # the opt-in draft decoding does change pixels
