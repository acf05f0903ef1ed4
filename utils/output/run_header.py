"""What a training run prints about itself: the start-up header (one topic a line, none wider than HEADER_WIDTH),
the note on the CSRA pooling, and its last lines (what was chosen, on which set, and what the test set says)."""
from __future__ import annotations

import textwrap
from typing import List, Tuple

from pipeline.models.csra import FUSED_FROM
from pipeline.models.runtime import Runtime, precision_name
from pipeline.training.recipes import RECIPES, TRAINING_OPTIONS
from utils.configuration.cli import describe_model, plural
from utils.configuration.config import Config
from utils.configuration.option_help import describe_options
from utils.configuration.options import BY_NAME
from utils.process import distributed as du
from utils.runs.run_data import RunData

HEADER_WIDTH = 100
FUSED_NOTE = (f"note: the CSRA maps are large (over {FUSED_FROM / 1e6:.1f}M entries a batch): their pooling recomputes "
              "them in the "
              "backward pass,\n      which keeps one copy of the products instead of several float32 ones (and is "
              "faster there)")


def describe_in_force(cfg: Config) -> str:
    """The training options in force; those that differ from the recipe's are marked with '*'."""
    flat = cfg.record()
    return describe_options({k: flat[k] for k in TRAINING_OPTIONS}, BY_NAME, RECIPES[cfg.training.recipe].values)


def weights_in_use(training) -> str:
    if training.init_from:
        return f"from the trained model {training.init_from}"
    source = training.cutmix or training.pretrained
    return {"none": "from scratch", "imagenet": "from ImageNet weights"}.get(source, f"from {source}")


def head_precision(model, runtime: Runtime) -> str:
    """What the head's score product trains in (a CSRA head's norms, softmax and sums are float32 always)."""
    follows = getattr(model.head, "scores_follow_autocast", None)
    if follows is None:
        return "head in float32"
    return f"CSRA head product in {runtime.amp if follows and runtime.amp != 'off' else 'float32'}"


def selection_rows(data: RunData) -> List[Tuple[str, str]]:
    """The header's rows on the test set and, when there is one, the validation set: which of them chooses
    the epoch, the weights (EMA or not) and the thresholds."""
    if data.val_set is None:
        return [("test data", data.test_json)]  # (the data row says that it chooses)
    return [("validation", f"{data.val_source}: chooses the epoch, EMA or not and the thresholds"),
            ("test data", f"{data.test_json}, scored once at the end on the chosen weights")]


def run_header(p, folder: str) -> str:
    """The start-up block of a run built as ``p`` (trainer.Parts): one topic a line, none wider than
    HEADER_WIDTH (lists break between items)."""
    cfg = p.config
    options = describe_in_force(cfg)
    threads = p.governor.choice
    rows = [
        ("model", f"{describe_model(cfg.model)}, {weights_in_use(cfg.training)}"),
        ("data", f"{len(p.data.train_set)} training images ({cfg.data.dataset})" +
                 (", partial labels" if cfg.training.partial_labels else "") +
                 (", epoch chosen on the test set (authors' protocol)" if p.data.val_set is None else "")),
        *selection_rows(p.data),
        ("recipe", f"{cfg.training.recipe}: {options}"),
        ("runtime", f"{plural(du.world_size(), 'process', 'processes')} on {p.runtime.describe()}; "
                    f"{head_precision(p.model, p.runtime)}; evaluation in {precision_name(p.eval_runtime.amp)}"),
        ("threads", threads.describe() + ("" if threads.fixed else "; fitted to the load while training")),
        ("run folder", folder),
    ]
    if p.init is not None:
        rows.insert(1, ("init", p.init.describe()))
    if "*" in options:
        note = f"* = changed from --recipe {cfg.training.recipe} by a flag or by the dataset's defaults"
        rows.insert([r[0] for r in rows].index("recipe") + 1, ("", note))
    if cfg.run.config:
        typed = ", ".join(f"--{k}" for k in cfg.config_changes) or "none"
        rows.insert(0, ("config", f"the options of {cfg.run.config}; typed now: {typed}"))
    lines = []
    for label, text in rows:
        glued = ", ".join(item.replace(" ", "\u00a0") for item in text.split(", "))  # no break inside an item
        lines += [ln.replace("\u00a0", " ") for ln in textwrap.wrap(
            glued, HEADER_WIDTH, initial_indent=f"{label:<11s}", subsequent_indent=" " * 11,
            break_on_hyphens=False, break_long_words=False)]
    return "\n".join(lines)


def choice_lines(best: dict, final: dict, data: RunData, best_path: str) -> List[str]:
    """The run's last lines: what was chosen, on which set, and what the test set says of it."""
    if best["epoch"] is None:
        return []
    if data.val_set is None:
        return [f"best mAP {best['mAP']:.2f} at epoch {best['epoch']} ({best['source']} weights), saved as {best_path}",
                f"chosen on the test set (the authors' protocol), which flatters it: the last epoch scored "
                f"{final['last_test_mAP']:.2f}",
                "(--val_split F or --val_json FILE choose on held-out data instead)"]
    lines = [f"chosen on the validation set: epoch {best['epoch']} ({best['source']} weights, val mAP "
             f"{best['mAP']:.2f}), saved as {best_path}"]
    if "test_mAP" in final:
        lines.append(f"test set, scored once on those weights: mAP {final['test_mAP']:.2f}, CF1 "
                     f"{final['test_CF1']:.2f}, OF1 {final['test_OF1']:.2f}")
    else:
        lines.append(f"{data.test_json} has no labels: the test set was not scored")
    return lines
