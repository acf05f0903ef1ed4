"""The head's math against SPEC section 1, computed independently with float64 loops."""
import math

import numpy as np
import pytest
import torch

from pipeline.models.csra import CSRAHead, GAPHead, MultiHeadCSRA, canonical_temperature, temperatures_for

SPEC_TEMPS = {1: [1], 2: [1, math.inf], 4: [1, 2, 4, math.inf], 6: [1, 2, 3, 4, 5, math.inf],
              8: [1, 2, 3, 4, 5, 6, 7, math.inf]}


def reference_logits(x: np.ndarray, weights, temps, lam) -> np.ndarray:
    """Sum over heads of mean_j s_ij + lam * sum_j softmax_j(T s_ij) s_ij, by explicit loops."""
    B, d, H, W = x.shape
    out = np.zeros((B, weights[0].shape[0]))
    for w, T in zip(weights, temps):
        for b in range(B):
            for i in range(w.shape[0]):
                m = w[i] / math.sqrt(sum(v * v for v in w[i]))
                s = [float(np.dot(m, x[b, :, r, c])) for r in range(H) for c in range(W)]
                base = sum(s) / len(s)
                if math.isinf(T):
                    att = max(s)
                else:
                    top = max(s)
                    e = [math.exp(T * (v - top)) for v in s]
                    z = sum(e)
                    att = sum(ei / z * v for ei, v in zip(e, s))
                out[b, i] += base + lam * att
    return out


def head_weights(mha: MultiHeadCSRA):
    return [h.head.weight.detach().double().flatten(1).numpy() for h in mha.multi_head]


@pytest.mark.parametrize("num_heads", [1, 2, 4, 6, 8])
@pytest.mark.parametrize("lam", [0.0, 0.1, 0.5, 1.0])
def test_multi_head_matches_loops(num_heads, lam):
    torch.manual_seed(num_heads)
    mha = MultiHeadCSRA(num_heads, lam, in_dim=6, num_classes=3).double()
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    got = mha(x).detach().numpy()
    want = reference_logits(x.numpy(), head_weights(mha), SPEC_TEMPS[num_heads], lam)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("T", [1, 2, 5, math.inf, 99])
@pytest.mark.parametrize("lam", [0.1, 0.3])
def test_single_head_temperatures(T, lam):
    torch.manual_seed(0)
    head = CSRAHead(5, 4, T, lam).double()
    x = torch.randn(3, 5, 2, 3, dtype=torch.float64)
    want = reference_logits(x.numpy(), [head.head.weight.detach().flatten(1).numpy()],
                            [math.inf if T == 99 else T], lam)
    np.testing.assert_allclose(head(x).detach().numpy(), want, atol=1e-5)


@pytest.mark.parametrize("size", [(7, 7), (14, 14), (28, 28), (5, 9), (1, 1)])
def test_any_feature_size_and_batch_one(size):
    torch.manual_seed(1)
    mha = MultiHeadCSRA(4, 0.2, 8, 3).double()
    x = torch.randn(1, 8, *size, dtype=torch.float64)
    want = reference_logits(x.numpy(), head_weights(mha), SPEC_TEMPS[4], 0.2) if size[0] * size[1] < 200 else None
    got = mha(x)
    assert got.shape == (1, 3)
    if want is not None:
        np.testing.assert_allclose(got.detach().numpy(), want, atol=1e-5)


def test_large_temperature_approaches_max():
    torch.manual_seed(2)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    big = CSRAHead(4, 3, 10000, 1.0).double()
    inf = CSRAHead(4, 3, math.inf, 1.0).double()
    inf.head.weight.data.copy_(big.head.weight.data)
    np.testing.assert_allclose(big(x).detach().numpy(), inf(x).detach().numpy(), atol=1e-3)


def test_scaling_class_weight_leaves_logit_unchanged():
    torch.manual_seed(3)
    mha = MultiHeadCSRA(2, 0.3, 6, 4).double()
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    before = mha(x).detach().clone()
    mha.multi_head[0].head.weight.data[2] *= 17.5
    mha.multi_head[1].head.weight.data[0] *= 0.01
    np.testing.assert_allclose(mha(x).detach().numpy(), before.numpy(), atol=1e-10)


def test_lam_zero_is_mean_of_normalised_scores():
    torch.manual_seed(4)
    head = CSRAHead(6, 2, 1, 0.0).double()
    x = torch.randn(1, 6, 2, 2, dtype=torch.float64)
    w = head.head.weight.detach().flatten(1)
    m = w / w.norm(dim=1, keepdim=True)
    manual = torch.stack([(m[i] @ x[0].flatten(1)).mean() for i in range(2)])
    np.testing.assert_allclose(head(x)[0].detach().numpy(), manual.numpy(), atol=1e-12)


def test_csra_feature_form_equals_logit_form():
    """logit_i = (m_i/|m_i|) . (mean_j x_j + lam * sum_j softmax_j(T s_ij) x_j)."""
    torch.manual_seed(5)
    head = CSRAHead(4, 3, 2, 0.4).double()
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    w = head.head.weight.detach().flatten(1)
    m = w / w.norm(dim=1, keepdim=True)
    xs = x[0].flatten(1)  # (d, HW)
    for i in range(3):
        s = m[i] @ xs
        f = xs.mean(dim=1) + 0.4 * (xs * torch.softmax(2 * s, dim=0)).sum(dim=1)
        assert abs(float(m[i] @ f) - float(head(x).detach()[0, i])) < 1e-10


def test_temperature_lists_and_errors():
    for h, temps in SPEC_TEMPS.items():
        assert temperatures_for(h) == [float(t) for t in temps]
    with pytest.raises(ValueError, match="1, 2, 4, 6, 8"):
        temperatures_for(3)
    assert math.isinf(canonical_temperature(99))
    with pytest.raises(ValueError):
        canonical_temperature(0)


def test_maps_come_from_one_pass_and_match_logits():
    torch.manual_seed(6)
    mha = MultiHeadCSRA(4, 0.1, 5, 3).double()
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    out = mha.forward_with_maps(x)
    assert len(out.score_maps) == 4 and out.score_maps[0].shape == (2, 3, 4, 3)
    np.testing.assert_allclose(out.logits.detach().numpy(), mha(x).detach().numpy(), atol=1e-12)
    for k, T in enumerate(out.temperatures):
        att = out.attention[k]
        np.testing.assert_allclose(att.sum(dim=(2, 3)).detach().numpy(), 1.0, atol=1e-12)
        s = out.score_maps[k].flatten(2)
        if not math.isinf(T):
            np.testing.assert_allclose(att.flatten(2).detach().numpy(),
                                       torch.softmax(T * s, dim=-1).detach().numpy(), atol=1e-12)
        else:
            assert torch.equal(att.flatten(2).argmax(-1), s.argmax(-1))


def test_gap_head_plain_and_training_free():
    torch.manual_seed(7)
    gap = GAPHead(4, 3).double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    W, b = gap.weight.detach().numpy(), gap.bias.detach().numpy()
    xn = x.numpy()
    plain = xn.mean(axis=(2, 3)) @ W.T + b
    np.testing.assert_allclose(gap(x).detach().numpy(), plain, atol=1e-12)
    gap.spatial_lam = 0.2
    y_raw = np.einsum("cd,bdl->bcl", W, xn.reshape(2, 4, -1)) + b[None, :, None]
    np.testing.assert_allclose(gap(x).detach().numpy(), y_raw.mean(-1) + 0.2 * y_raw.max(-1), atol=1e-12)
