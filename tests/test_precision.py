"""Every precision runs, and is tested, on CPU: the head's float32 islands under autocast, training
steps and evaluation in off / bf16 / fp16, and the runtime decision."""
import math

import numpy as np
import pytest
import torch

import main as train_main
from engine import predict, score_batches, train_step
from helpers import tiny_demo, train_argv
from pipeline.data.dataset import ImageTransform, MultiLabelDataset
from pipeline.errors import ConfigError
from pipeline.models.csra import MultiHeadCSRA
from pipeline.models.model import CSRANet
from pipeline.models.runtime import Runtime, cpu_has_native_bf16, resolve_runtime
from test_csra_head import SPEC_TEMPS, head_weights, reference_logits

CPU = torch.device("cpu")


def runtime(amp, channels_last=False):
    return Runtime(CPU, amp, channels_last, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@pytest.mark.parametrize("num_heads", [1, 2, 4, 6, 8])
def test_head_under_bf16_autocast_matches_float64(num_heads):
    """Features arrive in bf16 (the backbone ran under autocast); normalisation, the softmax over
    784 locations at T up to 7 and the sums must still be float32: within 1e-4 of float64."""
    torch.manual_seed(num_heads)
    head = MultiHeadCSRA(num_heads, 0.5, in_dim=16, num_classes=3)
    x = (torch.randn(2, 16, 28, 28) * 3).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head(x)
        out = head.forward_with_maps(x)
    assert got.dtype == torch.float32
    want = reference_logits(x.double().numpy(), head_weights(head), SPEC_TEMPS[num_heads], 0.5)
    np.testing.assert_allclose(got.detach().numpy(), want, atol=1e-4, rtol=0)
    for att in out.attention:
        assert att.dtype == torch.float32
        np.testing.assert_allclose(att.sum(dim=(2, 3)).detach().numpy(), 1.0, atol=1e-6)


def test_bf16_softmax_would_lose_the_small_weights():
    """Why the float32 island exists: the same softmax in bf16 is off by far more than 1e-4."""
    torch.manual_seed(0)
    s = torch.randn(2, 3, 784) * 3
    exact = (torch.softmax(7 * s.double(), -1) * s.double()).sum(-1)
    sb = s.bfloat16()
    lossy = (torch.softmax(7 * sb, -1) * sb).sum(-1).double()
    assert (lossy - exact).abs().max() > 1e-3


def _batch(n=8, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    targets = (torch.rand(n, 6, generator=g) > 0.5).long()
    images[targets[:, 0] == 1, 0] = 255  # something learnable
    return images, targets


@pytest.mark.parametrize("amp,channels_last", [("off", False), ("bf16", True), ("bf16", False), ("fp16", False)])
def test_training_steps_in_every_precision(amp, channels_last):
    torch.manual_seed(0)
    rt = runtime(amp, channels_last)
    model = rt.prepare_model(CSRANet("small_cnn", 6, img_size=24, pretrained="none"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = rt.grad_scaler()
    assert scaler.is_enabled() == (amp == "fp16")
    criterion = torch.nn.BCEWithLogitsLoss()
    images, targets = _batch(size=24)
    losses = [train_step(model.train(), criterion, opt, images, targets, rt, scaler) for _ in range(8)]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert "classifier.multi_head.0.head.weight" in changed and "small_cnn.stem.0.weight" in changed


@pytest.mark.parametrize("amp,tol", [("bf16", 0.03), ("fp16", 0.005)])
def test_evaluation_scores_close_to_float32(tmp_path, amp, tol):
    files = tiny_demo(tmp_path / "data", num_train=8, num_test=16)
    ds = MultiLabelDataset(files["test"], ImageTransform(32, train=False))
    torch.manual_seed(1)
    model = CSRANet("small_cnn", 6, img_size=32, pretrained="none").eval()
    ref = predict(model, ds, runtime("off"), batch_size=8, num_workers=0).scores
    got = predict(model, ds, runtime(amp, amp == "bf16"), batch_size=8, num_workers=0).scores
    assert np.abs(got - ref).max() < tol
    assert np.abs(got - ref).max() > 0  # it did run in lower precision


def test_fp16_training_end_to_end_with_scaler_state(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    out = tmp_path / "run"
    train_main.main(train_argv(files, out, "--total_epoch", "1", "--amp", "fp16"))
    state = torch.load(out / "train_state.pth", weights_only=True)
    assert state["scaler"] and state["scaler"]["scale"] > 0
    import json
    args = json.load(open(out / "args.json"))
    assert args["runtime"]["amp"] == "fp16"
    assert json.loads((out / "log.jsonl").read_text().splitlines()[0])["amp"] == "fp16"


def test_the_scoring_loop_runs_only_the_forward_in_the_precision():
    """score_batches: the forward under autocast and without gradients; what the caller does with its output
    outside both (the sweep's mean and max stay float32); an item without images yields None, in order."""
    runtime = Runtime(torch.device("cpu"), "bf16", False, (0.0,) * 3, (1.0,) * 3)
    layer = torch.nn.Linear(3, 2)
    seen = []

    def forward(x):
        seen.append((torch.is_autocast_enabled("cpu"), torch.is_grad_enabled(), x.dtype))
        return layer(x.mean(dim=(2, 3)))

    batches = [("a", torch.zeros(2, 3, 4, 4, dtype=torch.uint8)), ("b", None),
               ("c", torch.full((1, 3, 4, 4), 255, dtype=torch.uint8))]
    got = []
    for (name, _), out in score_batches(batches, runtime, forward, images=lambda item: item[1]):
        got.append((name, None if out is None else (out.dtype, out.requires_grad, tuple(out.shape))))
        assert not torch.is_autocast_enabled("cpu") and torch.is_grad_enabled()
    assert seen == [(True, False, torch.float32)] * 2
    assert got == [("a", (torch.bfloat16, False, (2, 2))), ("b", None), ("c", (torch.bfloat16, False, (1, 2)))]


def test_channels_last_keeps_every_gradient_in_its_weights_layout():
    """DDP copies (and warns about) a gradient whose strides differ from its weight's: after prepare_model in
    channels-last, every gradient of a training step has its weight's strides (the CSRA head's 1x1 weights,
    used as matrices, keep plain strides; the backbone's stay channels-last), and the step is unchanged."""
    runtime = Runtime(torch.device("cpu"), "off", True, (0.0,) * 3, (1.0,) * 3)
    torch.manual_seed(0)
    model = runtime.prepare_model(CSRANet("small_cnn", 5, num_heads=4, img_size=32, pretrained="none"), train=True)
    as_before = CSRANet("small_cnn", 5, num_heads=4, img_size=32, pretrained="none")
    as_before = as_before.to(memory_format=torch.channels_last)
    as_before.load_state_dict(model.state_dict())
    for p in as_before.head.parameters():  # the strides .to(memory_format=channels_last) gave them before the fix
        k, d = p.shape[:2]
        p.data = p.data.as_strided(p.shape, (d, 1, d, d))
    x = runtime.to_input(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    for m in (model, as_before):
        m.train()(x).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad.stride() != p.stride()] == []
    assert any(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in model.parameters())  # the backbone's 3x3 convolutions are still channels-last
    assert [n for n, p in as_before.named_parameters() if p.grad.stride() != p.stride()]  # what DDP warned about
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(model.parameters(), as_before.parameters()))


def test_runtime_decision():
    auto = resolve_runtime(CPU, "resnet50", "auto")
    assert auto.amp == ("bf16" if cpu_has_native_bf16() else "off")
    assert auto.channels_last  # on every device: measured never slower than NCHW
    assert not resolve_runtime(CPU, "resnet50", "auto", channels_last=False).channels_last
    for amp in ("off", "bf16", "fp16"):
        assert resolve_runtime(CPU, "resnet50", amp).amp == amp  # explicit choices are honoured
    vit = resolve_runtime(CPU, "vit_B16_224", "off", normalize="half")
    assert (vit.mean, vit.std, vit.normalize) == ((0.5,) * 3, (0.5,) * 3, "half")
    with pytest.raises(ConfigError, match="--amp"):
        resolve_runtime(CPU, "resnet50", "fp8")
