"""The CSRA head in the training precision: the fused pooling's gradient against numerical differentiation
(float64 gradcheck), its class chunks against one chunk, the score product in bf16 only when training asks for
it, and what the backward pass keeps (the score maps, nothing in float32)."""
import math

import pytest
import torch

import pipeline.models.csra as csra
from pipeline.models.csra import MultiHeadCSRA, csra_pool
from pipeline.models.model import CSRANet
from test_csra_head import SPEC_TEMPS, head_weights, reference_logits


@pytest.fixture(params=["fused", "autograd"])
def path(request, monkeypatch):
    """Both ways csra_pool trains: the fused pooling (large maps) and autograd's own ops (small ones)."""
    monkeypatch.setattr(csra, "FUSED_FROM", 0 if request.param == "fused" else 1 << 40)
    return request.param


def plain_pool(s, temps, lam):
    """The formula with plain autograd ops, (B, N, H, C) -> (B, C): sum over heads of mean + lam * attention."""
    out = 0
    for k, T in enumerate(temps):
        sk = s[:, :, k]
        att = sk.amax(dim=1) if math.isinf(T) else (torch.softmax(T * sk, dim=1) * sk).sum(dim=1)
        out = out + sk.mean(dim=1) + lam * att
    return out


@pytest.mark.parametrize("num_heads", [1, 2, 4, 8])
def test_the_pooling_gradient_is_the_formulas(num_heads, path):
    """Products and inverse norms in, logits out: gradients against numerical differentiation and plain autograd."""
    torch.manual_seed(num_heads)
    temps = SPEC_TEMPS[num_heads]
    finite = torch.tensor([t for t in temps if not math.isinf(t)], dtype=torch.float64)
    raw = torch.randn(2, 5, num_heads, 3, dtype=torch.float64, requires_grad=True)
    inv = (torch.rand(num_heads, 3, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda r, i: csra_pool(r, i, finite, 0.3), (raw, inv), eps=1e-6, atol=1e-7)
    got = torch.autograd.grad(csra_pool(raw, inv, finite, 0.3).sum(), (raw, inv))
    want = torch.autograd.grad(plain_pool(raw * inv, temps, 0.3).sum(), (raw, inv))
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(got, want))


def test_the_products_and_norms_gradient_is_numerical_differentiations():
    """score_products' one-pass backward (the product's part and the norm's -m / ||m||^3 part of the weight's
    gradient) against numerical differentiation, for a channels-last map and several heads."""
    torch.manual_seed(7)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    weights = [torch.randn(3, 5, 1, 1, dtype=torch.float64, requires_grad=True) for _ in range(2)]

    def both(x, *ws):
        raw, inv = csra.score_products(x, list(ws))
        return raw, inv
    assert torch.autograd.gradcheck(both, (x, *weights), eps=1e-6, atol=1e-7)
    raw, inv = csra.score_products(x, weights)
    w = weights[1].detach().flatten(1)
    want = torch.einsum("bdhw,cd->bhwc", x.detach(), w).reshape(2, 12, 3)
    assert torch.allclose(raw[:, :, 1], want) and torch.allclose(inv[1], 1 / w.norm(dim=1))


def test_tied_maxima_share_the_gradient_as_amax_does(path):
    raw = torch.tensor([[[[1.0]], [[3.0]], [[3.0]], [[0.5]]]], dtype=torch.float64, requires_grad=True)  # (1,4,1,1)
    one = torch.ones(1, 1, dtype=torch.float64)
    g = torch.autograd.grad(csra_pool(raw, one, torch.tensor([], dtype=torch.float64), 1.0).sum(), raw)[0]
    assert g.flatten().tolist() == pytest.approx([0.25, 0.75, 0.75, 0.25])  # 1/N + lam/2 at each of the two maxima


def test_class_chunks_give_what_one_chunk_gives(monkeypatch):
    monkeypatch.setattr(csra, "FUSED_FROM", 0)
    torch.manual_seed(0)
    finite = torch.tensor([1.0, 2.0, 4.0])
    raw = torch.randn(3, 7, 4, 50, requires_grad=True)
    inv = (torch.rand(4, 50) + 0.5).requires_grad_()
    whole = csra_pool(raw, inv, finite, 0.5)
    g_whole = torch.autograd.grad(whole.sum(), (raw, inv))
    monkeypatch.setattr(csra, "CHUNK_PER_IMAGE", 7 * 4 * 6)  # chunks of 6 classes (and a last one of 2)
    assert len(csra._class_chunks(raw)) == 9
    parts = csra_pool(raw, inv, finite, 0.5)
    assert torch.allclose(parts, whole, atol=1e-6)  # (the same sums, blocked otherwise by the vector units)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(torch.autograd.grad(parts.sum(), (raw, inv)),
                                                               g_whole))


def test_the_product_follows_autocast_only_when_training_asks():
    torch.manual_seed(1)
    head = MultiHeadCSRA(4, 0.5, in_dim=32, num_classes=5)
    x = (torch.randn(2, 32, 6, 6) * 2).bfloat16()
    want = torch.tensor(reference_logits(x.double().numpy(), head_weights(head), SPEC_TEMPS[4], 0.5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        exact = head(x)  # not asked: float32 product
        assert head.score_products(x)[0].dtype == torch.float32
        head.scores_follow_autocast = True
        fast = head(x)
        assert head.score_products(x, True)[0].dtype == torch.bfloat16
    assert exact.dtype == fast.dtype == torch.float32
    assert (exact.double() - want).abs().max() < 1e-4
    err = (fast.double() - want).abs().max()
    assert 1e-4 < err < 0.1  # bf16's rounding of the product, nothing worse (the softmax and sums are float32)
    with torch.no_grad():
        assert torch.equal(head(x), exact)  # outside autocast the product is float32 whatever the setting
    head.eval()
    for one in (head, head.multi_head[0]):  # evaluation under autocast (--eval_amp bf16): float32 product too
        one.scores_follow_autocast = True
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            got = one(x).double()
        T = head.temperatures[0]
        single = torch.tensor(reference_logits(x.double().numpy(), head_weights(head)[:1], [T], 0.5))
        assert (got - (want if one is head else single)).abs().max() < 1e-4


def saved_tensors(fn):
    """(number of elements, dtype) of each tensor autograd keeps for the backward pass of ``fn()``."""
    kept = []

    def pack(t):
        kept.append((t.numel(), t.dtype))
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return kept


def test_the_backward_pass_keeps_the_score_maps_and_no_float32_copies(monkeypatch):
    torch.manual_seed(2)
    head = MultiHeadCSRA(4, 0.1, in_dim=64, num_classes=300)
    x = torch.randn(2, 64, 14, 14).bfloat16().requires_grad_()
    maps = 2 * 196 * 4 * 300  # (B, N, H, C)
    head.scores_follow_autocast = True
    kept = {}
    for name, threshold in (("fused", 0), ("autograd", 1 << 40)):
        monkeypatch.setattr(csra, "FUSED_FROM", threshold)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            kept[name] = [t for t in saved_tensors(lambda: head(x)) if t[0] >= maps / 8]  # a head's map, or more
    assert kept["fused"] == [(maps, torch.bfloat16)]  # the products, once, as the matmul gave them
    assert sum(n for n, dtype in kept["autograd"] if dtype == torch.float32) >= 2 * maps  # float32 copies


def test_large_maps_train_through_the_fused_pooling_small_ones_through_autograd():
    finite = torch.tensor([1.0])
    large = torch.randn(4, 49, 1, csra.FUSED_FROM // 196 + 1, requires_grad=True)
    small = torch.randn(4, 49, 1, 80, requires_grad=True)
    one = lambda t: torch.ones(1, t.shape[-1])  # noqa: E731
    assert type(csra_pool(large, one(large), finite, 0.1).grad_fn).__name__ == "_FusedPoolBackward"
    assert type(csra_pool(small, one(small), finite, 0.1).grad_fn).__name__ != "_FusedPoolBackward"


def test_a_training_step_in_float32_is_the_same_either_way():
    """Without autocast the product is float32 whatever the setting: one step gives identical weights."""
    def step(follow):
        torch.manual_seed(3)
        model = CSRANet("small_cnn", 6, num_heads=2, img_size=32, pretrained="none")
        model.head_product_follows_autocast(follow)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.rand(4, 3, 32, 32), (torch.rand(4, 6) > 0.5).float()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
        opt.step()
        return model.state_dict()
    a, b = step(True), step(False)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cudas_float32_policy_is_stated_set_and_recorded():
    from pipeline.models.runtime import Runtime, set_tf32_policy
    rt = Runtime(torch.device("cuda"), "off", True, (0.0,) * 3, (1.0,) * 3)
    assert "float32 matmuls without TF32, convolutions with" in rt.describe()
    assert rt.as_dict()["tf32"] == {"matmul": False, "convolution": True}
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, False
        set_tf32_policy()
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert "tf32" not in Runtime(torch.device("cpu"), "off", True, (0.0,) * 3, (1.0,) * 3).as_dict()


def test_a_run_says_when_its_pooling_recomputes_the_maps(tmp_path, monkeypatch, capsys):
    import main as train_main
    from helpers import tiny_demo, train_argv
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    train_main.main(train_argv(files, tmp_path / "small", "--total_epoch", "1"))
    assert "recomputes them in the backward pass" not in capsys.readouterr().out
    monkeypatch.setattr(csra, "FUSED_FROM", 0)
    train_main.main(train_argv(files, tmp_path / "large", "--total_epoch", "1"))
    out = capsys.readouterr().out
    assert out.count("note: the CSRA maps are large") == 1 and "CSRA head product in" in out


def test_an_fp16_products_weight_gradient_does_not_overflow_where_float32_fits():
    """fp16 (--amp auto on GPUs without bf16): the norm's factor ||m||^-3 overflows fp16 for small rows under a
    loss scale, though the gradient itself fits; it is added in float32 there."""
    grads = {}
    for follow in (False, True):
        torch.manual_seed(4)  # (the same weights and features both times)
        head = MultiHeadCSRA(1, 0.1, in_dim=2048, num_classes=80)
        with torch.no_grad():
            w = head.multi_head[0].head.weight
            w.mul_(0.058 / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1))  # rows of norm 0.058 (weight decay shrinks)
        head.scores_follow_autocast = follow
        x = torch.randn(4, 2048, 7, 7).half()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = head(x).float().sum() * 2.0 ** 8  # a loss scale
        loss.backward()
        grads[follow] = head.multi_head[0].head.weight.grad
    assert grads[False].abs().max() < 65504  # the gradient fits fp16...
    assert torch.isfinite(grads[True]).all()  # ...and so does the fp16 product's (the factor alone would not)
    assert torch.allclose(grads[True], grads[False], rtol=0.05, atol=1e-2 * grads[False].abs().max())
