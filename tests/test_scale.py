"""OpenImages- and NUS-WIDE-size data: the sparse format, one in-memory form for both formats, unknown labels
out of the loss and the metrics, the table evaluator against the dense one, binary scores files, and the
two preparation scripts on hand-written files in each dataset's own layout."""
import json
import os
import re

import numpy as np
import pytest
import torch

import main as train_main
from helpers import run_py, tiny_demo, touch_images, train_argv, write_nuswide, write_openimages
from pipeline.data.dataset import ImageTransform, MultiLabelDataset, load_table
from pipeline.data.labels import LabelTable, TableRows, read_sparse, write_sparse
from pipeline.errors import DataError
from utils.evaluation.html_report import MANY_CLASSES, figure_classes
from utils.evaluation.metrics import evaluate as evaluate_dense
from utils.evaluation.sparse import evaluate_table
from utils.prepare import prepare_nuswide, prepare_openimages


def dense_to_sparse(dense_json, out):
    """The same labels as a sparse file (unlisted = negative: the dense demo files are fully labelled)."""
    records = json.loads(open(dense_json).read())
    c = len(records[0]["target"])
    write_sparse(out, ((r["img_path"], [i for i, v in enumerate(r["target"]) if v == 1], []) for r in records), c,
                 "negative")
    return str(out)  # (beside the dense file: the same classes.txt)


# --- the format ----------------------------------------------------------------------------------------
def test_sparse_round_trip_and_compact_form(tmp_path):
    path = tmp_path / "a.jsonl"
    recs = [("a.jpg", [2, 0], [5]), ("b.jpg", [], []), ("c/d.jpg", [7], [1, 3])]
    assert write_sparse(str(path), recs, 8, "unknown") == 3
    table, header = read_sparse(str(path))
    assert header["num_classes"] == 8 and header["unlisted"] == "unknown" and table.unknown
    assert table.paths() == ["a.jpg", "b.jpg", "c/d.jpg"]
    assert isinstance(table.classes, np.ndarray) and table.classes.dtype == np.int32 and table.offsets.tolist() == [0, 3, 3, 6]
    assert table.target(0).tolist() == [1, -1, 1, -1, -1, 0, -1, -1]  # -1: unknown (the --partial_labels convention)
    assert table.target(1).tolist() == [-1] * 8
    assert table.dense().tolist() == [table.target(i).tolist() for i in range(3)]
    t = table.eval_targets()  # the evaluator's: unknown is -99, out of AP and P/R
    assert t[2].tolist() == [-99, 0, -99, 0, -99, -99, -99, 1]


@pytest.mark.parametrize("lines,message", [
    (['{"format": '], "line 1 is not JSON"),
    (['{"format": "other"}'], "line 1 is not a sparse label header"),
    (['{"format": "csra-sparse-labels", "version": 1, "num_classes": 0, "unlisted": "unknown"}'],
     "num_classes must be a positive integer"),
    (['{"format": "csra-sparse-labels", "version": 1, "num_classes": 3, "unlisted": "maybe"}'],
     "unlisted must be negative or unknown"),
    (['HEADER', '{"img_path": "a.jpg", "positives": [0]}', '', '{"img_path": "b.jpg", "positives": [0]'],
     "line 4 is not JSON"),
    (['HEADER', '{"img_path": "a.jpg", "positives": [0]}', '{"positives": [1]}'], "line 3: a record is"),
    (['HEADER', '{"img_path": "a.jpg", "positives": "0"}'], "line 2: a record is"),
    (['HEADER', '{"img_path": "a.jpg", "positives": [0]}', '', '{"img_path": "b.jpg", "negatives": [3]}'],
     "line 4: class index 3 is outside 0..2"),
    (['HEADER', '{"img_path": "a.jpg", "positives": [0]}', '{"img_path": "b.jpg", "positives": [1], "negatives": [1]}'],
     "line 3: class 1 is listed twice"),
    # JSON booleans are not class indices (Python takes true for 1), nor are floats or nulls
    (['HEADER', '{"img_path": "a.jpg", "positives": [true]}'], "line 2: a record is"),
    (['HEADER', '{"img_path": "true.jpg", "positives": [0]}', '{"img_path": "b.jpg", "negatives": [2, false]}'],
     "line 3: a record is"),
    (['HEADER', '{"img_path": "a.jpg", "positives": [1.0]}'], "class indices are integers"),
    (['HEADER', '{"img_path": "a.jpg", "negatives": [null]}'], "line 2: a record is"),
    (['HEADER', '{"img_path": "a.jpg", "positives": [0], "bbox": [1, 2, "3", 4]}'], "line 2: bbox must be [x, y, w, h]"),
    (['HEADER', '{"img_path": "a.jpg", "positives": [0], "bbox": [1, 2, 3]}'], "line 2: bbox must be [x, y, w, h]"),
    (['{"format": "csra-sparse-labels", "version": true, "num_classes": 3, "unlisted": "unknown"}'],
     "version true of the sparse format"),
    (['HEADER', '{"img_path": "caf\xe9.jpg", "positives": [0]}'], "line 2 is not UTF-8 text"),
])
def test_bad_sparse_files_are_one_line_naming_the_line(tmp_path, lines, message):
    header = '{"format": "csra-sparse-labels", "version": 1, "classes": "classes.txt", "num_classes": 3, ' \
             '"unlisted": "unknown"}'
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(header if ln == "HEADER" else ln for ln in lines) + "\n", encoding="latin-1")
    with pytest.raises(DataError) as e:
        load_table(str(path))
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_sparse_file_with_a_byte_order_mark_reads_as_without(tmp_path):
    """Spreadsheet tools on Windows put UTF-8's byte-order mark first; the dense loader already accepts it."""
    files = tiny_demo(tmp_path / "d", num_train=6, num_test=4)
    plain = dense_to_sparse(files["train"], tmp_path / "d" / "plain.jsonl")
    marked = tmp_path / "d" / "marked.jsonl"
    marked.write_bytes(b"\xef\xbb\xbf" + open(plain, "rb").read())
    a, b = load_table(plain), load_table(str(marked))
    assert a.dense().tolist() == b.dense().tolist() and a.paths() == b.paths() and b.num_classes == 6
    out = train_main.train(train_main.get_args(
        ["--train_json", str(marked), "--test_json", str(marked), "--model", "small_cnn", "--pretrained", "none",
         "--img_size", "32", "--batch_size", "8", "--total_epoch", "1", "--warmup_epoch", "0", "--num_workers", "0",
         "--output_dir", str(tmp_path / "run")]))
    assert out["folder"] == str(tmp_path / "run")


def test_a_class_count_mismatch_names_where_the_expected_count_comes_from(tmp_path):
    """No --num_cls typed: the message names what gave the count (a classes.txt, the training file, a run
    record), not '--num_cls is 6'."""
    files = tiny_demo(tmp_path / "d", num_train=8, num_test=4)
    records = json.loads(open(files["train"]).read())
    names_file = os.path.join(os.path.dirname(files["train"]), "classes.txt")  # 6 names, beside the files
    seven = str(tmp_path / "d" / "seven.jsonl")
    write_sparse(seven, ((r["img_path"], [0], []) for r in records), 7, "negative")
    common = ["--model", "small_cnn", "--pretrained", "none", "--img_size", "32", "--batch_size", "8",
              "--total_epoch", "1", "--warmup_epoch", "0", "--num_workers", "0"]
    r = run_py("main.py", "--train_json", seven, "--test_json", files["test"], *common, "--output_dir", tmp_path / "a")
    assert r.returncode == 1 and r.stderr.strip() == \
        f"error: {seven}: its header says 7 classes, {names_file} lists 6 class names", r.stderr
    (tmp_path / "e").mkdir()  # no class names anywhere: the training file counts the classes
    six = dense_to_sparse(files["train"], tmp_path / "e" / "six.jsonl")
    seven_dense = tmp_path / "e" / "seven.json"
    seven_dense.write_text(json.dumps([dict(r, target=r["target"] + [0]) for r in records]))
    r = run_py("main.py", "--train_json", six, "--test_json", seven_dense, *common, "--output_dir", tmp_path / "b")
    assert r.returncode == 1 and r.stderr.strip().endswith(
        f"{seven_dense}: record 0 ({records[0]['img_path']}) has 7 labels, {six} has 6 classes"), r.stderr
    out = train_main.train(train_main.get_args(["--train_json", files["train"], "--test_json", files["test"], *common,
                                                "--output_dir", str(tmp_path / "run")]))
    ckpt = os.path.join(out["folder"], "best.pth")
    (tmp_path / "f").mkdir()  # 7 names beside a 7-class test file; the checkpoint has 6 classes
    (tmp_path / "f" / "classes.txt").write_text("".join(f"c{i}\n" for i in range(7)))
    (tmp_path / "f" / "test.json").write_text(seven_dense.read_text())
    record = os.path.join(out["folder"], "args.json")
    r = run_py("val.py", "--load_from", ckpt, "--test_json", tmp_path / "f" / "test.json")
    assert r.returncode == 1 and r.stderr.strip().endswith(
        f"has 7 labels, the checkpoint's run record {record} says 6 classes"), r.stderr
    r = run_py("val.py", "--load_from", ckpt, "--no_record", "--model", "small_cnn", "--img_size", "32",
               "--test_json", tmp_path / "f" / "test.json")
    assert r.returncode == 1 and r.stderr.strip() == \
        f"error: {ckpt}: checkpoint has 6 classes, {tmp_path / 'f' / 'classes.txt'} lists 7 class names", r.stderr


def test_both_formats_reach_the_same_table(tmp_path):
    files = tiny_demo(tmp_path / "d", num_train=12, num_test=6)
    sparse = dense_to_sparse(files["train"], tmp_path / "d" / "train.jsonl")
    a, b = load_table(files["train"], allowed_labels=(0, 1)), load_table(sparse)
    for field in ("path_offsets", "offsets", "classes", "values"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.path_blob == b.path_blob and a.num_classes == b.num_classes and not a.unknown and not b.unknown


# --- training, metrics and reports identical for both formats -------------------------------------------
def test_sparse_and_dense_files_train_evaluate_and_report_identically(tmp_path):
    files = tiny_demo(tmp_path / "d", num_train=16, num_test=8)
    sparse = {k: dense_to_sparse(files[k], tmp_path / "d" / f"{k}.jsonl") for k in ("train", "test")}
    outs = {}
    for name, f in (("dense", files), ("sparse", dict(files, **sparse))):
        out = train_main.train(train_main.get_args(train_argv(f, tmp_path / name, "--total_epoch", "1")))
        outs[name] = out["folder"]
        r = run_py("val.py", "--load_from", os.path.join(out["folder"], "best.pth"), "--test_json", f["test"],
                   "--report", tmp_path / f"rep_{name}")
        assert r.returncode == 0, r.stderr[-2000:]
        outs[name + "_val"] = r.stdout.split("\n", 1)[1].replace(f"rep_{name}", "rep")  # (line 1 names the files)
    a, b = (torch.load(os.path.join(outs[n], "epoch_1.pth"), weights_only=True) for n in ("dense", "sparse"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # identical training steps
    assert outs["dense_val"].replace(files["test"], "T").replace("test_demo.json", "T") == \
        outs["sparse_val"].replace(sparse["test"], "T").replace("test.jsonl", "T")
    ta, tb = (json.loads((tmp_path / f"rep_{n}" / "thresholds.json").read_text()) for n in ("dense", "sparse"))
    assert ta["thresholds"] == tb["thresholds"] and ta["best_f1"] == tb["best_f1"]
    pa, pb = ((tmp_path / f"rep_{n}" / "index.html").read_text() for n in ("dense", "sparse"))
    strip = lambda page: re.sub(r"<tr><td class=name>(checkpoint|data)</td>.*?</tr>", "", page)  # noqa: E731
    assert strip(pa) == strip(pb)


def test_unknown_labels_are_out_of_the_loss_and_the_run_says_so(tmp_path):
    files = tiny_demo(tmp_path / "d", num_train=16, num_test=4)  # 2 steps: 1 step at warm-up LR 0 is refused
    records = json.loads(open(files["train"]).read())
    path = tmp_path / "d" / "partial.jsonl"
    write_sparse(str(path), ((r["img_path"], [i for i, v in enumerate(r["target"]) if v == 1 and i != 5][:1], [5])
                             for r in records), 6, "unknown")
    ds = MultiLabelDataset(str(path), ImageTransform(32, train=True))
    assert ds[0][1].tolist().count(-1) >= 4  # unlisted classes reach the loss as -1: out of it
    r = run_py("main.py", *train_argv(files, tmp_path / "run", "--total_epoch", "1"), "--train_json", str(path))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "leaves unlisted classes unknown" in r.stdout
    assert json.loads((tmp_path / "run" / "args.json").read_text())["partial_labels"] is True


def test_unknown_labels_are_out_of_ap_by_hand_and_against_scikit_learn():
    from sklearn.metrics import average_precision_score
    # class 0: known for images 0, 1, 3 (pos, neg, pos); image 2 scores highest but is unknown
    table = LabelTable(b"abcd", np.arange(5), np.array([0, 1, 2, 2, 3]), np.array([0, 0, 0], dtype=np.int32),
                       np.array([1, 0, 1], dtype=np.int8), 1, unknown=True)
    scores = np.array([[0.6], [0.7], [0.99], [0.2]], dtype=np.float32)
    rep = evaluate_table(scores, table)
    # ranks among the known: 0.7 (neg), 0.6 (pos: precision 1/2), 0.2 (pos: precision 2/3)
    assert rep.ap[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert rep.overall["CP"] == pytest.approx(100 * 1 / 2)  # predicted at 0.5 among the known: 0.6 and 0.7
    rng = np.random.default_rng(3)
    n, c = 200, 7
    known = rng.random((n, c)) < 0.4
    labels = (rng.random((n, c)) < 0.3).astype(np.int8)
    recs = [(f"{i}.jpg", np.flatnonzero(known[i] & (labels[i] == 1)).tolist(),
             np.flatnonzero(known[i] & (labels[i] == 0)).tolist()) for i in range(n)]
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"sk_{os.getpid()}.jsonl")
    write_sparse(path, recs, c, "unknown")
    table, _ = read_sparse(path)
    os.remove(path)
    scores = rng.random((n, c)).astype(np.float32)
    rep = evaluate_table(scores, table)
    for k in range(c):
        m = known[:, k]
        assert rep.ap[k] == pytest.approx(average_precision_score(labels[m, k], scores[m, k]), abs=1e-12)


@pytest.mark.parametrize("unlisted", ["unknown", "negative"])
@pytest.mark.parametrize("tied", [False, True])
def test_the_table_evaluator_gives_the_dense_evaluators_numbers(tmp_path, unlisted, tied):
    rng = np.random.default_rng(1 if tied else 2)
    n, c = 250, 30
    recs = []
    for i in range(n):
        k = rng.choice(c, size=rng.integers(0, 10), replace=False).tolist()
        split = int(rng.integers(0, len(k) + 1))
        recs.append((f"{i}.jpg", sorted(k[:split]), sorted(k[split:]) if unlisted == "unknown" else []))
    write_sparse(str(tmp_path / "x.jsonl"), recs, c, unlisted)
    table, _ = read_sparse(str(tmp_path / "x.jsonl"))
    scores = (rng.integers(0, 8, size=(n, c)) / 7.0 if tied else rng.random((n, c))).astype(np.float32)
    rows = rng.permutation(n)[:180]  # a subset, in another order, as a sharded evaluation gathers it
    a = evaluate_table(scores[rows], table, rows)
    b = evaluate_dense(scores[rows], table.eval_targets(rows))
    np.testing.assert_array_equal(a.ap, b.ap)
    assert (a.map, a.overall, a.top3, a.undefined_classes) == (b.map, b.overall, b.top3, b.undefined_classes)


def test_binary_scores_file_is_memory_mapped_and_gives_the_same_metrics(tmp_path):
    from utils.evaluation import evaluate
    from utils.evaluation.report import load_scores_binary, save_scores
    rng = np.random.default_rng(5)
    recs = [(f"img/{i}.jpg", [int(rng.integers(0, 20))], [int(rng.integers(20, 40))]) for i in range(60)]
    write_sparse(str(tmp_path / "l.jsonl"), recs, 40, "unknown")
    table, _ = read_sparse(str(tmp_path / "l.jsonl"))
    scores = rng.random((60, 40)).astype(np.float32)
    names = [f"c{i}" for i in range(40)]
    written = save_scores(str(tmp_path / "s.npy"), table.paths(), scores, TableRows(table), names, {"mAP": 1.0})
    assert sorted(os.path.basename(p) for p in written) == ["s.classes.txt", "s.labels.jsonl", "s.metrics.json", "s.npy"]
    loaded, targets, paths, got_names = load_scores_binary(str(tmp_path / "s.npy"))
    assert isinstance(loaded, np.memmap) and paths == table.paths() and got_names == names
    a, b = evaluate(loaded, targets), evaluate(scores, TableRows(table))
    np.testing.assert_array_equal(a.ap, b.ap)
    assert a.overall == b.overall and a.top3 == b.top3
    r = run_py("val.py", "--from_scores", tmp_path / "s.npy")
    assert r.returncode == 0 and f"mAP: {b.map:.2f}" in r.stdout, r.stderr[-2000:]


def test_a_binary_scores_file_is_read_guarded_names_images_and_draws_the_report(tmp_path):
    """val.py --from_scores X.npy: a file that is not a score matrix is one line (numpy's tracebacks before),
    a column count that differs from the labels file says where each count comes from, non-finite scores
    name their images as the JSON path does, and --report draws any matrix it can (8 x 6 was refused)."""
    from utils.evaluation.report import save_scores
    files = tiny_demo(tmp_path / "d", num_train=4, num_test=8)
    records = json.loads(open(files["test"]).read())
    paths = [r["img_path"] for r in records]
    table_path = tmp_path / "l.jsonl"  # 3 of 6 classes listed per image, the others unknown
    write_sparse(str(table_path), ((p, [i % 6], [(i + 1) % 6, (i + 2) % 6]) for i, p in enumerate(paths)), 6, "unknown")
    table, _ = read_sparse(str(table_path))
    scores = np.random.default_rng(0).random((8, 6)).astype(np.float32)
    save_scores(str(tmp_path / "s.npy"), paths, scores, TableRows(table), None, None)
    r = run_py("val.py", "--from_scores", tmp_path / "s.npy", "--report", tmp_path / "rep")
    assert r.returncode == 0 and (tmp_path / "rep" / "index.html").is_file(), r.stderr[-2000:]
    good = (tmp_path / "s.npy").read_bytes()

    def one_line(content, *needles):
        (tmp_path / "s.npy").write_bytes(content)
        r = run_py("val.py", "--from_scores", tmp_path / "s.npy")
        line = r.stderr.strip()
        assert r.returncode == 1 and "\n" not in line and line.startswith("error: "), r.stderr[-2000:]
        assert all(n in line for n in needles), line

    def npy(array, **kw):
        import io
        out = io.BytesIO()
        np.save(out, array, **kw)
        return out.getvalue()

    npy_path = str(tmp_path / "s.npy")
    one_line(good[:len(good) - 40], npy_path, "not a readable .npy score matrix")  # truncated data
    one_line(good[:60], npy_path, "not a readable .npy score matrix")  # truncated header
    one_line(bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8)), npy_path, "not a readable .npy")
    one_line(b"", npy_path, "not a readable .npy score matrix")
    one_line(npy(np.array([[1, "a"]], dtype=object), allow_pickle=True), npy_path, "pickled Python objects")
    one_line(npy(scores[:, :, None]), f"{npy_path}: holds a 8x6x1 array of float32; a score matrix is images x")
    one_line(npy(np.array([["a"] * 6] * 8)), f"{npy_path}: holds a 8x6 array of <U1")
    one_line(npy(np.hstack([scores, scores[:, :1]])),
             f"{table_path.parent / 's.labels.jsonl'}: its header says 6 classes, {npy_path} has 7 columns")
    for row, col, value in ((3, 3, np.nan), (5, 3, np.inf), (6, 0, -np.inf)):  # listed, unknown, listed
        bad = scores.copy()
        bad[row, col] = value
        one_line(npy(bad), f"NaN or infinite scores for {paths[row]}")


def test_the_report_shows_the_lowest_and_highest_ap_classes_of_many():
    ap = np.linspace(0.1, 0.9, 9605)
    ap[7] = np.nan
    shown, note = figure_classes(ap)
    half = MANY_CLASSES // 2
    assert note == "9605 classes: the figures and the table show the 24 with the lowest AP and the 24 with the highest"
    assert len(shown) == MANY_CLASSES and shown[:half] == list(range(half + 1))[:7] + list(range(8, half + 1))
    assert shown[half:] == list(range(9605 - half, 9605))
    assert figure_classes(np.zeros(20)) == (list(range(20)), "")
    few = np.full(100, np.nan)
    few[[3, 50]] = 0.5
    assert figure_classes(few) == ([3, 50], "100 classes: the figures and the table show the 2 with an AP (the others "
                                             "have no positive image)")


# --- preparation ----------------------------------------------------------------------------------------
def test_prepare_openimages_on_its_own_layout(tmp_path):
    write_openimages(tmp_path / "oi")
    out = tmp_path / "prepared"
    prepare_openimages.prepare(str(tmp_path / "oi"), str(out), quiet=True)
    lines = (out / "train_openimages.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"format": "csra-sparse-labels", "version": 1, "classes": "classes.txt",
                                    "num_classes": 3, "unlisted": "unknown"}
    records = [json.loads(ln) for ln in lines[1:]]  # ImageID order; classes in the trainable list's order
    assert records == [{"img_path": str(tmp_path / "oi" / "train" / "aaa.jpg"), "positives": [1], "negatives": [0]},
                       {"img_path": str(tmp_path / "oi" / "train" / "bbb.jpg"), "positives": [1], "negatives": [2]}]
    assert (out / "classes.txt").read_text().split("\n")[:3] == ["Dog", "Cat", "Car"]
    test = [json.loads(ln) for ln in (out / "test_openimages.jsonl").read_text().splitlines()[1:]]
    assert test == [{"img_path": str(tmp_path / "oi" / "test" / "ttt.jpg"), "positives": [], "negatives": [0]}]
    r = run_py("utils/prepare/prepare_openimages.py", "--data_path", tmp_path / "oi", "--out_dir", out)
    assert r.returncode == 1 and "already prepared; pass --force" in r.stderr
    (tmp_path / "oi" / "validation-annotations-human-imagelabels.csv").write_text(
        "ImageID,Source,LabelName,Confidence\nvvv,verification,/m/car,0.5\n")
    r = run_py("utils/prepare/prepare_openimages.py", "--data_path", tmp_path / "oi", "--out_dir", out, "--force")
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].endswith(
        "validation-annotations-human-imagelabels.csv: line 2: Confidence must be 0 or 1 (got '0.5')")


def test_prepare_openimages_streams_a_sorted_file_and_reads_another_whole(tmp_path, monkeypatch, capsys):
    """OpenImages ships its files sorted by ImageID: written as read, one image in memory; the same labels in
    another order give the same file, through the in-memory path (with a note)."""
    rng = np.random.default_rng(0)
    rows = [(f"{i:04x}", lab, conf) for i in range(300) for lab in ("/m/dog", "/m/cat", "/m/car", "/m/old")
            for conf in "01" if rng.random() < 0.3]
    head = "ImageID,Source,LabelName,Confidence\n"
    written = {}
    for order, kept in (("sorted", rows), ("shuffled", [rows[i] for i in rng.permutation(len(rows))])):
        root = tmp_path / order
        write_openimages(root)
        (root / "oidv6-train-annotations-human-imagelabels.csv").write_text(
            head + "".join(f"{i},verification,{lab},{c}\n" for i, lab, c in kept))
        touch_images(root / "train", {i for i, _, _ in kept})
        if order == "sorted":  # the whole-file path must not be taken: it would hold every image at once
            monkeypatch.setattr(prepare_openimages, "sorted_records", None)
        else:
            monkeypatch.undo()
        capsys.readouterr()
        prepare_openimages.prepare(str(root), str(root / "out"), quiet=False)
        note = capsys.readouterr().out
        assert ("not sorted by ImageID" in note) == (order == "shuffled"), note
        written[order] = [json.loads(ln) for ln in (root / "out" / "train_openimages.jsonl").read_text().splitlines()]
    strip = lambda recs: [dict(r, img_path=os.path.basename(r["img_path"])) if "img_path" in r else r  # noqa: E731
                          for r in recs]
    assert strip(written["sorted"]) == strip(written["shuffled"])
    want = {}  # by hand: positives win over negatives; /m/old is not trainable
    for i, lab, c in rows:
        if lab != "/m/old":
            want.setdefault(i, (set(), set()))[int(c) == 0].add(["/m/dog", "/m/cat", "/m/car"].index(lab))
    assert strip(written["sorted"][1:]) == [{"img_path": f"{i}.jpg", "positives": sorted(p), "negatives": sorted(n - p)}
                                            for i, (p, n) in sorted(want.items())]


def test_prepare_nuswide_on_its_own_layout(tmp_path):
    write_nuswide(tmp_path / "nus")
    out = tmp_path / "prepared"
    r = run_py("utils/prepare/prepare_nuswide.py", "--data_path", tmp_path / "nus", "--out_dir", out)
    assert r.returncode == 0, r.stderr
    assert "1 listed images missing" in r.stdout
    lines = (out / "train_nuswide.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["unlisted"] == "negative" and json.loads(lines[0])["num_classes"] == 3
    flickr = tmp_path / "nus" / "Flickr"
    assert [json.loads(ln) for ln in lines[1:]] == [
        {"img_path": str(flickr / "actor" / "0001_1.jpg"), "positives": [0, 2], "negatives": []},
        {"img_path": str(flickr / "beach" / "0003_3.jpg"), "positives": [1, 2], "negatives": []}]
    table = load_table(str(out / "train_nuswide.jsonl"))
    assert table.dense().tolist() == [[1, 0, 1], [0, 1, 1]]  # unlisted: negative
    (tmp_path / "nus" / "Groundtruth" / "TrainTestLabels" / "Labels_sky_Test.txt").write_text("2\n")
    r = run_py("utils/prepare/prepare_nuswide.py", "--data_path", tmp_path / "nus", "--out_dir", out, "--force")
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].endswith(
        "Labels_sky_Test.txt: line 1: a label is 0 or 1 (got '2')")


def last_error(r):
    """The one 'error: ...' line a preparation script ended with (progress bars come before it)."""
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 1 and "Traceback" not in r.stderr and lines[-1].startswith("error: "), r.stderr[-2000:]
    return lines[-1]


def test_preparation_skips_and_counts_missing_images_and_refuses_empty_results(tmp_path):
    """OpenImages lists an image only if its file is there (as NUS-WIDE does: training would stop at it),
    and says how many it skipped; no classes, no listed images or none of them there is an error, not files
    with 0 classes or 0 images that every loader refuses."""
    oi, out = tmp_path / "oi", tmp_path / "prepared"
    write_openimages(oi)
    os.remove(oi / "train" / "bbb.jpg")
    r = run_py("utils/prepare/prepare_openimages.py", "--data_path", oi, "--out_dir", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (f"wrote {out / 'train_openimages.jsonl'}: 1 images, 1 positive and 1 negative labels; 1 labels of classes "
            f"outside the trainable list dropped; 1 labelled images missing from {oi / 'train'}, skipped") in r.stdout
    assert [json.loads(ln)["img_path"] for ln in (out / "train_openimages.jsonl").read_text().splitlines()[1:]] == \
        [str(oi / "train" / "aaa.jpg")]
    os.remove(oi / "test" / "ttt.jpg")
    r = run_py("utils/prepare/prepare_openimages.py", "--data_path", oi, "--out_dir", tmp_path / "b")
    assert last_error(r) == (f"error: {oi / 'test'}: none of the 1 images {oi / 'test-annotations-human-imagelabels.csv'} "
                             "labels is there")
    assert not (tmp_path / "b" / "test_openimages.jsonl").exists()
    (oi / "test-annotations-human-imagelabels.csv").write_text("ImageID,Source,LabelName,Confidence\n")
    r = run_py("utils/prepare/prepare_openimages.py", "--data_path", oi, "--out_dir", tmp_path / "c")
    assert last_error(r).endswith("test-annotations-human-imagelabels.csv: no image has a label of a trainable class")
    (oi / "oidv6-classes-trainable.txt").write_text("\n")
    r = run_py("utils/prepare/prepare_openimages.py", "--data_path", oi, "--out_dir", tmp_path / "d")
    assert last_error(r).endswith("oidv6-classes-trainable.txt: no classes")
    nus = tmp_path / "nus"
    write_nuswide(nus)
    (nus / "ImageList" / "TestImagelist.txt").write_text("")
    r = run_py("utils/prepare/prepare_nuswide.py", "--data_path", nus, "--out_dir", tmp_path / "e")
    assert last_error(r).endswith(f"{nus / 'ImageList' / 'TestImagelist.txt'}: no images listed")
    (nus / "Concepts81.txt").write_text("\n\n")
    r = run_py("utils/prepare/prepare_nuswide.py", "--data_path", nus, "--out_dir", tmp_path / "f")
    assert last_error(r) == f"error: {nus / 'Concepts81.txt'}: no concepts"
    assert not (tmp_path / "f").exists()


def test_preparation_reads_files_with_a_byte_order_mark(tmp_path):
    """Spreadsheet tools on Windows start UTF-8 files with a byte-order mark: the OpenImages CSVs and class
    list, the NUS-WIDE concept list, image lists and label files, and VOC's split lists prepare exactly as
    without it (the concept list's mark used to become part of the first concept's file name)."""
    from test_prepare import VOC_ANN, make_voc

    def mark_every_text_file(root):
        for folder, _, names in os.walk(root):
            for name in names:
                if name.endswith((".csv", ".txt")):
                    path = os.path.join(folder, name)
                    data = open(path, "rb").read()
                    open(path, "wb").write(b"\xef\xbb\xbf" + data)

    def prepared(out):
        return {name: (out / name).read_text().replace(str(tmp_path / "marked"), str(tmp_path / "plain"))
                for name in sorted(os.listdir(out))}

    for variant in ("plain", "marked"):
        root = tmp_path / variant
        root.mkdir()
        write_openimages(root / "oi")
        write_nuswide(root / "nus")
        make_voc(root, annotations=VOC_ANN, splits={"train": ["000001"], "val": ["000002"], "test": ["000003"]})
        if variant == "marked":
            mark_every_text_file(root)
        for script, data in (("prepare_openimages.py", "oi"), ("prepare_nuswide.py", "nus"),
                             ("prepare_voc.py", "VOCdevkit")):
            r = run_py(f"utils/prepare/{script}", "--data_path", root / data, "--out_dir", root / f"{data}_out")
            assert r.returncode == 0, (variant, script, r.stderr[-2000:])
    for data in ("oi", "nus", "VOCdevkit"):
        plain, marked = prepared(tmp_path / "plain" / f"{data}_out"), prepared(tmp_path / "marked" / f"{data}_out")
        assert marked == plain and len(plain) >= 3, data


def test_training_and_the_report_at_openimages_class_count(tmp_path):
    """9,605 classes, most labels unknown: every loss trains (unknowns masked), the log is written, and the
    report draws the lowest and highest AP classes."""
    files = tiny_demo(tmp_path / "d", num_train=16, num_test=8)
    rng = np.random.default_rng(0)
    C = 9605
    for split in ("train", "test"):
        records = json.loads(open(files[split]).read())
        rows = []
        for r in records:
            classes = rng.choice(C, size=12, replace=False).tolist()
            rows.append((r["img_path"], [i for i, v in enumerate(r["target"]) if v == 1] + classes[:2], classes[2:]))
        write_sparse(str(tmp_path / f"{split}.jsonl"), ((p, sorted(set(a)), [c for c in b if c not in a])
                                                        for p, a, b in rows), C, "unknown")
    (tmp_path / "classes.txt").write_text("".join(f"class {i}\n" for i in range(C)))
    for loss in ("bce", "focal", "asl"):
        argv = ["--train_json", str(tmp_path / "train.jsonl"), "--test_json", str(tmp_path / "test.jsonl"),
                "--model", "small_cnn", "--pretrained", "none", "--img_size", "32", "--batch_size", "8",
                "--total_epoch", "1", "--warmup_epoch", "0", "--num_workers", "0", "--loss", loss,
                "--output_dir", str(tmp_path / loss)]
        out = train_main.train(train_main.get_args(argv))
        entry = json.loads((tmp_path / loss / "log.jsonl").read_text())
        assert np.isfinite(entry["train_loss"]) and entry["mAP"] >= 0, loss
    r = run_py("val.py", "--load_from", os.path.join(out["folder"], "best.pth"), "--report", tmp_path / "rep")
    assert r.returncode == 0, r.stderr[-2000:]
    page = (tmp_path / "rep" / "index.html").read_text()
    assert re.search(f"{C} classes: the figures and the table show the (24 with the lowest AP|[0-9]+ with an AP)", page)
    assert "unknown labels (classes a sparse file does not list for an image) left out of AP and P/R" in page
    assert len(json.loads((tmp_path / "rep" / "thresholds.json").read_text())["thresholds"]) == C
