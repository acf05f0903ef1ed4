"""The backbone table: a new backbone is one entry, and everything else follows from it."""
import math

import pytest
import torch
import torchvision

from pipeline.errors import CheckpointError, ConfigError
from pipeline.models import backbones
from pipeline.models.backbones import IMAGENET, Backbone, identify
from pipeline.models.csra import check_temperatures
from pipeline.models.model import CSRANet
from pipeline.models.runtime import legacy_normalize
from pipeline.weights.checkpoint import load_model_weights
from utils.configuration.cli import new_parser, parse_args
from utils.configuration.options import add_options


@pytest.fixture
def convnext_registered(monkeypatch):
    """ConvNeXt-Tiny added the way a contributor would: one entry in the table."""
    entry = Backbone("convnext_tiny", "ConvNeXt-Tiny", "cnn", torchvision.models.convnext_tiny,
                     torchvision.models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1, ("features",),
                     lambda m, x: m.features(x), 768, normalization=IMAGENET)
    monkeypatch.setitem(backbones.BACKBONES, entry.name, entry)
    return entry


def test_one_table_entry_is_enough_for_a_new_backbone(tmp_path, convnext_registered):
    torch.manual_seed(0)
    model = CSRANet("convnext_tiny", 5, num_heads=2, lam=0.2, img_size=64, pretrained="none").eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, 768, 2, 2)
        reference = model(x)
    # its state dict is the torchvision keys of the adopted part plus the authors' head keys
    tv_keys = {f"features.{k}" for k in torchvision.models.convnext_tiny().features.state_dict()}
    head_keys = {f"classifier.multi_head.{k}.head.weight" for k in range(2)}
    assert set(model.state_dict()) == tv_keys | head_keys
    path = tmp_path / "convnext.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    other = CSRANet("convnext_tiny", 5, num_heads=2, lam=0.2, img_size=64, pretrained="none").eval()
    info = load_model_weights(other, str(path))
    assert info["model"] == "convnext_tiny"
    with torch.no_grad():
        assert torch.equal(other(x), reference)
    assert legacy_normalize("convnext_tiny") == "imagenet"  # its own convention, for records without one
    args = parse_args(_parser(), ["--model", "convnext_tiny"])
    assert args.model == "convnext_tiny"
    # a checkpoint of another backbone is named by the table's display name
    resnet = tmp_path / "resnet.pth"
    torch.save(CSRANet("resnet18", 5, num_heads=2, img_size=64, pretrained="none").state_dict(), resnet)
    with pytest.raises(CheckpointError, match="checkpoint is a ResNet-18, --model is convnext_tiny"):
        load_model_weights(other, str(resnet))


def _parser():
    p = new_parser("test")
    add_options(p, "V")  # the model options and --dataset, as val.py has them
    return p


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vit_B16_224",
                                  "small_cnn"])
def test_every_backbone_is_recognised_from_its_keys(name):
    with torch.device("meta"):
        model = CSRANet(name, 3, img_size=448 if name.startswith("vit") else 64, pretrained="none")
    assert identify(model.state_dict()) == name
    assert identify(model.state_dict(), first="resnet18") == name


def test_dataset_and_backbone_defaults():
    from main import get_args
    a = get_args(["--dataset", "wider"])
    assert (a.img_size, a.batch_size, a.decay_every, a.num_cls, a.model) == (224, 64, 5, 14, "resnet101")
    a = get_args(["--dataset", "coco", "--model", "vit_L16_224"])
    assert (a.img_size, a.batch_size, a.decay_every, a.num_cls) == (224, 64, 5, 80)
    a = get_args(["--dataset", "demo"])
    assert (a.model, a.pretrained, a.lr, a.total_epoch, a.warmup_epoch, a.img_size, a.batch_size) == \
        ("small_cnn", "none", 0.05, 10, 1, 64, 32)
    a = get_args(["--dataset", "demo", "--lr", "0.3", "--img_size", "48"])
    assert (a.lr, a.img_size) == (0.3, 48)
    a = get_args([])
    assert (a.model, a.lr, a.total_epoch, a.warmup_epoch, a.img_size, a.batch_size, a.decay_every, a.lam) == \
        ("resnet101", 0.01, 30, 2, 448, 16, 4, 0.1)
    assert get_args(["--head", "gap"]).lam == 0.0


def test_temperature_lists_put_infinity_last():
    assert check_temperatures([1, 2, 99]) == [1.0, 2.0, math.inf]
    for bad in ([math.inf, 1.0], [1.0, math.inf, math.inf], [], [0.0]):
        with pytest.raises(ConfigError):
            check_temperatures(bad)
