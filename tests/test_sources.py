"""Where main.py's options come from (utils/configuration/cli.py's docstring): each source, in order from the
bottom, overrides the one below it, and the whole resolution happens before training starts (--resume's
record included: opening the run changes no option). Expected values are the tables' literal numbers,
written here by hand."""
import dataclasses
import json
import os

import pytest

import main as train_main
from helpers import tiny_demo, train_argv
from pipeline.errors import CheckpointError, ConfigError
from utils.configuration.config import Config
from utils.configuration.options import APPLIES_TO, BY_NAME
from utils.configuration.train_options import get_args
from utils.process import distributed as du
from utils.runs.resume import open_for_resume
from utils.runs.run_folder import RunFolder

RECORDED_ARGV = ["--dataset", "demo", "--img_size", "96", "--lr", "0.3", "--lam", "0.4", "--print_freq", "5",
                 "--batch_size", "8", "--total_epoch", "3"]


def recorded_run(folder) -> str:
    """A run folder holding the record main.py writes for RECORDED_ARGV (its options are all a source needs)."""
    os.makedirs(folder)
    record = Config.from_args(get_args(RECORDED_ARGV + ["--output_dir", str(folder)])).record()
    RunFolder(str(folder)).write_record(dict(record, run_id="0" * 32, runtime={"device": "cpu"}))
    return str(folder)


def test_each_source_overrides_the_one_below(tmp_path):
    run = recorded_run(tmp_path / "run")
    # 1. the option table's literal values (voc07's row repeats them for these)
    voc = get_args(["--dataset", "voc07"])
    assert (voc.print_freq, voc.img_size, voc.lr, voc.optimizer, voc.model) == (100, 448, 0.01, "sgd", "resnet101")
    # 2. the dataset's row over the table: demo trains small_cnn at 64 px, batch 32
    demo = get_args(["--dataset", "demo"])
    assert (demo.model, demo.img_size, demo.batch_size) == ("small_cnn", 64, 32)
    # 3. the recipe over the table, and the dataset's changes to a recipe over the recipe
    strong = get_args(["--dataset", "voc07", "--recipe", "strong"])
    assert (strong.optimizer, strong.lr, strong.loss, strong.total_epoch) == ("adamw", 0.0001, "asl", 40)
    assert (demo.lr, demo.total_epoch, demo.warmup_epoch) == (0.05, 10, 1)  # paper's 0.01, 30, 2 on demo
    # 4. the backbone's row over the dataset's: a ViT dictates 224 px and batch 64 on voc07 (448, 16)
    vit = get_args(["--dataset", "voc07", "--model", "vit_B16_224"])
    assert (vit.img_size, vit.batch_size) == (224, 64)
    # 5. the head's default --lam where the table leaves it unset
    assert (demo.lam, get_args(["--dataset", "demo", "--head", "gap"]).lam) == (0.1, 0.0)
    # 6. the record given to --config over all of those (dataset row 64/32, demo's recipe 0.05, head 0.1)
    config = get_args(["--config", run])
    assert (config.img_size, config.batch_size, config.lr, config.lam, config.print_freq) == (96, 8, 0.3, 0.4, 5)
    # 7. a resumed run's record over the same sources, found before the flags are parsed
    resumed = get_args(["--resume", run])
    assert (resumed.img_size, resumed.batch_size, resumed.lr, resumed.lam, resumed.print_freq) == (96, 8, 0.3, 0.4, 5)
    assert resumed.dataset == "demo" and resumed.resume_plan.changes == ()
    # 8. typed flags over a record (--config's, or --resume's where the option may change)
    assert get_args(["--config", run, "--lr", "0.5"]).lr == 0.5
    typed = get_args(["--resume", run, "--print_freq", "7", "--total_epoch", "4"])
    assert (typed.print_freq, typed.total_epoch) == (7, 4)
    assert set(typed.resume_plan.changes) == {"--print_freq 5 -> 7", "--total_epoch 3 -> 4"}
    assert typed.resume_plan.options["print_freq"] == 7


def test_a_typed_option_that_defines_the_run_is_refused_against_its_record(tmp_path):
    run = recorded_run(tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"--lr is 0.5 but the run in .* was started with 0.3"):
        get_args(["--resume", run, "--lr", "0.5"])
    with pytest.raises(CheckpointError, match=r"--total_epoch 2 is below the run's 3"):
        get_args(["--resume", run, "--total_epoch", "2"])
    assert get_args(["--resume", run, "--lr", "0.3"]).resume_plan.changes == ()  # the same value is no change


def test_the_configuration_is_frozen_once_resolved(tmp_path):
    cfg = Config.from_args(get_args(["--resume", recorded_run(tmp_path / "run")]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.lr = 1.0
    assert cfg.training.lr == 0.3 and cfg.model.lam == 0.4


def test_a_recorded_lam_holds_with_its_head_only(tmp_path):
    # the lam row's holds_with: --config repeats lam 0.4 for the CSRA head it was recorded with; for another head
    # it means something else, so that head's default (GAP: 0) is in force unless --lam is typed
    run = recorded_run(tmp_path / "run")
    assert get_args(["--config", run]).lam == 0.4
    assert get_args(["--config", run, "--head", "gap"]).lam == 0.0
    assert get_args(["--config", run, "--head", "gap", "--lam", "0.2"]).lam == 0.2


@pytest.mark.parametrize("flag", sorted(APPLIES_TO))
def test_an_option_typed_with_a_choice_that_does_not_read_it_is_refused(flag):
    # every row with applies_to, from the table: typed beside another choice of its owner, one line names both
    owner, choices = APPLIES_TO[flag]
    other = next(c for c in BY_NAME[owner].settings("T")["choices"] if c not in choices)
    value = str(BY_NAME[flag].kwargs["default"])
    with pytest.raises(ConfigError, match=rf"--{flag} applies to --{owner} {' or '.join(choices)}"):
        get_args(["--dataset", "demo", f"--{owner}", other, f"--{flag}", value])
    get_args(["--dataset", "demo", f"--{owner}", choices[0], f"--{flag}", value])  # with its own choice: accepted


def test_a_recorded_loss_parameter_and_head_count_hold_with_their_loss_and_head(tmp_path):
    # a BCE run records gammas 0, 0 and clip 0 (BCE's own): --config RUN --loss asl takes ASL's 0, 4, 0.05, not
    # BCE's zeros (which would train BCE under ASL's name); a CSRA run's 4 heads do not follow it to another head
    run = recorded_run(tmp_path / "run")
    record = json.loads((tmp_path / "run" / "args.json").read_text())
    RunFolder(run).write_record(dict(record, num_heads=4))
    asl = get_args(["--config", run, "--loss", "asl"])
    assert (asl.gamma_pos, asl.gamma_neg, asl.asl_clip) == (0.0, 4.0, 0.05)
    assert get_args(["--config", run, "--loss", "asl", "--gamma_neg", "2"]).gamma_neg == 2.0
    assert get_args(["--config", run]).gamma_neg == 0.0
    assert (get_args(["--config", run]).num_heads, get_args(["--config", run, "--head", "gap"]).num_heads) == (4, 1)


def test_flags_the_parser_refuses_are_one_line_before_any_run_is_looked_for(tmp_path, capsys):
    run = recorded_run(tmp_path / "run")
    for argv in (["--resume", run, "--dataset", "nosuch"], ["--resume", "--output_dir", run, "--dataset", "nosuch"],
                 ["--output_dir"], ["--resume", run, "--output_dir"]):
        with pytest.raises(SystemExit) as e:
            get_args(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: argument --") and err.count("\n") == 1, (argv, err)


def test_a_slower_rank_resumes_after_rank_0_recorded_the_changes(tmp_path, monkeypatch):
    # under torchrun every rank opens the resumed run; rank 0 may already have written --total_epoch's change
    # into args.json when another rank gets there: that rank keeps the record its options came from
    files = tiny_demo(tmp_path / "data", num_train=8, num_test=4)
    out = tmp_path / "run"
    train_main.main(train_argv(files, out, "--total_epoch", "1", "--warmup_epoch", "0"))
    argv = train_argv(files, out, "--total_epoch", "2", "--warmup_epoch", "0", "--resume", str(out))
    plan = get_args(argv).resume_plan
    assert plan.changes == ("--total_epoch 1 -> 2",)
    RunFolder(str(out)).write_record(dict(plan.record, total_epoch=2, resume_changes=list(plan.changes)))
    monkeypatch.setattr(du, "broadcast_object", lambda obj: plan.folder)
    monkeypatch.setattr(du, "is_main", lambda: False)
    run, state = open_for_resume(plan)
    assert state["epoch"] == 1
    run.release()
    monkeypatch.setattr(du, "is_main", lambda: True)  # rank 0 itself finds a record that is not its options'
    with pytest.raises(CheckpointError, match="changed while this run was starting"):
        open_for_resume(plan)


def test_a_resumed_runs_record_is_checked_as_a_config_record_is(tmp_path):
    run = recorded_run(tmp_path / "run")
    record = json.loads((tmp_path / "run" / "args.json").read_text())
    RunFolder(run).write_record(dict(record, total_epoch=1.5))
    with pytest.raises(ConfigError, match=r'--resume .*args.json: "total_epoch": 1.5 in the record; --total_epoch '
                                          r'must be an integer'):
        get_args(["--resume", run])


def test_config_with_other_data_takes_their_class_names_not_the_recorded_runs(tmp_path):
    """--config RUN with other data typed: a class file beside them (their labels' order) names the new run's
    classes; the recorded run's names and its --classes file named the old data's."""
    files = tiny_demo(tmp_path / "data", num_train=8, num_test=4)
    old = get_args(train_argv(files, tmp_path / "a"))
    run = tmp_path / "run"
    os.makedirs(run)
    RunFolder(str(run)).write_record(dict(Config.from_args(old).record(), run_id="0" * 32, runtime={"device": "cpu"}))
    names = old.class_names
    other = tmp_path / "other"
    other.mkdir()
    for split in ("train", "test"):
        (other / f"{split}.json").write_text(open(files[split]).read())
    (other / "classes.txt").write_text("\n".join(reversed(names)))
    new = get_args(["--config", str(run), "--train_json", str(other / "train.json"), "--test_json",
                    str(other / "test.json")])
    assert new.class_names == list(reversed(names)) and new.classes is None
    assert get_args(["--config", str(run)]).class_names == names  # the same data: the record's names
    same = tmp_path / "same"  # other data without a class file: the record's names still
    same.mkdir()
    (same / "test.json").write_text(open(files["test"]).read())
    assert get_args(["--config", str(run), "--test_json", str(same / "test.json")]).class_names == names
