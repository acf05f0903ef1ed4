"""OpenImages- and NUS-WIDE-size data: loading sparse label files, and evaluating at up to 125,436 images x
9,605 classes, against one bare argsort of the same scores.

    python benchmarks/bench_scale.py [--quick] [--json FILE]

Loading: synthetic sparse files (about 10 known labels an image: 3 positives, 7 negatives, 9,605 classes,
unlisted = unknown) of 10^4, 10^5 and 10^6 records, each read by ``pipeline.data.dataset.load_table`` in a fresh
process: seconds, what loading adds to the process's peak memory (its ru_maxrss before and after), and the
cost per record; the dense JSON format beside them where it fits (10^4 records). Evaluation: synthetic
float32 scores and such labels at 10^4..125,436 images x 80..9,605 classes, ``utils.evaluation.evaluate``
(the table's rows: OpenImages' path) against ``np.argsort`` of the same scores along the classes (in blocks
of rows, so its output fits in memory); the evaluation's peak memory (tracemalloc: what numpy allocates)
over the score matrix's size. ``--json FILE`` also writes the headline figures: load_1e6_s, load_1e6_peak_mb,
eval_openimages_s, eval_openimages_vs_argsort, eval_openimages_peak_vs_matrix (the matrix plus the
evaluation's peak, over the matrix).

Full runtime on a 2-core CPU: about 10 minutes and 12 GB of memory (the 4.8 GB OpenImages score matrix, and
the argsort's blocks); --quick: seconds, small sizes only. Last, a training step's CSRA-head cost beside the
backbone's at 80, 1,000 and 9,605 classes (ResNet-50, 224 px; --quick: the demo CNN).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

from pipeline.data.labels import TableRows, read_sparse, write_sparse
from utils.configuration.entry import ScriptParser
from utils.evaluation import evaluate

CLASSES = 9605
OPENIMAGES = (125_436, 9_605)
LOADER = """
import resource, time
from pipeline.data.dataset import load_table
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
table = load_table({path!r})
seconds = time.perf_counter() - t
added = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(seconds, added / 1024, len(table))
"""


def synthetic_records(n: int, classes: int, seed: int = 0, positives: int = 3, negatives: int = 7):
    rng = np.random.default_rng(seed)
    known = positives + negatives
    picks = rng.integers(0, classes, size=(n, known * 2))
    for i in range(n):
        row = list(dict.fromkeys(picks[i].tolist()))[:known]  # distinct classes, in draw order
        yield f"train/{i:016x}.jpg", sorted(row[:positives]), sorted(row[positives:])


def write_files(folder: str, n: int, classes: int, dense: bool):
    sparse = os.path.join(folder, f"sparse_{n}.jsonl")
    write_sparse(sparse, synthetic_records(n, classes), classes, "unknown")
    if not dense:
        return sparse, None
    path = os.path.join(folder, f"dense_{n}.json")
    with open(path, "w") as f:  # the dense form of the same labels: -1 unknown (a partial-label training file)
        f.write("[")
        for i, (img, pos, neg) in enumerate(synthetic_records(n, classes)):
            t = np.full(classes, -1, dtype=np.int8)
            t[pos], t[neg] = 1, 0
            f.write(("," if i else "") + json.dumps({"img_path": img, "target": t.tolist()}))
        f.write("]")
    return sparse, path


def time_load(path: str) -> tuple:
    """(seconds, MB added to the peak, records) of loading ``path`` in a fresh process."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", LOADER.format(path=os.path.abspath(path))], capture_output=True,
                         text=True, check=True, cwd=root).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


def loading_table(sizes, folder: str, dense_up_to: int) -> dict:
    print(f"\nloading ({CLASSES} classes, about 10 known labels an image; fresh process each; peak = what loading "
          "adds to the process's peak memory)")
    print(f"{'records':>10s}{'format':>8s}{'file MB':>10s}{'seconds':>10s}{'per record':>13s}{'peak MB':>10s}")
    figures = {}
    for n in sizes:
        sparse, dense = write_files(folder, n, CLASSES, dense=n <= dense_up_to)
        for fmt, path in (("sparse", sparse), ("dense", dense)):
            if path is None:
                continue
            seconds, added, count = time_load(path)
            assert count == n
            print(f"{n:10d}{fmt:>8s}{os.path.getsize(path) / 1e6:10.1f}{seconds:10.2f}"
                  f"{1e6 * seconds / n:10.1f} us{added:10.0f}", flush=True)
            figures[(n, fmt)] = (seconds, added)
            os.remove(path)
    return figures


def bare_argsort_seconds(scores: np.ndarray, block: int = 4096) -> float:
    t = time.perf_counter()
    for a in range(0, scores.shape[0], block):
        np.argsort(scores[a:a + block], axis=1)
    return time.perf_counter() - t


def synthetic_case(n: int, c: int, seed: int = 1):
    """Scores and a table of n images x c classes (known labels: about 10 an image, fewer for small c)."""
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "labels.jsonl")
    k = min(10, c)
    write_sparse(path, synthetic_records(n, c, seed, positives=max(1, k * 3 // 10), negatives=k - max(1, k * 3 // 10)),
                 c, "unknown")
    table, _ = read_sparse(path)
    os.remove(path)
    rng = np.random.default_rng(seed)
    scores = np.empty((n, c), dtype=np.float32)
    for a in range(0, n, 8192):  # in blocks: no float64 temporary of the whole matrix
        scores[a:a + 8192] = rng.random((min(8192, n - a), c), dtype=np.float32)
    rows = np.repeat(np.arange(n), np.diff(table.offsets))
    hit = table.values == 1
    scores[rows[hit], table.classes[hit]] += 0.5  # positives score higher: a mAP well above chance
    np.clip(scores, 0, 1, out=scores)
    return scores, TableRows(table)


def evaluation_table(sizes) -> dict:
    print("\nevaluation (unknown labels left out; float32 scores): utils.evaluation.evaluate on the table's rows "
          "against np.argsort of the same scores along the classes")
    print(f"{'images x classes':>20s}{'matrix GB':>11s}{'evaluate s':>12s}{'argsort s':>11s}{'ratio':>8s}"
          f"{'peak/matrix':>13s}{'mAP':>8s}")
    figures = {}
    for n, c in sizes:
        scores, targets = synthetic_case(n, c)
        tracemalloc.start()
        t = time.perf_counter()
        report = evaluate(scores, targets)
        seconds = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        sort_s = bare_argsort_seconds(scores)
        ratio = (scores.nbytes + peak) / scores.nbytes
        print(f"{f'{n} x {c}':>20s}{scores.nbytes / 1e9:11.2f}{seconds:12.2f}{sort_s:11.2f}{seconds / sort_s:8.2f}"
              f"{ratio:13.2f}{report.map:8.2f}", flush=True)
        figures[(n, c)] = (seconds, seconds / sort_s, ratio)
        del scores, targets
    return figures


def head_cost_table(model_name: str, size: int, batch: int, class_counts) -> None:
    """A training step's backbone (forward + backward) beside the CSRA head's (forward, loss, backward) as
    the class count grows, in the precision --amp auto picks, on features of the real size."""
    import torch
    from pipeline.models.model import MultiLabelNet
    from pipeline.models.runtime import resolve_runtime
    from pipeline.training.losses import make_criterion
    runtime = resolve_runtime(torch.device("cpu"), model_name, "auto", True, "unit")
    criterion = make_criterion("bce", partial_labels=True)

    def timed(fn, reps: int = 3) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / reps

    print(f"\nhead cost: {model_name} at {size} px, batch {batch}, {runtime.amp} autocast; ms per training step")
    print(f"{'classes':>9s}{'backbone ms':>13s}{'CSRA head ms':>14s}{'head share':>12s}")
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    for c in class_counts:
        net = MultiLabelNet(model_name, c, img_size=size, pretrained="none")
        model = runtime.prepare_model(net.train(), train=True)
        with torch.no_grad(), runtime.autocast():
            feats = model.forward_features(x).float()
        targets = torch.randint(-1, 2, (batch, c)).float()  # a third unknown, as partial labels

        def backbone():
            with runtime.autocast():
                f = model.forward_features(x)
            f.float().sum().backward()

        def head():
            f = feats.detach().requires_grad_()
            with runtime.autocast():
                logits = model.head(f)
            criterion(logits.float(), targets).backward()
        b, h = timed(backbone), timed(head)
        print(f"{c:9d}{1000 * b:13.1f}{1000 * h:14.1f}{100 * h / (b + h):11.1f}%", flush=True)


def main(argv=None) -> None:
    p = ScriptParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes only (seconds)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the headline figures as JSON")
    a = p.parse_args(argv)
    cpu = open("/proc/cpuinfo").read() if os.path.isfile("/proc/cpuinfo") else ""
    kind = "native bf16 (AVX512-BF16/AMX)" if ("avx512_bf16" in cpu or "amx_bf16" in cpu) else "AVX2"
    print(f"{os.cpu_count()} CPUs, {kind}; numpy {np.__version__}")
    with tempfile.TemporaryDirectory() as folder:
        load = loading_table([10_000] if a.quick else [10_000, 100_000, 1_000_000], folder,
                             dense_up_to=0 if a.quick else 10_000)
    sizes = [(10_000, 80), (10_000, 1_000)] if a.quick else \
        [(10_000, 80), (40_137, 80), (10_000, 9_605), (125_436, 80), (125_436, 1_000), OPENIMAGES]
    evals = evaluation_table(sizes)
    if a.quick:
        head_cost_table("small_cnn", 64, 8, [80, 9605])
    else:
        head_cost_table("resnet50", 224, 8, [80, 1000, 9605])
    if a.json:
        big, top = (1_000_000, "sparse"), OPENIMAGES
        out = {"load_1e6_s": load.get(big, (None,))[0], "load_1e6_peak_mb": load.get(big, (None, None))[1],
               "eval_openimages_s": evals.get(top, (None,))[0],
               "eval_openimages_vs_argsort": evals.get(top, (None, None))[1],
               "eval_openimages_peak_vs_matrix": evals.get(top, (None, None, None))[2], "cpu": kind}
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
