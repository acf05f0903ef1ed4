"""The loss table against hand-written formulas, autograd's numerical gradients, and partial labels."""
import json
import math

import numpy as np
import pytest
import torch

import main as train_main
from engine import train_step
from helpers import run_py, tiny_demo, train_argv
from pipeline.errors import ConfigError
from pipeline.models.model import CSRANet
from pipeline.models.runtime import Runtime
from pipeline.training.losses import LOSSES, LossKind, loss_parameters, make_criterion, resolved_options


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def hand_loss(logits, targets, gamma_pos=0.0, gamma_neg=0.0, clip=0.0):
    """The formulas of the papers, one entry at a time, averaged over the known (not -1) entries."""
    total, count = 0.0, 0
    for xs, ys in zip(logits, targets):
        for x, y in zip(xs, ys):
            if y == -1:
                continue
            p = sigmoid(x)
            if y == 1:
                total += -((1 - p) ** gamma_pos) * math.log(p)
            else:
                pm = max(p - clip, 0.0)
                total += -(pm ** gamma_neg) * math.log(1 - pm)
            count += 1
    return total / count


LOGITS = [[2.0, -1.0, 0.3], [0.5, 3.0, -2.5]]
TARGETS = [[1, 0, 0], [0, 1, 1]]


@pytest.mark.parametrize("name,options,hand", [
    ("bce", {}, {}),
    ("focal", {}, {"gamma_pos": 2.0, "gamma_neg": 2.0}),                   # its defaults
    ("focal", {"gamma_pos": 1.0, "gamma_neg": 1.0}, {"gamma_pos": 1.0, "gamma_neg": 1.0}),
    ("asl", {}, {"gamma_pos": 0.0, "gamma_neg": 4.0, "clip": 0.05}),       # Ridnik et al.'s defaults
    ("asl", {"gamma_pos": 1.0, "gamma_neg": 2.0, "asl_clip": 0.2}, {"gamma_pos": 1.0, "gamma_neg": 2.0, "clip": 0.2}),
])
def test_each_loss_equals_the_hand_formula(name, options, hand):
    crit = make_criterion(name, **options)
    got = crit(torch.tensor(LOGITS, dtype=torch.float64), torch.tensor(TARGETS))
    assert got.item() == pytest.approx(hand_loss(LOGITS, TARGETS, **hand), rel=1e-12)


def test_zero_gammas_and_no_clip_are_bce_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 20, generator=g) * 30  # large logits included
    y = (torch.rand(16, 20, generator=g) < 0.3).float()
    bce = torch.nn.BCEWithLogitsLoss()(x, y)
    assert torch.equal(make_criterion("asl", gamma_pos=0, gamma_neg=0, asl_clip=0)(x, y), bce)
    assert torch.equal(make_criterion("focal", gamma_pos=0, gamma_neg=0)(x, y), bce)
    assert torch.equal(make_criterion("bce")(x, y), bce)


@pytest.mark.parametrize("name,options", [("bce", {}), ("focal", {}), ("asl", {}),
                                          ("asl", {"gamma_pos": 1.0, "gamma_neg": 3.0, "asl_clip": 0.1}),
                                          ("asl", {"gamma_neg": 0.5, "asl_clip": 0.0})])
@pytest.mark.parametrize("partial", [False, True])
def test_gradients_match_numerical_ones(name, options, partial):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(-1 if partial else 0, 2, (4, 6), generator=g)
    crit = make_criterion(name, partial_labels=partial, **options)
    assert torch.autograd.gradcheck(lambda t: crit(t, y), (x,))


def test_large_logits_stay_finite_in_float32():
    x = torch.tensor([[100.0, -100.0, 80.0, -80.0]], requires_grad=True)
    y = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    for name in ("bce", "focal", "asl"):
        loss = make_criterion(name)(x, y)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all(), name
        x.grad = None


def test_focal_takes_one_gamma():
    with pytest.raises(ConfigError, match="--loss focal uses one gamma"):
        make_criterion("focal", gamma_pos=1.0, gamma_neg=2.0)


def test_partial_labels_leave_unknowns_out_of_sum_and_count():
    t = [[1, -1, 0], [-1, 1, 1]]
    for name, hand in (("bce", {}), ("asl", {"gamma_neg": 4.0, "clip": 0.05})):
        got = make_criterion(name, partial_labels=True)(torch.tensor(LOGITS, dtype=torch.float64), torch.tensor(t))
        assert got.item() == pytest.approx(hand_loss(LOGITS, t, **hand), rel=1e-12)


def test_masked_training_equals_hand_zeroed_loss_step_for_step():
    """Two identical models: one trained with --partial_labels' loss on targets holding -1, the other with
    a loss written here that zeroes those entries' terms by hand and divides by the known count."""
    def hand_zeroed(logits, targets):
        known = (targets != -1).float()
        y = targets.clamp(min=0).float()
        terms = torch.clamp(logits, min=0) - logits * y + torch.log1p(torch.exp(-logits.abs()))  # BCE by hand
        return (terms * known).sum() / known.sum()

    g = torch.Generator().manual_seed(2)
    batches = [(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=g),
                torch.randint(-1, 2, (4, 5), generator=g)) for _ in range(5)]

    class Float64Runtime(Runtime):  # float64 models: only the float32 loss rounds (~5e-8 apart after 5 steps);
        # in float32, one thread's convolution rounding on an AMX CPU drifted past the tolerance
        def to_input(self, images):
            return super().to_input(images).double()

    runtime = Float64Runtime(torch.device("cpu"), "off", False, (0.0,) * 3, (1.0,) * 3)
    models = []
    for crit in (make_criterion("bce", partial_labels=True), hand_zeroed):
        torch.manual_seed(0)
        m = CSRANet("small_cnn", 5, num_heads=2, img_size=16, pretrained="none").double().train()
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        models.append((m, opt, crit))
    for images, targets in batches:
        losses = [train_step(m, crit, opt, images, targets, runtime) for m, opt, crit in models]
        assert losses[0] == pytest.approx(losses[1], rel=1e-6)
        for (k, a), b in zip(models[0][0].state_dict().items(), models[1][0].state_dict().values()):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), k


def test_main_trains_with_partial_labels_and_refuses_them_without_the_flag(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    records = json.loads(open(files["train"]).read())
    records[3]["target"][2] = -1
    records[5]["target"][0] = -1
    (tmp_path / "partial.json").write_text(json.dumps(records))
    argv = train_argv(dict(files, train=str(tmp_path / "partial.json")), tmp_path / "run", "--total_epoch", "1")
    r = run_py("main.py", *argv)
    assert r.returncode == 1
    assert "partial.json: record 3" in r.stderr and "class 2 has label -1" in r.stderr
    assert "-1 = unknown: pass --partial_labels" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    out = train_main.train(train_main.get_args(argv + ["--partial_labels", "--loss", "asl"]))
    record = json.loads(open(f"{out['folder']}/args.json").read())
    assert record["loss"] == "asl" and record["partial_labels"] is True
    assert (record["gamma_pos"], record["gamma_neg"], record["asl_clip"]) == (0.0, 4.0, 0.05)
    log = [json.loads(line) for line in open(f"{out['folder']}/log.jsonl")]
    assert np.isfinite(log[-1]["train_loss"]) and log[-1]["loss"] == "asl"


def test_custom_preparation_marks_unknown_labels(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    lines = []
    for i in range(10):
        from PIL import Image
        Image.new("RGB", (8, 8)).save(imgs / f"{i}.jpg")
        lines.append(f"{i}.jpg,dog;?cat")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    r = run_py("utils/prepare/prepare_custom.py", "--img_dir", imgs, "--labels", tmp_path / "labels.csv",
               "--out_dir", tmp_path / "out", "--test_split", "0.3")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "classes.txt").read_text().split() == ["cat", "dog"]
    train = json.loads((tmp_path / "out" / "train.json").read_text())
    test = json.loads((tmp_path / "out" / "test.json").read_text())
    assert all(rec["target"] == [-1, 1] for rec in train)  # unknown cat: left out of the loss
    assert all(rec["target"] == [99, 1] for rec in test)   # ... and out of the cat AP


def test_a_loss_with_a_parameter_of_its_own_gets_it_by_name(monkeypatch):
    # a registered loss declares its parameters in its defaults; make_criterion and main.py's resolution read
    # only those (another loss's --gamma_neg is not passed to it), each from the given value or its default
    seen = []

    def build(margin):
        seen.append(margin)
        return lambda x, y: (x - margin * y) ** 2

    monkeypatch.setitem(LOSSES, "margin", LossKind("margin", "test loss", {"margin": 0.5}, build))
    assert "margin" in loss_parameters() and "gamma_neg" in loss_parameters()
    x, y = torch.tensor([[2.0, 0.0]], dtype=torch.float64), torch.tensor([[1, 0]])
    assert make_criterion("margin", gamma_neg=4.0)(x, y).item() == pytest.approx(((2 - 0.5) ** 2 + 0) / 2)
    assert make_criterion("margin", margin=2.0)(x, y).item() == 0.0
    assert seen == [0.5, 2.0]
    assert resolved_options("margin", {"margin": None, "gamma_pos": 1.0}) == {"margin": 0.5}
    with pytest.raises(ConfigError, match="'gama_neg' is not a parameter of any loss"):
        make_criterion("asl", gama_neg=0.0)  # misspelt: refused, not silently the default
    with pytest.raises(TypeError):
        make_criterion("focal", 2.0)  # (once gamma_pos) never read as partial_labels
