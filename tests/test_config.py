"""The typed configuration (utils/config.py): sections made from the option table's groups, frozen, and
the run record written from it."""
import dataclasses
import json
from typing import Optional, Tuple

import pytest

from helpers import run_py, tiny_demo, train_argv
from utils.config import Config, DataConfig, ModelConfig, RunConfig, RuntimeConfig, TrainingConfig
from utils.options import OPTIONS
from utils.train_options import get_args

SECTIONS = {"model": ModelConfig, "data": DataConfig, "runtime": RuntimeConfig, "training": TrainingConfig,
            "the run": RunConfig}


def test_each_section_holds_exactly_the_options_of_its_help_group():
    for group, cls in SECTIONS.items():
        wanted = {o.dest for o in OPTIONS if o.group == group}
        assert {f.name for f in dataclasses.fields(cls)} == wanted, group
    types = {f.name: f.type for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    assert types["lr"] is float and types["total_epoch"] is int and types["randaugment"] is bool
    assert types["num_cls"] == Optional[int] and types["ema"] == Optional[float] and types["amp"] is str
    assert types["train_aug"] == Optional[Tuple[str, ...]] and types["no_decay_norm_bias"] is bool


def test_a_config_is_frozen_and_the_data_make_a_new_one():
    args = get_args(["--dataset", "demo", "--train_json", "t.json", "--test_json", "v.json", "--lr", "0.02"])
    cfg = Config.from_args(args)
    assert (cfg.training.lr, cfg.data.dataset, cfg.model.model, cfg.run.seed) == (0.02, "demo", "small_cnn", 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.lr = 0.1
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.class_names = ("a",)
    later = cfg.with_data(3, ["a", "b", "c"], partial_labels=True)
    assert (later.model.num_cls, later.class_names, later.training.partial_labels) == (3, ("a", "b", "c"), True)
    assert cfg.training.partial_labels is False and later.training.lr == 0.02  # the first one is unchanged


def test_the_record_has_every_training_option_and_nothing_of_the_other_scripts():
    args = get_args(["--dataset", "demo", "--train_json", "t.json", "--test_json", "v.json", "--train_aug", "resize"])
    record = Config.from_args(args).record()
    main_options = {o.dest for o in OPTIONS if "T" in o.scripts}
    assert set(record) == main_options | {"class_names", "record_path", "record_names", "config_changes"}
    assert record["train_aug"] == ["resize"] and record["lr"] == args.lr  # JSON-shaped: lists, not tuples
    assert json.loads(json.dumps(record)) == record


def test_a_runs_args_json_is_the_config_record_with_its_id_and_runtime(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=4)  # 2 steps: 1 step at warm-up LR 0 is refused
    r = run_py("main.py", *train_argv(files, tmp_path / "run", "--total_epoch", "1"))
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "args.json").read_text())
    assert not {"lams", "format", "img_dir", "load_from", "save_scores"} & set(record)
    assert len(record["run_id"]) == 32 and record["runtime"]["device"] == "cpu"
    names = open(files["classes"]).read().split()
    assert (record["num_cls"], record["class_names"], record["total_epoch"]) == (6, names, 1)
