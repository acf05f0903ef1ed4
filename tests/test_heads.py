"""The head table: a third kind of head added from this file alone trains, validates and exports; no
module but the table's compares head kinds by name."""
import os
import re
import subprocess
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import main as train_main
from conftest import ROOT
from helpers import run_py, tiny_demo, train_argv
from pipeline.models import heads
from pipeline.models.csra import INF, HeadMaps, attention_maps
from pipeline.errors import ConfigError
from pipeline.models.heads import HeadKind
from pipeline.models.model import CSRANet
from utils.configuration.cli import model_kwargs


class MaxPoolHead(nn.Module):
    """A 1x1 convolution with bias, then the maximum over locations (no residual, no temperature)."""

    temperatures = [INF]

    def __init__(self, in_dim, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, num_classes, 1)
        self.lam = 0.0

    def forward(self, x):
        return self.conv(x).amax(dim=(2, 3))

    def forward_with_maps(self, x):
        s = self.conv(x)
        return HeadMaps(s.amax(dim=(2, 3)), [s], [attention_maps(s, INF)], [INF])


@pytest.fixture
def max_head(monkeypatch):
    kind = HeadKind("max", "a max-pooling head", "max_head", lambda d, c, lam: MaxPoolHead(d, c),
                    recognise=lambda sd: (sd["max_head.conv.weight"].shape[0], 0) if "max_head.conv.weight" in sd
                    else None, zoo_prefix="head.max.", default_lam=0.0, lam_help="unused")
    monkeypatch.setitem(heads.HEAD_KINDS, kind.name, kind)
    return kind


def test_a_third_head_kind_from_one_table_entry(tmp_path, max_head):
    pytest.importorskip("onnxruntime")
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    out = train_main.train(train_main.get_args(train_argv(files, tmp_path / "run", "--total_epoch", "1",
                                                          "--head", "max")))
    sd = torch.load(os.path.join(out["folder"], "best.pth"), weights_only=True)
    assert {"max_head.conv.weight", "max_head.conv.bias"} <= set(sd) and not any(k.startswith("classifier") for k in sd)
    r = run_py("val.py", "--load_from", os.path.join(out["folder"], "best.pth"))  # described by its run record
    assert r.returncode == 0, r.stderr
    assert "max head" in r.stdout and re.search(r"^mAP: [0-9.]+", r.stdout, re.M)
    r = run_py("val.py", "--load_from", os.path.join(out["folder"], "best.pth"), "--no_record", "--dataset", "demo",
               "--test_json", files["test"], "--img_size", "32")
    assert r.returncode == 1 and "checkpoint has a max-pooling head, --head is csra" in r.stderr
    r = run_py("export.py", "--load_from", os.path.join(out["folder"], "best.pth"), "--format", "onnx", "--out",
               tmp_path / "max.onnx", "--with_maps")
    assert r.returncode == 0, r.stderr
    from pipeline.weights.export import read_metadata
    assert read_metadata(str(tmp_path / "max.onnx"), "onnx")["head"] == "max"
    from tools.convert_checkpoint import convert
    zoo = convert(os.path.join(out["folder"], "best.pth"), "zoo")
    assert "head.max.conv.weight" in zoo["state_dict"]


def test_head_kinds_are_compared_by_name_in_the_table_only():
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    pattern = re.compile(r"""(==|!=|\bin)\s*\(?\s*["'](csra|gap)["']|["'](csra|gap)["']\s*(==|!=)""")
    offenders = [f"{f}:{n}" for f in files if not f.startswith(("tests/", "pipeline/models/heads.py"))
                 for n, line in enumerate(open(os.path.join(ROOT, f), encoding="utf-8"), 1) if pattern.search(line)]
    assert offenders == []


def test_every_head_is_a_head_and_the_model_keeps_the_name_users_import():
    from pipeline.models.csra import GAPHead, MultiHeadCSRA
    from pipeline.models.heads import Head
    from pipeline.models.model import CSRANet, MultiLabelNet
    for head in (GAPHead(8, 3), MultiHeadCSRA(4, 0.1, 8, 3), MaxPoolHead(8, 3)):
        assert isinstance(head, Head), type(head).__name__
        out = head.forward_with_maps(torch.randn(2, 8, 5, 5))
        assert out.logits.shape == (2, 3) and len(out.score_maps) == len(head.temperatures)
    assert not isinstance(nn.Linear(8, 3), Head)
    assert CSRANet is MultiLabelNet and isinstance(CSRANet("small_cnn", 3, img_size=32, pretrained="none").head, Head)


def test_a_head_option_of_its_own_reaches_its_head_by_name(monkeypatch):
    # a kind lists its own options with their defaults; the model passes them to its build by name (another
    # head's option is not read: GAP takes no num_heads), and model_kwargs takes them from the configuration
    built = []

    def build(d, c, lam, width):
        built.append(width)
        return MaxPoolHead(d, c)

    kind = HeadKind("widemax", "a test head", "max_head", build, recognise=lambda sd: None, zoo_prefix="head.max.",
                    options={"width": 3}, default_lam=0.0)
    monkeypatch.setitem(heads.HEAD_KINDS, kind.name, kind)
    CSRANet("small_cnn", 4, head="widemax", lam=0.0, img_size=32, pretrained="none")
    CSRANet("small_cnn", 4, head="widemax", lam=0.0, img_size=32, pretrained="none", width=5, num_heads=2)
    assert built == [3, 5]
    assert CSRANet("small_cnn", 4, head="gap", num_heads=4, img_size=32, pretrained="none").num_heads == 0
    assert CSRANet("small_cnn", 4, num_heads=4, img_size=32, pretrained="none").num_heads == 4
    with pytest.raises(ConfigError, match="'num_head' is not an option of any head"):
        CSRANet("small_cnn", 4, num_head=4, img_size=32, pretrained="none")
    with pytest.raises(TypeError):  # past the head, by name only: (num_heads, lam) were once 4th and 5th
        CSRANet("small_cnn", 4, "csra", 4, 0.2, pretrained="none")
    config = SimpleNamespace(model="small_cnn", num_cls=4, head="widemax", lam=0.0, img_size=32, num_heads=2, width=7)
    assert model_kwargs(config) == dict(model_name="small_cnn", num_classes=4, head="widemax", lam=0.0, img_size=32,
                                        width=7)
    assert model_kwargs(SimpleNamespace(**dict(vars(config), head="csra")))["num_heads"] == 2
