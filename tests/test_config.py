"""The typed configuration (utils/configuration/config.py): sections written out with the option table's groups,
frozen, and the run record written from it."""
import ast
import dataclasses
import json
from typing import Optional, Tuple

import pytest

from helpers import run_py, tiny_demo, train_argv
from utils.configuration import config
from utils.configuration.config import (Config, DataConfig, ModelConfig, RunConfig, RuntimeConfig, TrainingConfig,
                                         field_type)
from utils.configuration.options import OPTIONS
from utils.configuration.train_options import get_args

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



def test_each_section_is_written_out_with_the_table_types_in_the_table_order():
    """Declared, not made at import: an editor and a type checker see cfg.model.lam; the fields are the help
    group's options in the table's order (the record's order) with the types the table gives."""
    source = open(config.__file__, encoding="utf-8").read()
    classes = {n.name: n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)}
    assert "make_dataclass" not in source
    for group, cls in SECTIONS.items():
        rows = {}
        for o in OPTIONS:
            if o.group == group:
                rows.setdefault(o.dest, o)  # a negating flag shares its option's field
        declared = [n.target.id for n in classes[cls.__name__].body if isinstance(n, ast.AnnAssign)]
        assert declared == [f.name for f in dataclasses.fields(cls)] == list(rows), group
        assert {f.name: f.type for f in dataclasses.fields(cls)} == {d: field_type(o) for d, o in rows.items()}
        assert cls.__dataclass_params__.frozen, group
    assert ModelConfig.__annotations__["lam"] == Optional[float]

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


# records of earlier versions of main.py (demo data, 1 epoch), as they wrote them: the first (no version,
# before runtimes and recipes) and one of version 1 with recipes, a run id and a runtime; --config still reads them
FIRST_RECORD = {
    "model": "small_cnn", "head": "csra", "num_heads": 1, "lam": 0.1, "num_cls": 6, "img_size": 32, "dataset": "demo",
    "test_json": "TEST", "classes": None, "data_root": None, "skip_bad_images": False, "batch_size": 8,
    "num_workers": 0, "train_json": "TRAIN", "cutmix": None, "pretrained": "none", "lr": 0.05, "head_lr_mult": 10.0,
    "momentum": 0.9, "w_d": 0.0001, "warmup_epoch": 1, "total_epoch": 1, "decay_every": 4, "print_freq": 100,
    "train_aug": None, "test_aug": None, "seed": 0, "amp": "bf16", "no_channels_last": False, "ema": None,
    "eval_every": 1, "state_every": 500, "output_dir": "OUT", "resume": None, "class_names": None}
RECIPES_RECORD = {
    "model": "small_cnn", "head": "csra", "num_heads": 1, "lam": 0.1, "num_cls": 6, "img_size": 32, "normalize": "unit",
    "dataset": "demo", "test_json": "TEST", "classes": None, "data_root": None, "skip_bad_images": False,
    "batch_size": 8, "num_workers": 0, "fast_decode": False, "cache_images": True, "amp": "auto",
    "no_channels_last": False, "eval_amp": "off", "train_json": "TRAIN", "cutmix": None, "pretrained": "none",
    "recipe": "paper", "optimizer": "sgd", "scheduler": "step", "lr": 0.05, "head_lr_mult": 10.0, "loss": "bce",
    "gamma_pos": 0.0, "gamma_neg": 0.0, "asl_clip": 0.0, "partial_labels": False, "momentum": 0.9, "w_d": 0.0001,
    "no_decay_norm_bias": False, "warmup_epoch": 1, "onecycle_peak": 0.2, "total_epoch": 1, "decay_every": 4,
    "randaugment": False, "cutout": 0.0, "print_freq": 100, "train_aug": None, "test_aug": None, "seed": 0,
    "ema": None, "compile": False, "eval_every": 1, "state_every": 500, "output_dir": "OUT", "report": None,
    "resume": None, "tensorboard": False, "record_path": None, "record_names": None,
    "class_names": ["circle", "square", "triangle", "cross", "ring", "bar"],
    "run_id": "f06b9857dc7e4c2dbf1009333aab7158",
    "runtime": {"device": "cpu", "amp": "bf16", "channels_last": True, "normalize": "unit"}}


def test_a_record_given_to_config_is_checked_against_the_option_table(tmp_path):
    """Each recorded value is checked as the table types and checks the option (once tracebacks, or values
    used as they were), a key this code does not know and a newer record_version stop (once dropped, or
    re-recorded as the current version), and an error about a value the record gave says so. Records of
    earlier versions, and of this one, still load."""
    files = tiny_demo(tmp_path / "data", num_train=8, num_test=4)

    def record_at(name, record):
        folder = tmp_path / name
        folder.mkdir()
        text = json.dumps(record).replace('"TRAIN"', json.dumps(files["train"])).replace(
            '"TEST"', json.dumps(files["test"])).replace('"OUT"', json.dumps(str(tmp_path / "out")))
        (folder / "args.json").write_text(text)
        return folder / "args.json"

    now = dict(Config.from_args(get_args(train_argv(files, tmp_path / "out"))).record(), record_version=2,
               run_id="0" * 32, runtime={"device": "cpu"})
    for name, record in (("first", FIRST_RECORD), ("recipes", RECIPES_RECORD), ("now", now)):
        args = get_args(["--config", str(record_at(name, record))])
        assert (args.model, args.num_cls, args.total_epoch, args.lr) == ("small_cnn", 6, record["total_epoch"],
                                                                       record["lr"]), name
    bad = [("total_epoch", 1.5, "--total_epoch must be an integer"), ("model", 123, "--model must be a string"),
           ("batch_size", None, "--batch_size must be an integer"), ("lr", "fast", "--lr must be a number"),
           ("randaugment", "yes", "--randaugment must be true or false"),
           ("head", "mlp", "--head must be one of csra, gap"), ("train_aug", ["flip"], "--train_aug must be one of"),
           ("threads", 0, "--threads must be a positive integer"), ("ema", 1.5, "--ema must be in (0, 1)"),
           ("test_aug", "x", "--test_aug must be a list of strings or null"),
           ("num_cls", True, "--num_cls must be an integer or null")]
    for key, value, needle in bad:
        path = record_at(f"bad_{key}", dict(now, **{key: value}))
        r = run_py("main.py", "--config", path)
        line = r.stderr.strip()
        assert r.returncode == 1 and "\n" not in line and \
            line.startswith(f'error: --config {path}: "{key}": {json.dumps(value)} in the record; {needle}'), line
    path = record_at("names", dict(now, class_names="circle"))
    r = run_py("main.py", "--config", path)
    assert r.returncode == 1 and "\"class_names\" in the record must be a list of strings" in r.stderr
    path = record_at("unknown", dict(now, no_such_option=3, another=4))
    r = run_py("main.py", "--config", path)
    assert r.returncode == 1 and r.stderr.strip() == (f'error: --config {path}: "no_such_option" (and 1 more) is not '
                                                      "an option of this code: the record is from another version; "
                                                      "start the run with flags instead")
    for version, needle in ((3, "record_version 3 was written by a newer version of this code (this one reads up to 2)"),
                            ("2", 'record_version "2" is not a version of this code\'s run records')):
        path = record_at(f"version_{version}", dict(now, record_version=version))
        r = run_py("main.py", "--config", path)
        assert r.returncode == 1 and r.stderr.strip() == f"error: {path}: {needle}" + \
            ("; use that version, or update this one" if version == 3 else ""), r.stderr
        r = run_py("val.py", "--load_from", path.parent / "best.pth")  # the record beside a checkpoint too
        assert r.returncode == 1 and r.stderr.strip().startswith(f"error: {path}: record_version"), r.stderr
    path = record_at("backbone", dict(now, model="resnet_9000"))
    r = run_py("main.py", "--config", path)
    assert r.returncode == 1 and r.stderr.strip().startswith("error: unknown --model 'resnet_9000'") and \
        r.stderr.strip().endswith(f"(--model came from the record given to --config {path})"), r.stderr
    path = record_at("beside", dict(now, img_size="big"))
    r = run_py("val.py", "--load_from", path.parent / "best.pth")
    assert r.returncode == 1 and r.stderr.strip() == \
        f'error: {path}: "img_size": "big" in the record; --img_size must be an integer', r.stderr
