"""Metrics against SPEC section 4: plain loops, scikit-learn, and hand-worked cases."""
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from utils.evaluation.metrics import MetricsError, evaluate


def loop_ap(scores, targets, voc):
    """AP per class written from the SPEC text: rank by score, mean precision at each positive."""
    aps = []
    for c in range(scores.shape[1]):
        items = []
        for i in range(scores.shape[0]):
            t = targets[i, c]
            if t == 99 or (voc and t == 0):
                continue
            items.append((scores[i, c], t == 1))
        items.sort(key=lambda x: -x[0])
        hits, precisions = 0, []
        for rank, (_, positive) in enumerate(items, start=1):
            if positive:
                hits += 1
                precisions.append(hits / rank)
        aps.append(sum(precisions) / len(precisions) if precisions else float("nan"))
    return aps


def loop_pr(scores, targets, voc, keep=None):
    """CP, CR, CF1, OP, OR, OF1 by loops; ``keep`` limits predictions to each image's top-k."""
    n, C = scores.shape
    tp, pred, gt = [0] * C, [0] * C, [0] * C
    for i in range(n):
        top = sorted(range(C), key=lambda c: -scores[i, c])[:keep] if keep else range(C)
        for c in range(C):
            t = targets[i, c]
            if voc and t == 0:
                continue
            p = scores[i, c] >= 0.5 and c in top
            g = t == 1
            tp[c] += p and g
            pred[c] += p
            gt[c] += g
    cp = sum(tp[c] / max(pred[c], 1) for c in range(C)) / C
    with_gt = [c for c in range(C) if gt[c]]  # a class without positives has no recall: not in the mean
    cr = sum(tp[c] / gt[c] for c in with_gt) / len(with_gt) if with_gt else 0.0
    op, orr = sum(tp) / max(sum(pred), 1), sum(tp) / max(sum(gt), 1)
    f1 = lambda p, r: 2 * p * r / (p + r) if p + r else 0.0  # noqa: E731
    return {"CP": 100 * cp, "CR": 100 * cr, "CF1": 100 * f1(cp, cr), "OP": 100 * op, "OR": 100 * orr,
            "OF1": 100 * f1(op, orr)}


@pytest.mark.parametrize("kind", ["voc", "wider", "binary"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_equals_loops(kind, seed):
    rng = np.random.default_rng(seed)
    n, C = 120, 7
    scores = rng.random((n, C))
    if kind == "voc":
        targets = rng.choice([1, 0, -1], size=(n, C), p=[0.3, 0.1, 0.6])
    elif kind == "wider":
        targets = rng.choice([1, 0, 99], size=(n, C), p=[0.3, 0.5, 0.2])
    else:
        targets = rng.choice([1, 0], size=(n, C), p=[0.3, 0.7])
    voc = kind == "voc"
    rep = evaluate(scores, targets)
    np.testing.assert_allclose(rep.ap, loop_ap(scores, targets, voc), atol=1e-12)
    assert rep.map == pytest.approx(100 * np.mean(loop_ap(scores, targets, voc)), abs=1e-9)
    for k, v in loop_pr(scores, targets, voc).items():
        assert rep.overall[k] == pytest.approx(v, abs=1e-9), k
    for k, v in loop_pr(scores, targets, voc, keep=3).items():
        assert rep.top3[k] == pytest.approx(v, abs=1e-9), k


def tie_block_ap(scores, targets, voc):
    """AP with ties as one block, brute force: for each positive with score s, precision =
    #positives with score >= s / #(positives and negatives) with score >= s."""
    aps = []
    for c in range(scores.shape[1]):
        t, s = targets[:, c], scores[:, c]
        counted = (t != 99) & ~(voc & (t == 0))
        precisions = []
        for i in np.flatnonzero(t == 1):
            ge = counted & (s >= s[i])
            precisions.append((ge & (t == 1)).sum() / ge.sum())
        aps.append(np.mean(precisions) if precisions else np.nan)
    return aps


@pytest.mark.parametrize("kind", ["voc", "wider", "binary"])
@pytest.mark.parametrize("seed", [0, 1])
def test_heavily_tied_scores(kind, seed):
    """Scores on a grid of 6 values: most entries tie. AP by the block rule (and scikit-learn on
    binary data), top-3 by a stable descending sort (lower class index first among ties)."""
    rng = np.random.default_rng(seed)
    n, C = 150, 9
    scores = rng.integers(0, 6, size=(n, C)) / 5.0
    targets = {"voc": rng.choice([1, 0, -1], size=(n, C), p=[0.3, 0.1, 0.6]),
               "wider": rng.choice([1, 0, 99], size=(n, C), p=[0.3, 0.5, 0.2]),
               "binary": rng.choice([1, 0], size=(n, C), p=[0.3, 0.7])}[kind]
    voc = kind == "voc"
    rep = evaluate(scores, targets)
    np.testing.assert_allclose(rep.ap, tie_block_ap(scores, targets, voc), atol=1e-12)
    if kind == "binary":
        want = [average_precision_score(targets[:, c], scores[:, c]) for c in range(C)]
        np.testing.assert_allclose(rep.ap, want, atol=1e-12)
    for k, v in loop_pr(scores, targets, voc, keep=3).items():
        assert rep.top3[k] == pytest.approx(v, abs=1e-9), k
    shuffled = rng.permutation(n)
    np.testing.assert_allclose(evaluate(scores[shuffled], targets[shuffled]).ap, rep.ap, atol=1e-12)


def test_float32_scores_and_int8_targets_give_the_float64_results():
    rng = np.random.default_rng(3)
    scores = rng.random((200, 6)).astype(np.float32)
    targets = rng.choice([1, 0, -1], size=(200, 6), p=[0.3, 0.1, 0.6])
    a = evaluate(scores, targets)
    b = evaluate(scores.astype(np.float64), targets.astype(np.int8))
    np.testing.assert_array_equal(a.ap, b.ap)
    assert a.overall == b.overall and a.top3 == b.top3


def test_ap_matches_sklearn_on_tie_free_data():
    rng = np.random.default_rng(5)
    scores = rng.random((300, 10))
    targets = (rng.random((300, 10)) < 0.25).astype(int)
    rep = evaluate(scores, targets)
    want = [average_precision_score(targets[:, c], scores[:, c]) for c in range(10)]
    np.testing.assert_allclose(rep.ap, want, atol=1e-12)


def test_ties_match_sklearn_and_ignore_image_order():
    scores = np.array([[0.9], [0.5], [0.5], [0.5], [0.1]])
    targets = np.array([[1], [0], [1], [0], [1]])
    ap = evaluate(scores, targets).ap[0]
    assert ap == pytest.approx(average_precision_score(targets[:, 0], scores[:, 0]))
    # by hand: block {0.5 x3} ends at rank 4 with 2 hits -> precision 2/4; rank 5: 3/5
    assert ap == pytest.approx((1 + 2 / 4 + 3 / 5) / 3)
    perm = [4, 3, 2, 1, 0]
    assert evaluate(scores[perm], targets[perm]).ap[0] == pytest.approx(ap)


def test_hand_worked_case():
    # 4 images, 2 classes
    scores = np.array([[0.9, 0.2], [0.8, 0.7], [0.3, 0.6], [0.6, 0.1]])
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    rep = evaluate(scores, targets)
    # class 0 ranking: img0(+) img1(-) img3(-) img2(+): precisions 1/1, 2/4 -> AP 0.75
    # class 1 ranking: img1(+) img2(+) img0 img3: AP 1
    np.testing.assert_allclose(rep.ap, [0.75, 1.0])
    assert rep.map == pytest.approx(87.5)
    # threshold 0.5: class0 predicted img0,img1,img3 -> tp 1, pred 3, gt 2; class1 img1,img2 -> tp 2, pred 2, gt 2
    cp, cr = (1 / 3 + 1) / 2, (1 / 2 + 1) / 2
    op, orr = 3 / 5, 3 / 4
    o = rep.overall
    assert o["CP"] == pytest.approx(100 * cp) and o["CR"] == pytest.approx(100 * cr)
    assert o["CF1"] == pytest.approx(100 * 2 * cp * cr / (cp + cr))
    assert o["OP"] == pytest.approx(100 * op) and o["OR"] == pytest.approx(100 * orr)
    assert o["OF1"] == pytest.approx(100 * 2 * op * orr / (op + orr))
    f1_0, f1_1 = 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2), 1.0
    assert o["CF1_mean_per_class"] == pytest.approx(100 * (f1_0 + f1_1) / 2)


def test_voc_difficult_left_out_by_hand():
    scores = np.array([[0.9], [0.8], [0.7], [0.2]])
    targets = np.array([[-1], [0], [1], [1]])  # the difficult image outranks a positive
    rep = evaluate(scores, targets)
    # without image 1: ranking -,+,+ -> precisions 1/2, 2/3
    assert rep.ap[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # P/R: predicted img0 (neg) img2 (pos); difficult img1 not counted
    assert rep.overall["OP"] == pytest.approx(50.0) and rep.overall["OR"] == pytest.approx(50.0)


def test_wider_99_left_out_of_ap_but_negative_in_pr():
    scores = np.array([[0.9], [0.8], [0.3]])
    targets = np.array([[99], [1], [0]])
    rep = evaluate(scores, targets)
    assert rep.ap[0] == pytest.approx(1.0)
    assert rep.overall["OP"] == pytest.approx(50.0)  # the 99 image counts as a false positive


def test_class_without_positive_is_left_out_and_named():
    scores = np.array([[0.9, 0.1], [0.2, 0.3]])
    targets = np.array([[1, 0], [0, 0]])
    rep = evaluate(scores, targets)
    assert rep.undefined_classes == [1]
    assert math.isnan(rep.ap[1]) and rep.map == pytest.approx(100.0)
    from utils.evaluation import format_report
    text = format_report(rep, ["cat", "dog"])
    assert "no positive image for dog" in text and "nan" not in text.split("\n")[0]
    # by hand: dog predicted once (0.6), never right: precision 0 counts in CP; its recall (0/0) is not in CR
    rep = evaluate(np.array([[0.9, 0.6], [0.2, 0.3]]), targets)
    assert (rep.overall["CP"], rep.overall["CR"]) == (pytest.approx(50.0), pytest.approx(100.0))
    assert rep.overall["CF1"] == pytest.approx(200 / 3)


def test_every_printed_line_of_the_report_is_under_100_characters():
    """The summary main.py and val.py print, in every convention, with many classes left out of the mean
    and long class names: no line of 100 characters or more (one was 140); what a line shortens it counts."""
    from utils.evaluation import format_report
    rng = np.random.default_rng(0)
    n, c = 40, 60
    scores = rng.random((n, c))
    targets = (rng.random((n, c)) < 0.3).astype(int)
    targets[:, 10:50] = 0  # 40 classes without a positive image
    names = [f"class number {i}" for i in range(c)]
    names[3] = "an OpenImages display name that goes on and on well past any column a table could hold " * 2
    for convention in ("ours", "authors"):
        for t in (targets, np.where(targets == 0, -1, targets), np.where(rng.random((n, c)) < 0.1, 99, targets)):
            text = format_report(evaluate(scores, t, pr_convention=convention), names)
            assert max(len(line) for line in text.splitlines()) < 100, text
    assert "\nwarning: no positive image for 40 classes: AP undefined, left out of the mean\n  class number 10, " in text
    line = next(ln for ln in text.splitlines() if ln.startswith("  class number 10, "))
    shown = line.strip()[:line.strip().index(" and ")].split(", ")
    assert shown == names[10:10 + len(shown)] and line.endswith(f" and {40 - len(shown)} more")
    assert "CF1 is the harmonic mean of CP and CR" in text and "Threshold: score >= 0.5." in text
    from utils.evaluation.analysis import threshold_sweep
    from utils.evaluation.report import threshold_advice
    command = "val.py --load_from checkpoint/resnet101_on_my_own_data_2/best.pth --report DIR writes them"
    advice = threshold_advice(threshold_sweep(scores, targets), command)  # main.py's, with its run's path
    assert max(len(line) for line in advice.splitlines()) < 100 and f"\n  {command}\n" in advice


def test_bad_inputs():
    with pytest.raises(MetricsError, match=r"\(3, 2\).*\(3, 4\)"):
        evaluate(np.zeros((3, 2)), np.zeros((3, 4)))
    scores = np.array([[0.1, np.nan], [0.2, 0.3], [np.inf, 0.1]])
    with pytest.raises(MetricsError, match="a.jpg, c.jpg"):
        evaluate(scores, np.ones((3, 2)), paths=["a.jpg", "b.jpg", "c.jpg"])


def test_coco_sized_problem_runs():
    rng = np.random.default_rng(0)
    scores = rng.random((4000, 80)).astype(np.float32)
    targets = (rng.random((4000, 80)) < 0.05).astype(int)
    rep = evaluate(scores, targets)
    assert 0 < rep.map < 100 and len(rep.ap) == 80


@pytest.mark.parametrize("kind", ["voc", "wider", "binary"])
@pytest.mark.parametrize("power", [1, 3, 8])
def test_top3_against_loops_with_few_and_many_crowded_rows(kind, power):
    """Scores ** power: from most rows predicting more than 3 classes (the fix-up over every row) to few
    (only those rows are re-ranked), tied grid scores included."""
    rng = np.random.default_rng(power)
    n, C = 160, 8
    scores = np.round(rng.random((n, C)) ** power, 1)
    targets = {"voc": rng.choice([1, 0, -1], size=(n, C), p=[0.3, 0.1, 0.6]),
               "wider": rng.choice([1, 0, 99], size=(n, C), p=[0.3, 0.5, 0.2]),
               "binary": rng.choice([1, 0], size=(n, C), p=[0.3, 0.7])}[kind]
    crowded = ((scores >= 0.5).sum(axis=1) > 3).mean()
    assert (crowded > 0.5) if power == 1 else (0 < crowded < 0.5) if power == 3 else True
    rep = evaluate(scores, targets)
    for k, v in loop_pr(scores, targets, kind == "voc", keep=3).items():
        assert rep.top3[k] == pytest.approx(v, abs=1e-9), k


@pytest.mark.parametrize("k", [1, 3, 6])
def test_top_k_mask_equals_a_stable_descending_sort(k):
    from utils.evaluation.metrics import top_k_mask
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 4, size=(300, 7)).astype(np.float32)  # many ties at the k-th place
    with_inf = scores.copy()
    with_inf[::7, 2] = -np.inf
    for s in (scores, with_inf):
        want = np.zeros(s.shape, dtype=bool)
        for i, row in enumerate(s):
            for c in sorted(range(s.shape[1]), key=lambda c: -row[c])[:k]:  # sorted() is stable
                want[i, c] = True
        np.testing.assert_array_equal(top_k_mask(s, k), want)
