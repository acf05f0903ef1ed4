"""Backbones, initialisation and the one checkpoint loader (SPEC section 6)."""
import os
import pickle
from urllib.parse import urlparse

import pytest
import torch
import torchvision

from pipeline.errors import CheckpointError, PretrainedWeightsError
from pipeline.models.model import CSRANet
from pipeline.weights.checkpoint import load_model_weights
from utils.runs.train_state import FORMAT as TRAIN_STATE_FORMAT


def spelled_out_state_dict(num_heads=2, num_classes=5, depth=18, seed=0):
    """An authors'-layout checkpoint: torchvision's backbone keys, no fc.*, and
    classifier.multi_head.<k>.head.weight of shape (C, 512, 1, 1), named by hand."""
    torch.manual_seed(seed)
    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    sd = {k: v.clone() for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    for k in range(num_heads):
        sd[f"classifier.multi_head.{k}.head.weight"] = torch.randn(num_classes, 512, 1, 1)
    return sd


def toolbox_layout(sd):
    out = {}
    for k, v in sd.items():
        if k.startswith("classifier.multi_head."):
            idx = k.split(".")[2]
            out[f"head.csra_heads.{idx}.head.weight"] = v
        else:
            out[f"backbone.{k}"] = v
    return {"state_dict": out, "meta": {"epoch": 30, "mmcls_version": "0.x", "CLASSES": ["a", "b"]}}


def new_model(**kw):
    args = dict(model_name="resnet18", num_classes=5, num_heads=2, lam=0.3, img_size=64, pretrained="none")
    args.update(kw)
    return CSRANet(**args).eval()


def test_model_state_dict_uses_authors_layout():
    keys = set(new_model().state_dict())
    assert keys == set(spelled_out_state_dict())


@pytest.mark.parametrize("layout", ["authors", "module", "toolbox", "train_state"])
def test_every_layout_gives_identical_logits(tmp_path, layout):
    sd = spelled_out_state_dict()
    obj = {
        "authors": sd,
        "module": {f"module.{k}": v for k, v in sd.items()},
        "toolbox": toolbox_layout(sd),
        "train_state": {"format": TRAIN_STATE_FORMAT, "model": sd, "epoch": 3, "iter": 0},
    }[layout]
    path = tmp_path / f"{layout}.pth"
    torch.save(obj, path)
    reference = new_model()
    reference.load_state_dict(sd)
    model = new_model()
    load_model_weights(model, str(path))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize("kw,sd_kw,message", [
    (dict(num_heads=1), dict(num_heads=6), "checkpoint has 6 heads, --num_heads is 1"),
    (dict(num_classes=20), dict(num_classes=80), "checkpoint has 80 classes, --num_cls is 20"),
    (dict(), dict(depth=34), "checkpoint is a ResNet-34, --model is resnet18"),
    (dict(head="gap"), dict(), "checkpoint has a CSRA head, --head is gap"),
])
def test_mismatch_is_one_clear_line(tmp_path, kw, sd_kw, message):
    path = tmp_path / "ckpt.pth"
    torch.save(spelled_out_state_dict(**sd_kw), path)
    with pytest.raises(CheckpointError) as e:
        load_model_weights(new_model(**kw), str(path))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_file_and_garbage(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model_weights(new_model(), str(tmp_path / "absent.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_model_weights(new_model(), str(bad))
    good = tmp_path / "good.pth"
    torch.save(spelled_out_state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model_weights(new_model(), str(truncated))


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = str(marker)
    path = tmp_path / "evil.pth"
    sd = spelled_out_state_dict()
    sd["__payload__"] = exploit
    torch.save(sd, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refused"):
        load_model_weights(new_model(), str(path))
    assert not marker.exists()


def test_imagenet_weights_from_cache(tmp_path):
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(9)
    tv = torchvision.models.resnet18(weights=None)
    torch.save(tv.state_dict(), os.path.join(folder, os.path.basename(urlparse(weights.url).path)))
    model = CSRANet("resnet18", 5, img_size=64, pretrained="imagenet")
    assert torch.equal(model.conv1.weight, tv.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, tv.layer4[1].bn2.running_var)


def test_imagenet_weights_offline_error():
    with pytest.raises(PretrainedWeightsError) as e:
        CSRANet("resnet18", 5, pretrained="imagenet")
    msg = str(e.value)
    assert "resnet18-" in msg and "--pretrained none" in msg and "\n" not in msg


def test_cutmix_file_with_module_prefix_and_fc(tmp_path):
    torch.manual_seed(11)
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "cutmix.pth"
    torch.save({f"module.{k}": v for k, v in tv.state_dict().items()}, path)  # includes fc.*
    model = CSRANet("resnet18", 5, img_size=64, pretrained="none", cutmix=str(path))
    assert torch.equal(model.layer2[0].conv1.weight, tv.layer2[0].conv1.weight)
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(PretrainedWeightsError, match="not a resnet18 state dict"):
        CSRANet("resnet18", 5, pretrained="none", cutmix=str(path))


def test_resnet_feature_sizes():
    model = new_model()
    for size, grid in ((64, 2), (224, 7), (96, 3)):
        with torch.no_grad():
            assert model.forward_features(torch.rand(1, 3, size, size)).shape[-2:] == (grid, grid)


def test_vit_drops_class_token_and_interpolates_positions():
    torch.manual_seed(0)
    vit = CSRANet("vit_B16_224", 14, num_heads=1, img_size=448, pretrained="none").eval()
    assert vit.encoder.pos_embedding.shape == (1, 1 + 28 * 28, 768)
    with torch.no_grad():
        feats = vit.forward_features(torch.rand(1, 3, 448, 448))
        assert feats.shape == (1, 768, 28, 28)
        assert vit(torch.rand(1, 3, 224, 224)).shape == (1, 14)  # other sizes interpolate on the fly


def test_vit_checkpoint_at_other_resolution_loads(tmp_path):
    src = CSRANet("vit_B16_224", 3, img_size=224, pretrained="none")
    path = tmp_path / "vit.pth"
    torch.save(src.state_dict(), path)
    dst = CSRANet("vit_B16_224", 3, img_size=448, pretrained="none")
    load_model_weights(dst, str(path))
    assert dst.encoder.pos_embedding.shape == (1, 785, 768)
    assert torch.equal(dst.encoder.pos_embedding[:, 0], src.encoder.pos_embedding[:, 0])


def test_unknown_model_and_heads():
    with pytest.raises(ValueError, match="unknown --model"):
        CSRANet("resnet7", 5, pretrained="none")
    with pytest.raises(ValueError, match="1, 2, 4, 6, 8"):
        CSRANet("resnet18", 5, num_heads=5, pretrained="none")
