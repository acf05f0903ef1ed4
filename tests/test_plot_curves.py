"""tools/plot_curves.py: legends that say in words what differs between runs (never bookkeeping, never a
Python list), the model as typed, and one legend below the panels, inside the figure, over no panel."""
import json
import os
import shutil
import sys

import matplotlib.pyplot as plt
import pytest

import main as train_main
from conftest import ROOT
from helpers import tiny_demo, train_argv

sys.path.insert(0, os.path.join(ROOT, "tools"))
import plot_curves  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Real runs of main.py that differ in one thing each from ``a``; ``b`` is ``--config a --seed 1``."""
    root = tmp_path_factory.mktemp("curves")
    files = tiny_demo(root / "data", num_train=16, num_test=6)
    made = {"a": train_argv(files, root / "a"), "lam": train_argv(files, root / "lam", "--lam", "0.3"),
            "gap": train_argv(files, root / "gap", "--head", "gap"),
            "strong": train_argv(files, root / "strong", recipe="strong"),
            "b": ["--config", str(root / "a"), "--seed", "1", "--output_dir", str(root / "b")]}
    for name, argv in made.items():
        train_main.main(argv)
    return root


def as_model(root, run, folder, model):
    """A copy of ``run`` recorded as a run of ``model`` (what ``--model`` would have recorded) in ``folder``."""
    shutil.copytree(root / run, folder)
    record = json.loads((folder / "args.json").read_text())
    (folder / "args.json").write_text(json.dumps(dict(record, model=model)))
    return folder


def labels(*folders):
    folders = [str(f) for f in folders]
    return plot_curves.legend_labels(folders, [plot_curves.read_log(f) for f in folders])


def title(*folders):
    folders = [str(f) for f in folders]
    return plot_curves.shared_settings(folders, [plot_curves.read_log(f) for f in folders])


def test_a_config_run_differs_by_its_seed_not_by_its_bookkeeping(runs):
    record = json.loads((runs / "b" / "args.json").read_text())
    assert record["config"] and record["config_changes"] == ["output_dir", "seed"]  # what the old legend showed
    assert labels(runs / "a", runs / "b") == ["a (seed 0)", "b (seed 1)"]
    assert title(runs / "a", runs / "b") == ("all runs: model small_cnn, head csra, 1 head, lam 0.1, dataset demo, "
                                             "recipe paper, 32 px")


def test_what_follows_from_the_head_or_the_recipe_is_not_repeated(runs):
    # gap's lam 0 is the GAP head's own; strong's lr, optimizer, loss, EMA... are the strong recipe's
    assert labels(runs / "a", runs / "strong", runs / "gap") == [
        "a (head csra, recipe paper)", "strong (head csra, recipe strong)", "gap (head gap, recipe paper)"]
    assert labels(runs / "a", runs / "lam", runs / "gap") == [
        "a (head csra, lam 0.1)", "lam (head csra, lam 0.3)", "gap (head gap, lam 0)"]


def test_a_timm_model_is_named_as_typed(runs, tmp_path):
    timm_run = as_model(runs, "a", tmp_path / "checkpoint" / "timm" / "resnet18", "timm/resnet18")
    assert labels(timm_run, runs / "a") == ["resnet18 (model timm/resnet18)", "a (model small_cnn)"]
    assert labels(timm_run) == ["resnet18"]
    assert title(timm_run).startswith("model timm/resnet18, head csra, 1 head, lam 0.1, dataset demo")
    other = as_model(runs, "b", tmp_path / "elsewhere" / "resnet18", "timm/resnet18")
    assert labels(timm_run, other) == ["timm/resnet18 (seed 0)", "elsewhere/resnet18 (seed 1)"]  # same folder name


def test_the_legend_lies_below_the_panels_inside_the_figure(runs):
    folders = [str(runs / n) for n in ("a", "b", "lam", "gap", "strong")] * 2
    logs = [plot_curves.read_log(f) for f in folders]
    long = [f"run {i} " + ", ".join(f"setting{k} {i}" for k in range(12)) for i in range(len(folders))]
    for names in (plot_curves.legend_labels(folders[:5], logs[:5]), long):
        fig = plot_curves.draw(folders[:len(names)], logs[:len(names)], names)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        legend = fig.legends[0].get_window_extent(renderer)
        whole = fig.bbox
        assert whole.x0 <= legend.x0 and legend.x1 <= whole.x1 and whole.y0 <= legend.y0 and legend.y1 <= whole.y1
        for ax in fig.axes:
            panel = ax.get_tightbbox(renderer)  # with its tick labels and axis label
            assert legend.y1 <= panel.y0, "the legend overlaps a panel"
        words = " ".join(t.get_text() for t in fig.legends[0].get_texts())
        assert "[" not in words and "config" not in words and "output_dir" not in words
        plt.close(fig)


def test_runs_that_held_data_out_are_drawn_with_their_validation_map():
    test_run = [{"epoch": 1, "mAP": 50.0}, {"epoch": 2, "mAP": 60.0}]
    held_out = [{"epoch": 1, "val_mAP": 40.0, "test_mAP": 41.0}, {"epoch": 2, "val_mAP": 45.0, "test_mAP": 44.0}]
    assert plot_curves.chooser_key(test_run) == "mAP" and plot_curves.chooser_key(held_out) == "val_mAP"
    assert plot_curves.map_panel_title([test_run]) == "test mAP"
    assert plot_curves.map_panel_title([held_out]) == "validation mAP"
    assert plot_curves.map_panel_title([test_run, held_out]) == "mAP (validation where held out, else test)"


def test_a_run_is_described_by_the_options_its_choices_read(runs):
    # the paper recipe: SGD with a step schedule reads momentum, warm-up and the decay period, not the one-cycle
    # peak or the cosine floor (the rows' applies_to); the strong recipe (AdamW, one-cycle) the other way round
    paper = plot_curves.run_description(str(runs / "a"), plot_curves.read_log(str(runs / "a")))
    assert {"momentum", "warmup_epoch", "decay_every"} <= set(paper)
    assert not {"onecycle_peak", "lr_floor"} & set(paper)
    strong = plot_curves.run_description(str(runs / "strong"), plot_curves.read_log(str(runs / "strong")))
    assert "onecycle_peak" in strong and not {"momentum", "warmup_epoch", "decay_every", "lr_floor"} & set(strong)


def test_a_gap_run_is_not_said_to_have_a_number_of_heads(runs):
    # its record keeps the --num_heads it never read: the title over a CSRA and a GAP run does not say "1 head"
    assert title(runs / "a", runs / "gap") == "all runs: model small_cnn, dataset demo, recipe paper, 32 px"
    assert "1 head" in title(runs / "a", runs / "lam")
