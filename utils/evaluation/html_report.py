"""The evaluation report: one self-contained HTML page (index.html) with PNG figures beside it, and
thresholds.json. Opens from disk in any browser; no scripts, fonts or style sheets from elsewhere.

    val.py ... --report DIR [--report_classes 10]          (or --from_scores scores.json instead of a model)
"""
from __future__ import annotations

import html
import math
import os
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from pipeline.data.labels import DENSE_LIMIT, TableRows, fits_dense
from pipeline.errors import ConfigError, DataError
from pipeline.images import read_rgb
from utils.evaluation.analysis import ClassAnalysis, analyse, worst_classes, worst_mistakes
from utils.evaluation.metrics import UNKNOWN, Report, masks
from utils.evaluation.report import KEYS, class_name, thresholds_file
from utils.output.fileio import atomic_write, make_folder, save_figure_atomic, save_image_atomic
from utils.output.visualize import fit_thumbnail, scale_colours

THUMB = 160
# (image index, class index) -> thumbnail with that class's heatmap; called once with every request
Thumbnailer = Callable[[Dict[int, List[int]]], Dict[Tuple[int, int], Image.Image]]

CSS = """body{font-family:sans-serif;font-size:15px;margin:24px;max-width:1400px;color:#111}
h1{font-size:24px}h2{font-size:19px;margin-top:32px;border-bottom:1px solid #aaa}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}
th{background:#eee}td.name,th.name{text-align:left;white-space:nowrap}
.cls{margin:18px 0}.row{display:flex;flex-wrap:wrap;gap:10px}.fig{text-align:left;font-size:13px}
.fig img{display:block;border:1px solid #999}.note{color:#444}"""


def report_targets(targets):
    """The target matrix the report's analysis reads (a table's rows made dense, as the evaluation makes a
    dataset's below DENSE_LIMIT); beyond that size one line says the report is not drawn."""
    if not isinstance(targets, TableRows):
        return targets
    n, c = targets.shape
    if fits_dense(n, c):
        return targets.dense()
    raise ConfigError(f"--report: {n} images x {c} classes is beyond what the report draws ({DENSE_LIMIT:,} labels); "
                      "the metrics are complete; draw the report on a part of the test set (--test_json)")


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def ap_axis_start(values: Sequence[float]) -> float:
    """Where the AP axis starts: zoomed to the data (a step of 5 below the lowest AP), so classes at
    98-99.7 do not draw as identical bars; 0 when the APs spread widely."""
    lo = min(values) if len(values) else 0.0
    start = 5.0 * math.floor((lo - 2.0) / 5.0)
    return float(min(max(start, 0.0), 95.0)) if lo > 40 else 0.0


MANY_CLASSES = 48  # beyond this, the figures and the table show the lowest and highest AP classes


def figure_classes(ap: np.ndarray) -> Tuple[List[int], str]:
    """(the classes the figures and the per-class table show, a note saying which): all, or for many
    classes (OpenImages' 9,605) the MANY_CLASSES / 2 with the lowest AP and as many with the highest."""
    C = len(ap)
    if C <= MANY_CLASSES:
        return list(range(C)), ""
    ranked = [c for c in worst_classes(ap, None) if not np.isnan(ap[c])]
    half = MANY_CLASSES // 2
    if len(ranked) <= MANY_CLASSES:
        return sorted(ranked), (f"{C} classes: the figures and the table show the {len(ranked)} with an AP (the "
                                "others have no positive image)")
    return sorted(set(ranked[:half]) | set(ranked[-half:])), (
        f"{C} classes: the figures and the table show the {half} with the lowest AP and the {half} with the highest")


def draw_ap_bars(path: str, ap: np.ndarray, names: Sequence[str], classes: Optional[Sequence[int]] = None) -> None:
    plt = _matplotlib()
    allowed = set(range(len(ap)) if classes is None else classes)
    order = [c for c in worst_classes(ap, None) if not np.isnan(ap[c]) and c in allowed][::-1]  # best at the top
    values = [100 * ap[c] for c in order]
    start = ap_axis_start(values)
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.26 * len(order) + 1.2)))
    ax.barh(range(len(order)), [v - start for v in values], left=start, color="0.55")
    for y, v in enumerate(values):  # the value at the end of each bar
        ax.text(v - 0.005 * (100 - start), y, f"{v:.2f}", va="center", ha="right", fontsize=8, color="white")
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([names[c] for c in order], fontsize=9)
    ax.set_xlabel("AP (%)" + (f", axis from {start:.0f}" if start else ""))
    ax.set_xlim(start, 100)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)


def draw_pr_curves(path: str, a: ClassAnalysis, names: Sequence[str], classes: Optional[Sequence[int]] = None) -> None:
    """Small multiples, one per class (no shared axes, no tight_layout: both cost time quadratic in
    the number of panels)."""
    plt = _matplotlib()
    shown = list(range(len(names)) if classes is None else classes)
    C = len(shown)
    cols = min(4, C)  # panels of about 300 px on the page
    rows = math.ceil(C / cols)
    height = 3.0 * rows + 0.4
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, height), squeeze=False)
    fig.subplots_adjust(left=0.6 / (3.4 * cols), right=1 - 0.15 / (3.4 * cols), bottom=0.55 / height,
                        top=1 - 0.35 / height, wspace=0.25, hspace=0.45)
    for k in range(rows * cols):
        ax = axes[k // cols][k % cols]
        if k >= C:
            ax.axis("off")
            continue
        c = shown[k]
        curve = a.curves[c]
        title = names[c] if len(names[c]) <= 24 else names[c][:23] + "."
        ap = "n/a" if np.isnan(a.ap[c]) else f"{100 * a.ap[c]:.1f}"
        ax.set_title(f"{title}  AP {ap}", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xticks([0, 0.5, 1], ["0", "0.5", "1"])
        ax.set_yticks([0.5, 1], ["0.5", "1"])  # no 0 on the y axis: it would touch the x axis's 0
        ax.tick_params(labelsize=8)
        if curve.recall.size:
            r = np.concatenate([[0.0], curve.recall])
            p = np.concatenate([[curve.precision[0]], curve.precision])
            ax.step(r, p, where="pre", color="black", linewidth=1.1)  # the area under it is the AP
            if not np.isnan(a.ap[c]) and a.ap[c] > 0.9:
                # a high-AP class: the curve hugs the frame; the inset zooms on where it drops, at high recall
                drop = r[p < 0.995]
                x0 = float(min(0.9, max(0.0, (drop.min() if drop.size else 0.9) - 0.05)))
                y0 = float(p[r >= x0].min())
                inset = ax.inset_axes([0.12, 0.1, 0.62, 0.5])
                inset.step(r, p, where="pre", color="black", linewidth=1.0)
                inset.set_xlim(x0, 1)
                inset.set_ylim(y0 - 0.05 * (1 - y0) - 0.001, 1.0 + 0.03 * (1 - y0) + 0.001)
                inset.set_xticks([x0, 1], [f"{x0:.2f}", "1"])
                inset.tick_params(labelsize=7)
                inset.set_facecolor("0.96")
                inset.set_title(f"zoom: recall {x0:.2f}-1", fontsize=7, pad=2)
    for ax in axes[-1]:
        ax.set_xlabel("recall", fontsize=9)
    for row in axes:
        row[0].set_ylabel("precision", fontsize=9)
    save_figure_atomic(fig, path, dpi=80)
    plt.close(fig)


def draw_threshold_sweep(path: str, a: ClassAnalysis) -> None:
    plt = _matplotlib()
    t = a.sweep["thresholds"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style, marker in (("CF1", "-", "o"), ("OF1", "--", "s")):
        y = a.sweep[key]
        k = int(np.argmax(y))
        # the best point is in the legend, not written on the curves
        ax.plot(t, y, linestyle=style, marker=marker, markersize=4, color="black",
                label=f"{key} (best {y[k]:.2f} at threshold {t[k]:.2f}, star)")
        ax.plot([t[k]], [y[k]], marker="*", markersize=14, color="0.5", markeredgecolor="black")
    ax.set_xlabel("threshold (one for every class)")
    ax.set_ylabel("F1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower center", fontsize=9, framealpha=0.95)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)


def colour_bar(width: int = 240, height: int = 14) -> Image.Image:
    """The heatmaps' colour scale as utils.output.visualize.overlay draws it (each level's colour over white at
    the opacity the overlay gives it), labelled low to high."""
    from PIL import ImageDraw

    ramp = scale_colours(np.linspace(0, 1, width))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, right = "low", "high attention"
    lw, rw = (int(probe.textlength(t)) + 8 for t in (left, right))
    bar = Image.new("RGB", (lw + width + rw, height + 4), "white")
    bar.paste(Image.fromarray(np.repeat(ramp[None], height, axis=0)), (lw, 2))
    draw = ImageDraw.Draw(bar)
    draw.text((2, 3), left, fill="black")
    draw.text((lw + width + 6, 3), right, fill="black")
    return bar


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], name_cols: int = 1) -> str:
    cells = "".join(f"<th{' class=name' if i < name_cols else ''}>{html.escape(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{' class=name' if i < name_cols else ''}>{html.escape(str(v))}</td>"
                                    for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _plain_thumbnail(path: str) -> Optional[Image.Image]:
    try:
        return fit_thumbnail(read_rgb(path), THUMB)
    except DataError:
        return None


class ScoredImages(NamedTuple):
    """What a report is drawn from: (N, C) scores and targets, the N image paths, the class names (or None)."""
    scores: np.ndarray
    targets: np.ndarray
    paths: Sequence[str]
    class_names: Optional[Sequence[str]]


class Figures(NamedTuple):
    """What draw_figures drew: the class names shown, the per-class analysis, the classes in the figures and a
    note when they are a subset."""
    names: List[str]
    analysis: ClassAnalysis
    figured: List[int]
    subset: str


def write_report(out_dir: str, scored: ScoredImages, report: Report, *, info: Dict[str, str],
                 thumbnails: Optional[Thumbnailer] = None, report_classes: Optional[int] = 10,
                 pr_convention: str = "ours", sweep: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, object]:
    """Write index.html, the figures and thresholds.json into ``out_dir``; return paths and timings.
    ``sweep``: the global-threshold sweep (``analysis.threshold_sweep``) when the caller has it already."""
    t0 = time.perf_counter()
    make_folder(out_dir)
    names = [class_name(scored.class_names, c) for c in range(scored.scores.shape[1])]
    figures = draw_figures(out_dir, scored, names, report, info, pr_convention, sweep)
    t_figures = time.perf_counter() - t0
    shown = worst_classes(report.ap, report_classes)
    sections, requests = mistake_sections(out_dir, scored, names, report, shown, thumbnails)
    page = html_page(scored, report, info, pr_convention, figures, shown, sections, thumbnails is not None)
    index = os.path.join(out_dir, "index.html")
    with atomic_write(index) as f:
        f.write(page)
    return {"index": index, "thresholds": os.path.join(out_dir, "thresholds.json"), "seconds_figures": t_figures,
            "seconds_total": time.perf_counter() - t0, "thumbnail_images": len(requests)}


def draw_figures(out_dir, scored: ScoredImages, names, report, info, pr_convention, sweep=None) -> Figures:
    """The per-class analysis, the three figures and thresholds.json."""
    a = analyse(scored.scores, scored.targets, report.ap, pr_convention=pr_convention, sweep=sweep)
    figured, subset = figure_classes(report.ap)
    draw_ap_bars(os.path.join(out_dir, "ap_per_class.png"), report.ap, names, figured)
    draw_pr_curves(os.path.join(out_dir, "pr_curves.png"), a, names, figured)
    draw_threshold_sweep(os.path.join(out_dir, "threshold_sweep.png"), a)
    thresholds_file(os.path.join(out_dir, "thresholds.json"), names, a.best_threshold, a.best_f1,
                    info.get("data") or info.get("scores", ""), "best-F1 thresholds chosen on the evaluated set: optimistic for that set; "
                    "choose them on a held-out split for honest figures")
    return Figures(names, a, figured, subset)


def _rows_are(scores, items, c, wrong, mistake) -> str:
    """What a row of thumbnails is: how many are mistakes at 0.5 (none: the class is right on every image)."""
    n = sum(bool(wrong(scores[i, c])) for i in items)
    if not items:
        return "none"
    if n == 0:
        return f"all {len(items)} correct at 0.5 (no {mistake}s)"
    return f"{n} {mistake}{'s' if n > 1 else ''} at 0.5" + (f", {len(items) - n} correct" if n < len(items) else "")


def mistake_sections(out_dir, scored: ScoredImages, names, report, shown, thumbnails) -> Tuple[List[str], dict]:
    """For each shown class, its highest-scoring negatives and lowest-scoring positives as thumbnails
    (with its heatmap when ``thumbnails`` draws them); (HTML sections, the thumbnail requests)."""
    scores, targets, paths = scored.scores, scored.targets, scored.paths
    pos_neg = masks(np.asarray(targets))[:2]  # once, not once per class
    mistakes = {c: worst_mistakes(scores, targets, c, pos_neg=pos_neg) for c in shown}
    requests: Dict[int, List[int]] = {}
    for c, (fp, fn) in mistakes.items():
        for i in fp + fn:
            requests.setdefault(i, []).append(c)
    thumbs = thumbnails(requests) if thumbnails is not None else {}
    thumb_dir = make_folder(os.path.join(out_dir, "thumbs"))
    if thumbnails is not None:
        save_image_atomic(colour_bar(), os.path.join(out_dir, "colour_scale.png"))
    pos_mask = np.asarray(targets) == 1
    predicted = np.asarray(scores) >= 0.5

    def labels_of(mask_row) -> str:
        return ", ".join(names[k] for k in np.flatnonzero(mask_row)) or "none"

    def figure(i: int, c: int, kind: str, wrong) -> str:
        img = thumbs.get((i, c)) or _plain_thumbnail(paths[i])
        mistake = bool(wrong(scores[i, c]))
        name = f"c{c:03d}_{kind if mistake else 'correct'}_{i}.png"  # the file says what the page says
        if img is not None:
            save_image_atomic(img, os.path.join(thumb_dir, name))
            pic = f'<img src="thumbs/{name}" alt="{html.escape(os.path.basename(paths[i]))}">'
        else:
            pic = "<div class=note>(image not readable)</div>"
        verdict = f"<b>{kind.upper()}</b>" if mistake else "correct at 0.5"
        return (f"<div class=fig>{pic}{html.escape(names[c])} {scores[i, c]:.3f}, {verdict}<br>"
                f"true: {html.escape(labels_of(pos_mask[i]))}<br>"
                f"predicted: {html.escape(labels_of(predicted[i]))}<br>"
                f"<span class=note>{html.escape(os.path.basename(paths[i]))}</span></div>")

    sections = []
    for c in shown:
        fp, fn = mistakes[c]
        blocks = []
        for title, items, kind, wrong, mistake in (
                ("Highest-scoring negatives", fp, "fp", lambda s: s >= 0.5, "false positive"),
                ("Lowest-scoring positives", fn, "fn", lambda s: s < 0.5, "false negative")):
            figs = "".join(figure(i, c, kind, wrong) for i in items)
            blocks.append(f"<p><b>{title}: {_rows_are(scores, items, c, wrong, mistake)}</b></p>"
                          f"<div class=row>{figs or '<i>none</i>'}</div>")
        ap = "n/a" if np.isnan(report.ap[c]) else f"{100 * report.ap[c]:.2f}"
        sections.append(f"<div class=cls><h3>{html.escape(names[c])} (AP {ap})</h3>{''.join(blocks)}</div>")
    return sections, requests


def conventions_in_force(report: Report, targets, pr_convention: str) -> List[str]:
    out = [f"AP non-interpolated, tied scores as one block; convention: {report.convention}",
           "predicted: score >= 0.5; CF1 = harmonic mean of CP and CR; CF1(zoo) = mean of per-class F1",
           f"P/R convention: {pr_convention}"]
    if report.convention == "voc":
        out.append("VOC: difficult (0) left out of AP and P/R; -1 negative")
    if (np.asarray(targets) == UNKNOWN).any():
        out.append("unknown labels (classes a sparse file does not list for an image) left out of AP and P/R")
    if report.extra.get("has_ignored_99"):
        out.append("99 (unspecified) left out of AP, negative in P/R (the authors' rule)")
    return out


def html_page(scored: ScoredImages, report, info, pr_convention, figures: Figures, shown, sections,
              with_heatmaps: bool) -> str:
    scores, targets = scored.scores, scored.targets
    names, a, figured, subset = figures
    summary_rows = [["all"] + [f"{report.overall[k]:.2f}" for k in KEYS] + [f"{report.overall['CF1_mean_per_class']:.2f}"],
                    ["top-3"] + [f"{report.top3[k]:.2f}" for k in KEYS] + [f"{report.top3['CF1_mean_per_class']:.2f}"]]
    conventions = conventions_in_force(report, targets, pr_convention)
    per_class = [[names[c], "n/a" if np.isnan(report.ap[c]) else f"{100 * report.ap[c]:.2f}", int(a.positives[c]),
                  int(a.predicted[c]), int(a.tp[c]), f"{100 * a.precision[c]:.2f}", f"{100 * a.recall[c]:.2f}",
                  f"{100 * a.f1[c]:.2f}", f"{a.best_threshold[c]:.4f}", f"{100 * a.best_f1[c]:.2f}"]
                 for c in figured]
    subset = f"<p class=note>{subset}; thresholds.json holds every class.</p>" if subset else ""
    facts = "".join(f"<tr><td class=name>{html.escape(k)}</td><td class=name>{html.escape(str(v))}</td></tr>"
                    for k, v in info.items())
    heat_note = ("<p class=note>Each thumbnail shows the class's attention heatmap over the image: "
                 "<img src=\"colour_scale.png\" alt=\"colour scale\" style=\"vertical-align:middle\"></p>"
                 if with_heatmaps else
                 "<p class=note>Drawn from saved scores: thumbnails show the images without attention heatmaps.</p>")
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>CSRA evaluation report</title>
<style>{CSS}</style></head><body>
<h1>CSRA evaluation report: mAP {report.map:.2f}</h1>
<table>{facts}<tr><td class=name>images</td><td class=name>{scores.shape[0]}</td></tr></table>
<h2>Summary: the paper's metrics at threshold 0.5</h2>{_table(["", *KEYS, "CF1(zoo)"], summary_rows)}
<p class=note>{"<br>".join(html.escape(x) for x in conventions)}</p>
<h2>AP per class, best at the top</h2>{subset}<img src="ap_per_class.png" alt="AP per class">
{_table(["class", "AP", "positives", "predicted", "tp", "P@0.5", "R@0.5", "F1@0.5", "best-F1 threshold",
         "best F1"], per_class)}
<p class=note>Best-F1 thresholds (also in thresholds.json, for demo.py --thresholds) are chosen on this set:
optimistic here; choose them on a held-out split for honest figures.</p>
<h2>Precision-recall curve of each class</h2><p class=note>Stepwise: the area under each curve is the class's AP.</p>
<img src="pr_curves.png" alt="PR curves">
<h2>CF1 and OF1 when one threshold is used for every class</h2><img src="threshold_sweep.png" alt="CF1 and OF1 against the threshold">
<h2>Where the {len(shown)} classes with the lowest AP go wrong</h2>{heat_note}{''.join(sections)}
</body></html>"""
