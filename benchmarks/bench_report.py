"""Time the evaluation report at COCO size (40,137 images x 80 classes) from saved scores.

    python benchmarks/bench_report.py [--n 40137] [--classes 80]
    python benchmarks/bench_report.py --quick    # 4,000 x 20

Full runtime on a 2-core CPU: about 15 seconds.

Writes a --save_scores file of synthetic COCO-like scores (about 2.9 positives per image), then runs
``val.py --from_scores FILE --report DIR`` in this process and prints the time of each part:
reading the scores, the metrics, the analysis and figures, and the whole report. The images do not
exist, so no thumbnails are drawn (with a model, they take one forward pass over at most
8 x --report_classes images).
"""
from __future__ import annotations

import os
import tempfile
import time

from benchmarks.bench_metrics import coco_like, coco_size_args
from utils.evaluation.report import save_scores
from val import get_args, report_from_scores


def main() -> None:
    a = coco_size_args(__doc__, quick_classes=20)
    scores, targets = coco_like(a.n, a.classes, separation=2.5)
    names = [f"class_{c}" for c in range(a.classes)]
    out = tempfile.mkdtemp(prefix="report_bench_")
    scores_file = os.path.join(out, "scores.json")
    save_scores(scores_file, [f"images/{i:06d}.jpg" for i in range(a.n)], scores, targets, names, None)
    t0 = time.perf_counter()
    result = report_from_scores(get_args(["--dataset", "coco", "--from_scores", scores_file,
                                          "--report", os.path.join(out, "report")]))
    total = time.perf_counter() - t0
    print(f"\n{a.n} x {a.classes}: report from saved scores in {total:.2f} s "
          f"(analysis + figures + thresholds.json {result['html']['seconds_figures']:.2f} s, "
          f"writing the page {result['html']['seconds_total'] - result['html']['seconds_figures']:.2f} s, "
          f"reading the scores and the metrics {total - result['html']['seconds_total']:.2f} s)")


if __name__ == "__main__":
    main()
