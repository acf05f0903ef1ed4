"""The option table: every command-line option of the entry scripts, declared once.

A row says the flag's argparse settings, the scripts that take it (``T`` main.py, ``V`` val.py, ``D`` demo.py,
``E`` export.py, ``S`` the training-free sweep), the help group, how a value is checked, whether it defines a
run (``--resume`` keeps the recorded value) or may change on resume, whether a checkpoint's run record fixes
it (``model``) or only suggests it (``data``), which option a negating flag turns off, which choices of another
option read it, how a switch reads in the header, whether ``--config`` repeats it, and which option its recorded
value holds with. The parsers
(``add_options``), the value checks, the resume rules and the record rules are made from it, and help that
quotes a recipe's or a dataset's value is written from those tables (``option_help``). Adding an option is one
row here plus the code that uses it (and a recipe's value where a recipe sets it).
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

from pipeline.data.dataset_table import DATASETS
from pipeline.models.heads import HEAD_KINDS
from pipeline.models.runtime import AMP_CHOICES, NORMALIZE_HELP
from pipeline.training.losses import LOSSES
from pipeline.training.optim import OPTIMIZERS, SCHEDULE_HELP, SCHEDULERS
from pipeline.training.recipes import RECIPE_OPTIONS, RECIPES
from utils.configuration.option_help import (AUTHORS_SCRIPTS, INFERENCE_AMP_HELP, PRETRAINED_HELP, dataset_note,
                                             loss_defaults, overrides_note, recipe_note, recipes_help)

SCRIPTS = "TVDES"  # main.py, val.py, demo.py, export.py, the sweep
Check = Tuple[Callable[[object], bool], str]


@dataclass(frozen=True)
class Later:
    """A setting read from a table when a parser is made, not when this module loads (a head or dataset
    registered since then is in the choices)."""
    make: Callable[[], object]


@dataclass(frozen=True)
class Option:
    name: str                               # the flag without "--"; also the attribute, unless kwargs has dest
    scripts: str                            # letters of SCRIPTS
    group: Optional[str]                    # the help section (None: the script's own options)
    kwargs: Dict[str, object]               # argparse's add_argument settings
    check: Optional[Check] = None           # (ok(value), "what it must be"): one line when not ok
    resume: str = ""                        # "defines" (kept from the record) or "may change" (applied, recorded)
    record: str = ""                        # "model": a run record fixes it; "data": a record suggests it
    negates: str = ""                       # the option a negating flag turns off (counts as it on --resume)
    pre: bool = False                       # read before parsing: it decides other options' defaults
    applies_to: Optional[Tuple[str, Tuple[str, ...]]] = None  # (option, choices): only those choices read it
    words: Optional[Tuple[str, str]] = None  # a switch as the header says it: (on, off)
    repeated: bool = True                   # --config repeats the recorded value (False: the run's own)
    holds_with: str = ""                    # --config: the recorded value holds only with the record's value of
    #                                         this option; with another, the row's default (None: filled from it)
    per_script: Dict[str, Dict[str, object]] = field(default_factory=dict)  # script -> settings that differ

    @property
    def dest(self) -> str:
        return str(self.kwargs.get("dest", self.name))

    def settings(self, script: str) -> Dict[str, object]:
        out = dict(self.kwargs)
        out.update(self.per_script.get(script, {}))
        out.pop("group", None)
        return {k: v.make() if isinstance(v, Later) else v for k, v in out.items()}

    def group_for(self, script: str) -> Optional[str]:
        return self.per_script.get(script, {}).get("group", self.group)


def positive(v) -> bool:
    return v > 0


POSITIVE_INT: Check = (positive, "a positive integer")
NON_NEGATIVE: Check = (lambda v: v >= 0, "0 or more")
POSITIVE_NUMBER: Check = (lambda v: math.isfinite(v) and v > 0, "a positive number")
NUMBER_AT_LEAST_0: Check = (lambda v: math.isfinite(v) and v >= 0, "a number >= 0")
FINITE_AT_LEAST_0: Check = (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")


def ema_decay(text: str) -> Optional[float]:
    """--ema DECAY, or none to turn a recipe's EMA off (0 is not 'off': a decay must be in (0, 1))."""
    if text.lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a decay such as 0.9997, or none (got {text!r})") from None


def kept_epochs(text: str) -> Optional[int]:
    """--keep_epochs N (a positive integer) or all (None: every epoch's checkpoint stays)."""
    if text.lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of epochs, or all (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more (the last epoch's checkpoint is always kept), or all "
                                         f"(got {value})")
    return value


def recipe_option(name: str, help_text: str, check: Optional[Check] = None, applies_to=None, words=None,
                  **kwargs) -> Option:
    """A training option every recipe sets: its literal default is the paper recipe's; its help lists each
    recipe's value (a choice's values show in --recipe's help and as the default in force)."""
    kwargs.setdefault("default", RECIPES["paper"].values[name])
    note = "" if "choices" in kwargs else recipe_note(name)
    return Option(name, "T", "training", dict(kwargs, help=help_text + note), resume="defines", check=check,
                  applies_to=applies_to, words=words)


OPTIONS: Tuple[Option, ...] = (
    # --- the model ---------------------------------------------------------------------------------
    Option("model", SCRIPTS, "model", dict(default="resnet101", help="backbone: a name of the backbone table "
           "(python tools/list_backbones.py), or timm/<name> for a timm model (--dataset demo: small_cnn)"),
           resume="defines", record="model", pre=True),
    Option("head", SCRIPTS, "model", dict(default="csra", choices=Later(lambda: list(HEAD_KINDS)),
           help="csra, or gap: the baseline global-average-pooling + linear head (the head table: "
                "pipeline/models/heads.py)"),
           resume="defines", record="model", per_script={"S": dict(default="gap")}),
    Option("num_heads", SCRIPTS, "model", dict(type=int, default=1, help="CSRA heads: 1, 2, 4, 6 or 8"),
           resume="defines", record="model", holds_with="head"),
    Option("lam", SCRIPTS, "model", dict(type=float, default=None, help=Later(lambda: "; ".join(
           f"{k.name}: {k.lam_help} (default {k.default_lam:g})" for k in HEAD_KINDS.values() if k.lam_help))),
           check=FINITE_AT_LEAST_0, resume="defines", record="model", holds_with="head"),
    Option("num_cls", SCRIPTS, "model", dict(type=int, default=None, help="number of classes (default: the --classes "
           "file's, else the dataset's, else the JSON's)"), check=POSITIVE_INT, resume="defines", record="model"),
    Option("img_size", SCRIPTS, "model", dict(type=int, default=448, help=f"input size ({dataset_note('img_size')}; "
           "ViTs 224)"), check=POSITIVE_INT, resume="defines", record="model"),
    Option("normalize", SCRIPTS, "model", dict(default=None, help=f"input normalisation of pixels in [0, 1]: "
           f"{NORMALIZE_HELP} (default: the checkpoint's record; else for the authors' backbones (ResNet-18..152, "
           "ViTs, small_cnn) their rule by dataset: half for WIDER, unit for the others; for every other backbone "
           "its weights' own: imagenet for torchvision's, the pretrained configuration's for timm's)"),
           resume="defines", record="model"),
    # --- the data ----------------------------------------------------------------------------------
    Option("dataset", SCRIPTS, "data", dict(default="voc07", choices=Later(lambda: sorted(DATASETS)), help="voc07, voc12, coco, "
           "wider, openimages, nuswide, demo (the built-in generated dataset), or custom (your own files: the "
           "default when --train_json/--test_json are given without --dataset)"), resume="defines", record="data",
           pre=True, per_script={s: dict(group="checkpoint", help="sets the class names, size and normalisation of "
                                         "a checkpoint without a run record") for s in "DE"}),
    Option("test_json", "TVS", "data", dict(default=None, help="evaluate this prepared file instead of the dataset's"),
           resume="defines", record="data", pre=True),
    Option("classes", SCRIPTS, "data", dict(default=None, help="class-names file (.txt one per line, or .json list)"),
           resume="defines", per_script={s: dict(group="checkpoint", help="class-names file for a custom dataset")
                                         for s in "DE"}),
    Option("data_root", "TVS", "data", dict(default=None, help="re-root every img_path: replace the folder part "
           "before the dataset's own layout"), resume="defines", record="data"),
    Option("skip_bad_images", "TVS", "data", dict(action="store_true", help="skip missing/corrupt images with a "
           "counted warning (default: stop with an error)")),
    Option("batch_size", "TVSD", "data", dict(type=int, default=16, help=f"batch per process "
           f"({dataset_note('batch_size')}; ViTs 64)"), check=POSITIVE_INT, resume="defines",
           per_script={"D": dict(group=None, help="images per forward pass (the dataset's)")}),
    Option("num_workers", "TVSD", "data", dict(type=int, default=min(8, os.cpu_count() or 1),
           help="data-loading worker processes" + overrides_note("num_workers")), check=NON_NEGATIVE,
           resume="may change", per_script={"D": dict(group=None, default=0, help="image-decoding worker processes")}),
    Option("fast_decode", "TVS", "data", dict(action="store_true", help="also at evaluation, decode JPEGs much larger "
           "than --img_size at a reduced scale (faster; pixels differ slightly from a full decode; training always "
           "does this)")),
    Option("cache_images", "TVS", "data", dict(action="store_true", help="decode each image once and keep it in memory "
           "(small datasets, with --num_workers 0; --dataset demo: on)")),
    # --- where and how it runs ---------------------------------------------------------------------
    Option("amp", "TVDS", "runtime", dict(default="off", choices=list(AMP_CHOICES), help=INFERENCE_AMP_HELP),
           resume="defines", per_script={"T": dict(default="auto", help="training precision: auto = bf16 autocast "
                                                   "where the GPU or CPU computes it natively (AVX512-BF16/AMX), fp16 "
                                                   "with loss scaling on older GPUs, else float32; off = float32")}),
    Option("no_channels_last", "TVDS", "runtime", dict(action="store_true", help="keep the NCHW memory format "
           "(channels-last is the default on every device)"), resume="defines"),
    Option("threads", "TVDS", "runtime", dict(type=int, default=None, metavar="N", help="CPU threads for the model "
           "(default: the CPUs this process may use, less those other processes keep busy; re-fitted while training; "
           "OMP_NUM_THREADS also fixes it; at most those CPUs)"), check=POSITIVE_INT, resume="may change"),
    Option("head_float32", "T", "runtime", dict(action="store_true", help="keep the CSRA head's score product in "
           "float32 while training under autocast (default: in the training precision, as the backbone; its norms, "
           "softmax and sums are float32 either way, and so is the whole head in evaluation, --eval_amp included)"),
           resume="defines"),
    Option("eval_amp", "T", "runtime", dict(default="off", choices=list(AMP_CHOICES), help="precision of the per-epoch "
           "evaluation: off = float32, as the published numbers (and val.py by default); bf16/fp16 opt into autocast "
           "there too"), resume="may change"),
    # --- the checkpoint ----------------------------------------------------------------------------
    Option("load_from", "VDES", "checkpoint", dict(default=None, help="checkpoint: authors', model-zoo, DataParallel or "
           "ours (ours: the model options come from the run record beside it)"), pre=True,
           per_script={**{s: dict(required=True, help="checkpoint (trained here: the model options come from the "
                                  "run record beside it)") for s in "DE"},
                       "S": dict(help="a checkpoint trained with --head gap (scored by mAP)")}),
    Option("no_record", "VDES", "checkpoint", dict(action="store_true", help="ignore the run record (args.json) beside "
           "--load_from: describe the model by flags only"), pre=True),
    # --- training ----------------------------------------------------------------------------------
    Option("train_json", "T", "training", dict(default=None, help="train on this prepared file instead of the "
           "dataset's"), resume="defines", pre=True),
    Option("val_json", "T", "training", dict(default=None, metavar="FILE", help="a validation set (a prepared "
           "file, dense or sparse): the per-epoch evaluation that chooses best.pth, EMA or plain weights and the "
           "thresholds runs on it, and the test set is scored once at the end, on the chosen weights (default: "
           "the authors' protocol, every choice made on the test set)"), resume="defines"),
    Option("val_split", "T", "training", dict(type=float, default=None, metavar="F", help="hold out this fraction "
           "of the training records as the validation set (as --val_json): stratified, every class with 2 or more "
           "positives keeps one on each side; drawn by --split_seed"), check=(lambda v: 0 < v < 1,
                                                                              "a fraction in (0, 1), e.g. 0.1"),
           resume="defines"),
    Option("split_seed", "T", "training", dict(type=int, default=0, help="seed of the --val_split draw (apart "
           "from --seed, so runs of several seeds share one split)"), check=(lambda v: 0 <= v < 2 ** 32,
                                                                           "an integer in [0, 2**32)"),
           resume="defines"),
    Option("init_from", "T", "training", dict(default=None, metavar="CHECKPOINT", help="start from a trained model "
           "(ours, the authors' or the model-zoo toolbox's), head included: its backbone as it is, and each class's "
           "head rows from the checkpoint's class of the same name or a synonym (--class_map), in every head "
           "paired by temperature; other classes start fresh"), resume="defines"),
    Option("init_classes", "T", "training", dict(default=None, metavar="FILE|DATASET", help="the class names of "
           "--init_from's checkpoint when no run record lies beside it: a names file, or a dataset (voc07, coco, "
           "wider, ...) whose classes it was trained on"), resume="defines"),
    Option("class_map", "T", "training", dict(default=None, metavar="FILE", help="synonyms for --init_from: a JSON "
           "object {\"name\": \"synonym\"} or lines 'name,synonym' (the VOC-COCO names are always known: aeroplane-"
           "airplane, motorbike-motorcycle, sofa-couch, tvmonitor-tv, ...)"), resume="defines"),
    Option("cutmix", "T", "training", dict(default=None, help="local ResNet-101 file (CutMix ImageNet) to start from"),
           resume="defines"),
    Option("pretrained", "TS", "training", dict(default="imagenet", metavar="imagenet|none|PATH",
           help=PRETRAINED_HELP + "; its classifier is dropped" + overrides_note("pretrained")), resume="defines",
           per_script={"S": dict(group="an ImageNet classifier as it is (instead of --load_from)",
                                 help=PRETRAINED_HELP + "; its classifier is kept and scored")}),
    Option("recipe", "T", "training", dict(default="paper", choices=list(RECIPES), help=Later(lambda: "a preset of "
           "the training options below; any of them typed wins. " + recipes_help(BY_NAME))), resume="defines",
           pre=True),
    recipe_option("optimizer", "sgd (with --momentum) or adamw (betas 0.9, 0.999)", choices=list(OPTIMIZERS)),
    recipe_option("scheduler", "; ".join(f"{k}: {v}" for k, v in SCHEDULE_HELP.items()), choices=list(SCHEDULERS)),
    recipe_option("lr", "backbone learning rate (the peak with onecycle and cosine); the CSRA head uses --head_lr_mult "
                  "times it", POSITIVE_NUMBER, type=float),
    recipe_option("head_lr_mult", "head LR multiplier for heads that take one (CSRA; the GAP baseline: always 1)",
                  POSITIVE_NUMBER, type=float),
    recipe_option("loss", "; ".join(f"{k.name}: {k.description}" for k in LOSSES.values()), choices=list(LOSSES)),
    Option("gamma_pos", "T", "training", dict(type=float, default=None, help="focusing exponent on positives (the "
           f"loss's default: {loss_defaults('gamma_pos')})"), check=FINITE_AT_LEAST_0, resume="defines",
           holds_with="loss"),
    Option("gamma_neg", "T", "training", dict(type=float, default=None, help="focusing exponent on negatives "
           f"({loss_defaults('gamma_neg')})"), check=FINITE_AT_LEAST_0, resume="defines", holds_with="loss"),
    Option("asl_clip", "T", "training", dict(type=float, default=None, help="ASL probability shift of negatives "
           f"({loss_defaults('asl_clip')})"), check=(lambda v: 0 <= v < 1, "in [0, 1)"), resume="defines",
           holds_with="loss"),
    Option("partial_labels", "T", "training", dict(action="store_true", help="a -1 in the training file means unknown: "
           "left out of the loss and its normalisation (without the flag a -1 there is an error; sparse files whose "
           "unlisted classes are unknown imply it)"), resume="defines"),
    recipe_option("momentum", "SGD momentum (--optimizer sgd)", (lambda v: 0 <= v < 1, "in [0, 1)"),
                  ("optimizer", ("sgd",)), type=float),
    recipe_option("w_d", "weight decay", NUMBER_AT_LEAST_0, type=float),
    recipe_option("no_decay_norm_bias", "no weight decay on biases and normalisation weights",
                  words=("no decay on biases/norms", "decay on every weight"), action="store_true"),
    Option("decay_norm_bias", "T", "training", dict(dest="no_decay_norm_bias", action="store_false",
           help="weight decay on every parameter (turns --no_decay_norm_bias off)"), negates="no_decay_norm_bias"),
    recipe_option("warmup_epoch", "linear warm-up epochs from LR 0, --scheduler step or cosine (not longer than the "
                  "run)", NUMBER_AT_LEAST_0, ("scheduler", ("step", "cosine")), type=float),
    recipe_option("onecycle_peak", "--scheduler onecycle: the fraction of the steps at which the LR peaks",
                  (lambda v: 0 < v < 1, "a fraction of the steps in (0, 1)"), ("scheduler", ("onecycle",)),
                  type=float),
    recipe_option("lr_floor", "--scheduler cosine: the LR at the last step, as a fraction of each group's LR (0: decay "
                  "to 0, as timm's and torchvision's references by default)", (lambda v: 0 <= v <= 1,
                  "a fraction of the LR in [0, 1]"), ("scheduler", ("cosine",)), type=float, metavar="FRACTION"),
    Option("total_epoch", "T", "training", dict(type=int, default=RECIPES["paper"].values["total_epoch"],
           help="epochs" + recipe_note("total_epoch")), check=POSITIVE_INT, resume="may change"),
    Option("decay_every", "T", "training", dict(type=int, default=4, help=f"x0.1 every N epochs, --scheduler step "
           f"({dataset_note('decay_every')}; N >= --total_epoch: no decay, said in the header)"), check=POSITIVE_INT,
           resume="defines", applies_to=("scheduler", ("step",))),
    recipe_option("randaugment", "torchvision's RandAugment (2 ops, magnitude 9) on the 8-bit training image",
                  words=("randaugment", "no randaugment"), action="store_true"),
    Option("no_randaugment", "T", "training", dict(dest="randaugment", action="store_false",
           help="turn --randaugment off"), negates="randaugment"),
    recipe_option("cutout", "Cutout of one square this fraction of the image side, random colour, on the 8-bit "
                  "training image; 0: none", (lambda v: 0 <= v <= 1, "a fraction of the image side in [0, 1]"),
                  type=float, metavar="FRACTION"),
    recipe_option("ema", "also keep an EMA of the weights, evaluated beside the model; none: no EMA",
                  (lambda v: 0 < v < 1, "in (0, 1), e.g. 0.9997"), type=ema_decay, metavar="DECAY"),
    # --- the run -----------------------------------------------------------------------------------
    Option("print_freq", "T", "the run", dict(type=int, default=100, help="show loss, LR and speed every N iterations, "
           "and at least 4 times an epoch (the bar on a terminal, a plain line in a log file)"), check=POSITIVE_INT,
           resume="may change"),
    Option("train_aug", "T", "the run", dict(nargs="+", choices=["randomflip", "resizedcrop", "resize"], default=None,
           help=AUTHORS_SCRIPTS + "; the recipe's augmentation is used")),
    Option("test_aug", "TV", "the run", dict(nargs="*", default=None, help=AUTHORS_SCRIPTS),
           per_script={"V": dict(group=None)}),
    Option("seed", "T", "the run", dict(type=int, default=0), check=(lambda v: 0 <= v < 2 ** 63,
                                                                     "an integer in [0, 2**63)"), resume="defines"),
    Option("compile", "T", "the run", dict(action="store_true", help="torch.compile the training model (pays on long "
           "runs only: compiling took 61 s for small_cnn and 153 s for ResNet-18 on a 2-core CPU; see "
           "benchmarks/bench_train.py --compile)")),
    Option("eval_every", "T", "the run", dict(type=int, default=1, help="evaluate every N epochs (and always the "
           "last)"), check=POSITIVE_INT, resume="may change"),
    Option("state_every", "T", "the run", dict(type=int, default=500, help="also save the training state every N "
           "iterations (0: only at epoch ends)"), check=NON_NEGATIVE, resume="may change"),
    Option("test_every_epoch", "T", "the run", dict(action="store_true", help="with a validation set: also score "
           "the test set at every evaluation, for the curves (test_* keys in log.jsonl; never used for a choice)"),
           resume="may change"),
    Option("keep_epochs", "T", "the run", dict(type=kept_epochs, default=None, metavar="N|all", help="keep the "
           "epoch_<i>.pth of the last N epochs only (best.pth, the last epoch's and train_state.pth are always kept; "
           "only files this run wrote are removed); default all, as the authors' code"), resume="may change"),
    Option("output_dir", "T", "the run", dict(default=None, help="run folder (default checkpoint/<model>)"), pre=True),
    Option("report", "TV", "the run", dict(default=None, metavar="DIR", help="after the last evaluation, write the "
           "HTML evaluation report into DIR (see val.py --report)"),
           per_script={"V": dict(group=None, help="write an HTML report (figures, per-class table, thresholds.json, "
                                 "worst mistakes with their heatmaps) into DIR")}),
    Option("resume", "T", "the run", dict(nargs="?", const="auto", default=None, metavar="PATH", help="continue an "
           "interrupted run: its folder or train_state.pth (default: --output_dir)"), pre=True, repeated=False),
    Option("config", "T", "the run", dict(default=None, metavar="RUN", help="start a new run with a recorded run's "
           "options (its folder or args.json); flags typed now win and the header lists them"), pre=True,
           repeated=False),
    Option("tensorboard", "T", "the run", dict(action="store_true", help="also write TensorBoard scalars (loss, LR, "
           "mAP, CF1, OF1, img/s) into the run folder's tensorboard/ (needs: pip install tensorboard)"),
           resume="may change"),
    Option("mlflow", "T", "the run", dict(nargs="?", const="local", default=None, metavar="URI", help="also log the "
           "run to MLflow (needs: pip install mlflow): its options as parameters, each epoch's figures as metrics; "
           "URI: a tracking server or database (default: the SQLite file mlflow.db in the working folder)"),
           resume="may change"),
    Option("mlflow_experiment", "T", "the run", dict(default="csra", metavar="NAME", help="the MLflow experiment"),
           resume="may change"),
    Option("mlflow_parent", "T", "the run", dict(default=None, metavar="RUN_ID", help="the MLflow run this run is a "
           "child of (tools/sweep.py --mlflow sets it)"), resume="may change"),
    # --- val.py --------------------------------------------------------------------------------------
    Option("save_scores", "V", None, dict(default=None, metavar="PATH", help="write per-image scores with their paths "
           "and the metrics as JSON; as .npy (memory-mappable, with the paths and labels beside it) when PATH ends "
           "in .npy or the matrix holds over 10M scores")),
    Option("voc_submission", "V", None, dict(default=None, metavar="DIR", help="write VOC evaluation-server files "
           "comp2_cls_test_<class>.txt into DIR")),
    Option("pr_convention", "V", None, dict(default="ours", choices=["ours", "authors"], help="ours: OP counts the "
           "true number of predictions; authors: a class with no prediction counts as one predicted in OP too, as "
           "the authors' evaluator does")),
    Option("report_classes", "V", None, dict(type=int, default=10, help="show the worst mistakes of this many "
           "classes, lowest AP first"), check=NON_NEGATIVE),
    Option("from_scores", "V", None, dict(default=None, metavar="SCORES", help="the metrics (and with --report the "
           "report) from a --save_scores file (.json, or .npy: memory-mapped) instead of running a model")),
    # --- demo.py and export.py -------------------------------------------------------------------------
    Option("img_dir", "DS", None, dict(required=True, nargs="+", help="image folders and/or image files"),
           per_script={"S": dict(group="an ImageNet classifier as it is (instead of --load_from)", required=False,
                                 nargs=None, default=None, metavar="FOLDER", help="single-label images, one sub-folder "
                                 "per class (the ImageNet validation layout); with --model and --pretrained; "
                                 "--img_size defaults to the weights' own evaluation size")}),
    Option("threshold", "D", None, dict(type=float, default=0.5, help="a class is a label when its score is at or "
           "above this"), check=(lambda v: 0 <= v <= 1, "in [0, 1]")),
    Option("thresholds", "D", None, dict(default=None, metavar="FILE", help="per-class thresholds (thresholds.json "
           "from val.py --report) instead of --threshold")),
    Option("topk", "D", None, dict(type=int, default=None, help="also list the K highest-scoring classes, whatever the "
           "threshold, in a column of their own (the labels stay those above the threshold)"), check=POSITIVE_INT),
    Option("output", "D", None, dict(default=None, help="write predictions to PATH.json or PATH.csv")),
    Option("heatmaps", "D", None, dict(default=None, metavar="OUT_DIR", help="write attention heatmaps here")),
    Option("heatmap_classes", "D", None, dict(default=None, help="comma-separated class names (default: predicted)")),
    Option("heatmap_head", "DE", None, dict(type=int, default=0, help="which CSRA head's map to draw (0: T = 1)"),
           check=NON_NEGATIVE, per_script={"E": dict(help="the head whose maps are output (0: T = 1)")}),
    Option("format", "E", None, dict(required=True, choices=["onnx", "torchscript"])),
    Option("out", "E", None, dict(required=True, help="the file to write (.onnx or .pt)")),
    Option("with_maps", "E", None, dict(action="store_true", help="also output one head's heatmaps (N, C, h, w)")),
    Option("force", "E", None, dict(action="store_true", help="replace --out if it exists")),
    # --- the sweep ---------------------------------------------------------------------------------------
    Option("class_index", "S", "an ImageNet classifier as it is (instead of --load_from)", dict(default=None,
           metavar="FILE", help="map folder names to outputs with an imagenet_class_index.json-style file "
           "({\"0\": [\"n01440764\", \"tench\"], ...}); default: sorted folder names are outputs 0..N-1")),
    Option("lams", "S", None, dict(default="0,0.02,0.05,0.1,0.2,0.5", help="comma-separated lam values (0, the plain "
           "model, and the paper's fixed lam are always in)")),
)
BY_NAME = {o.name: o for o in OPTIONS}
assert all(name in BY_NAME for name in RECIPE_OPTIONS), "every recipe option needs its row"

# what the rest of the code reads, made from the table
CHECKS: Dict[str, Check] = {o.dest: o.check for o in OPTIONS if o.check is not None}
RUN_DEFINING = tuple(o.name for o in OPTIONS if o.resume == "defines")
SAFE_TO_CHANGE = tuple(o.name for o in OPTIONS if o.resume == "may change")
MODEL_OPTIONS = tuple(o.name for o in OPTIONS if o.record == "model")
DATA_OPTIONS = tuple(o.name for o in OPTIONS if o.record == "data")
NEGATIONS = {o.name: o.negates for o in OPTIONS if o.negates}
PRE_PARSED = tuple(o.name for o in OPTIONS if o.pre)
APPLIES_TO = {o.name: o.applies_to for o in OPTIONS if o.applies_to}
NOT_REPEATED_OPTIONS = tuple(o.dest for o in OPTIONS if not o.repeated)
HOLDS_WITH = {o.dest: o.holds_with for o in OPTIONS if o.holds_with}


def add_options(p: argparse.ArgumentParser, script: str) -> None:
    """Every option ``script`` takes, in the table's order, under its help group."""
    groups: Dict[Optional[str], object] = {None: p}
    for o in OPTIONS:
        if script not in o.scripts:
            continue
        name = o.group_for(script)
        if name not in groups:
            groups[name] = p.add_argument_group(name)
        groups[name].add_argument(f"--{o.name}", **o.settings(script))


def complete(args: argparse.Namespace) -> argparse.Namespace:
    """Every option of the table on ``args``: those the script does not take at their defaults, so shared
    code reads ``args.x`` whatever the script."""
    for o in OPTIONS:
        if not hasattr(args, o.dest):
            default = o.kwargs.get("default", False if o.kwargs.get("action") == "store_true" else None)
            setattr(args, o.dest, default)
    return args
