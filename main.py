"""Train CSRA (or the GAP baseline) with the paper's recipe, then evaluate every epoch.

    python main.py --num_heads 1 --lam 0.1 --dataset voc07 --num_cls 20
    torchrun --nproc_per_node 4 main.py --num_heads 6 --lam 0.5 --dataset coco --num_cls 80
    python main.py --dataset demo                       # built-in demo data, CPU, a few minutes
"""
from __future__ import annotations

import utils.openmp_env  # noqa: F401  (first: it configures OpenMP before torch loads it)

import argparse
import json
import math
import os
import re
import shlex
import textwrap
import sys
import uuid

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from engine import (NonFiniteLossError, SeededShardSampler, make_loader, non_finite_entries, predict,
                    thumbnails_by_row, train_one_epoch)
from pipeline.dataset import DATASETS, MultiLabelDataset
from pipeline.errors import CheckpointError, ConfigError, CSRAError
from pipeline.losses import LOSSES, make_criterion, resolved_options
from pipeline.model import CSRANet
from pipeline.pretrained import check_source
from pipeline.optim import (OPTIMIZERS, SCHEDULE_HELP, SCHEDULERS, make_optimizer, make_schedule,
                            param_groups)
from pipeline.recipes import APPLIES_TO, PAPER, RECIPES, TRAINING_OPTIONS, describe_options, show_option
from pipeline.runtime import AMP_CHOICES, precision_name, resolve_runtime, runtime_warning
from utils import distributed as du
from utils.cli import (AUG_CHOICES, add_data_args, add_model_args, add_pretrained_arg, add_runtime_args,
                       dataset_files, dataset_kwargs, describe_model, finish_class_names, model_kwargs, new_parser, parse_args, plural, resolve,
                       run_main, typed_flags)
from utils.evaluation import evaluate, format_report
from utils.evaluation.report import threshold_advice
from utils.evaluation.html_report import report_targets, write_report
from utils.fileio import OutputError, atomic_write, make_folder, save_torch_atomic
from utils.progress import RunClock, StepLog, say
from utils.threads import ThreadGovernor
from utils.run_lock import RunLock, RunLockedError
from utils.train_state import (SAFE_TO_CHANGE, STATE_FILE, check_state_identity, find_unfinished_run, load_train_state,
                               precision_change_note, read_recorded_args, reconcile_args, remove_stale_temporaries,
                               restore_train_state, save_train_state)

LOG_FILE = "log.jsonl"
STEPS_FILE = "steps.csv"


def recipes_help() -> str:
    text = "; ".join(f"{r.name} ({r.description}): {describe_options(r.values)}" for r in RECIPES.values())
    for name, spec in DATASETS.items():
        if spec.recipe_overrides:
            text += f". --dataset {name} changes them: " + "; ".join(
                f"{recipe}: " + ", ".join(show_option(k, v) for k, v in changes.items())
                for recipe, changes in spec.recipe_overrides.items())
    return text


def describe_in_force(args) -> str:
    """The training options in force; those that differ from the recipe's are marked with '*'."""
    return describe_options({k: getattr(args, k) for k in TRAINING_OPTIONS}, RECIPES[args.recipe].values)


HEADER_WIDTH = 100


def weights_in_use(args) -> str:
    source = args.cutmix or args.pretrained
    return {"none": "from scratch", "imagenet": "from ImageNet weights"}.get(source, f"from {source}")


def run_header(args, train_set, test_json: str, runtime, eval_runtime, folder: str, threads) -> str:
    """The start-up block: one topic a line, none wider than HEADER_WIDTH (lists break between items)."""
    options = describe_in_force(args)
    rows = [
        ("model", f"{describe_model(args)}, {weights_in_use(args)}"),
        ("data", f"{len(train_set)} training images ({args.dataset})" + (", partial labels" if args.partial_labels
                                                                          else "")),
        ("test data", test_json),
        ("recipe", f"{args.recipe}: {options}"),
        ("runtime", f"{plural(du.world_size(), 'process', 'processes')} on {runtime.describe()}; evaluation in "
                    f"{precision_name(eval_runtime.amp)}"),
        ("threads", threads.describe() + ("" if threads.fixed else "; fitted to the load while training")),
        ("run folder", folder),
    ]
    if "*" in options:
        rows.insert(3, ("", f"* = changed from --recipe {args.recipe} by a flag or by the dataset's defaults"))
    lines = []
    for label, text in rows:
        glued = ", ".join(item.replace(" ", "\u00a0") for item in text.split(", "))  # no break inside an item
        lines += [ln.replace("\u00a0", " ") for ln in textwrap.wrap(
            glued, HEADER_WIDTH, initial_indent=f"{label:<11s}", subsequent_indent=" " * 11,
            break_on_hyphens=False, break_long_words=False)]
    return "\n".join(lines)


def ema_decay(text: str):
    """--ema DECAY, or none / 0 for no EMA (to turn a recipe's EMA off)."""
    if text.lower() in ("none", "off", "0"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a decay such as 0.9997, or none (got {text!r})") from None


# flags that turn an option off: typed, they count as the option they negate (for --resume's checks)
NEGATIONS = {"no_randaugment": "randaugment", "decay_norm_bias": "no_decay_norm_bias"}


def given_flags(argv) -> set:
    return {NEGATIONS.get(f, f) for f in typed_flags(argv)}


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("Train CSRA.")
    add_model_args(p)
    add_data_args(p)
    add_runtime_args(p, inference=False)
    p.add_argument("--eval_amp", default="off", choices=list(AMP_CHOICES),
                   help="precision of the per-epoch evaluation: off = float32, as the published numbers (and "
                        "val.py by default); bf16/fp16 opt into autocast there too")
    g = p.add_argument_group("training (the paper's recipe by default)")
    g.add_argument("--train_json", default=None, help="train on this prepared JSON instead of the dataset's")
    g.add_argument("--cutmix", default=None, help="local ResNet-101 file (CutMix ImageNet) to start from")
    add_pretrained_arg(g, "; its classifier is dropped (--dataset demo: none)")
    g.add_argument("--recipe", default="paper", choices=list(RECIPES),
                   help="a preset of the training options below; any of them typed wins. " + recipes_help())
    g.add_argument("--optimizer", default=PAPER["optimizer"], choices=list(OPTIMIZERS),
                   help="sgd (with --momentum) or adamw (betas 0.9, 0.999)")
    g.add_argument("--scheduler", default=PAPER["scheduler"], choices=list(SCHEDULERS),
                   help="; ".join(f"{k}: {v}" for k, v in SCHEDULE_HELP.items()))
    g.add_argument("--lr", type=float, default=PAPER["lr"], help="backbone learning rate (the peak with onecycle; "
                   "--dataset demo: 0.05, with --recipe strong 0.002); the CSRA head uses --head_lr_mult times it")
    g.add_argument("--head_lr_mult", type=float, default=PAPER["head_lr_mult"],
                   help="head LR multiplier for heads that take one (CSRA; the GAP baseline: always 1; --recipe "
                        "strong: 1)")
    g.add_argument("--loss", default=PAPER["loss"], choices=list(LOSSES),
                   help="; ".join(f"{k.name}: {k.description}" for k in LOSSES.values()))
    g.add_argument("--gamma_pos", type=float, default=None,
                   help="focusing exponent on positives (the loss's default: " +
                        ", ".join(f"{k.name} {k.defaults['gamma_pos']:g}" for k in LOSSES.values()) + ")")
    g.add_argument("--gamma_neg", type=float, default=None,
                   help="focusing exponent on negatives (" +
                        ", ".join(f"{k.name} {k.defaults['gamma_neg']:g}" for k in LOSSES.values()) + ")")
    g.add_argument("--asl_clip", type=float, default=None,
                   help="ASL probability shift of negatives (asl 0.05; the others 0)")
    g.add_argument("--partial_labels", action="store_true",
                   help="a -1 in the training JSON means unknown: left out of the loss and its normalisation "
                        "(without the flag a -1 there is an error)")
    g.add_argument("--momentum", type=float, default=PAPER["momentum"], help="SGD momentum (--optimizer sgd)")
    g.add_argument("--w_d", type=float, default=PAPER["w_d"], help="weight decay")
    g.add_argument("--no_decay_norm_bias", action="store_true", default=PAPER["no_decay_norm_bias"],
                   help="no weight decay on biases and normalisation weights (--recipe strong: on)")
    g.add_argument("--decay_norm_bias", dest="no_decay_norm_bias", action="store_false",
                   help="weight decay on every parameter (turns --no_decay_norm_bias off)")
    g.add_argument("--warmup_epoch", type=float, default=PAPER["warmup_epoch"],
                   help="linear warm-up epochs, --scheduler step (--dataset demo: 1)")
    g.add_argument("--onecycle_peak", type=float, default=PAPER["onecycle_peak"],
                   help="--scheduler onecycle: the fraction of the steps at which the LR peaks")
    g.add_argument("--total_epoch", type=int, default=PAPER["total_epoch"],
                   help="epochs (--recipe strong: 40; --dataset demo: 10)")
    g.add_argument("--decay_every", type=int, default=4, help="x0.1 every N epochs, --scheduler step (the "
                   "dataset's: 4 VOC/custom/demo, 5 COCO/WIDER)")
    g.add_argument("--randaugment", action="store_true", default=PAPER["randaugment"],
                   help="torchvision's RandAugment (2 ops, magnitude 9) on the 8-bit training image (--recipe "
                        "strong: on)")
    g.add_argument("--no_randaugment", dest="randaugment", action="store_false", help="turn --randaugment off")
    g.add_argument("--cutout", type=float, default=PAPER["cutout"], metavar="FRACTION",
                   help="Cutout of one square this fraction of the image side, random colour, on the 8-bit "
                        "training image; 0: none (--recipe strong: 0.5)")
    g.add_argument("--print_freq", type=int, default=100,
                   help="show loss, LR and speed every N iterations, and at least 4 times an epoch (the bar on a "
                        "terminal, a plain line in a log file)")
    g.add_argument("--train_aug", nargs="+", choices=AUG_CHOICES, default=None,
                   help="ignored: accepted so the authors' scripts run; the recipe's augmentation is used")
    g.add_argument("--test_aug", nargs="*", default=None, help="ignored: accepted so the authors' scripts run")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--ema", type=ema_decay, default=PAPER["ema"], metavar="DECAY",
                   help="also keep an EMA of the weights, evaluated beside the model; none: no EMA (--recipe "
                        "strong: 0.9997; with --dataset demo 0.99)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the training model (pays on long runs only: compiling took 61 s for "
                        "small_cnn and 153 s for ResNet-18 on a 2-core CPU; see benchmarks/bench_train.py --compile)")
    g.add_argument("--eval_every", type=int, default=1, help="evaluate every N epochs (and always the last)")
    g.add_argument("--state_every", type=int, default=500,
                   help="also save the training state every N iterations (0: only at epoch ends)")
    g.add_argument("--output_dir", default=None, help="run folder (default checkpoint/<model>)")
    g.add_argument("--report", default=None, metavar="DIR",
                   help="after the last evaluation, write the HTML evaluation report into DIR (see val.py --report)")
    g.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                   help="continue an interrupted run: its folder or train_state.pth (default: --output_dir)")
    g.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard scalars (loss, LR, mAP, CF1, OF1, img/s) into the run folder's "
                        "tensorboard/ (needs: pip install tensorboard)")
    return p


def get_args(argv=None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(build_parser(), argv, train=True)
    check_source(args.pretrained)
    if args.cutmix:
        check_source(args.cutmix, "--cutmix")
    typed = given_flags(argv)
    for flag, (option, choice) in APPLIES_TO.items():
        if flag in typed and getattr(args, option) != choice:
            raise ConfigError(f"--{flag} applies to --{option} {choice}, but this run uses --{option} "
                              f"{getattr(args, option)} (--recipe {args.recipe})")
    # the loss's own defaults for its options left unset: args.json records every value in force
    args.gamma_pos, args.gamma_neg, args.asl_clip = resolved_options(args.loss, args.gamma_pos, args.gamma_neg,
                                                                    args.asl_clip)
    return args


def ensure_demo_data(args) -> None:
    if args.dataset != "demo" or args.train_json or args.test_json:
        return
    spec = DATASETS[args.dataset]
    train_json, test_json = spec.train_json, spec.test_json
    if not (os.path.isfile(train_json) and os.path.isfile(test_json)):
        if du.is_main():
            from utils.prepare.prepare_demo import generate_demo
            print(f"generating the demo dataset in {os.path.dirname(train_json)} ...")
            generate_demo(os.path.dirname(train_json), quiet=True, force=True)  # no JSON: an interrupted generation
        du.barrier()


def run_base(args) -> str:
    """checkpoint/<model> or --output_dir, without a trailing slash (so no run is nested in another)."""
    return os.path.normpath(args.output_dir or os.path.join("checkpoint", args.model))


def new_run_folder(args) -> str:
    """A fresh folder for a new run: an existing run is never overwritten; a new one gets a suffix."""
    base = run_base(args)
    folder, n = base, 1
    while os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        if not os.path.isdir(folder) and n == 1 and args.output_dir:
            raise OutputError(f"--output_dir {folder}: is a file, not a folder")
        n += 1
        folder = f"{base}_{n}"
    if folder != base:
        print(f"note: {base} already holds a run; this run writes to {folder}")
    return folder


def resume_paths(args):
    """(run folder, training-state file) --resume continues: the named folder or state file, else
    the one unfinished run."""
    if args.resume == "auto":
        folder = find_unfinished_run(run_base(args))
    elif os.path.isdir(args.resume):
        folder = args.resume
    else:
        return os.path.dirname(args.resume) or ".", args.resume
    return folder, os.path.join(folder, STATE_FILE)


class DivergedError(CSRAError):
    """Training diverged: non-finite loss, weights or scores. Nothing diverged was saved."""


def last_good(folder: str) -> str:
    epochs = sorted(int(n[6:-4]) for n in os.listdir(folder) if re.fullmatch(r"epoch_\d+\.pth", n)) \
        if os.path.isdir(folder) else []
    return f"last good checkpoint kept: {os.path.join(folder, f'epoch_{epochs[-1]}.pth')}" if epochs else \
        "no checkpoint had been saved yet"


def ensure_finite(model, folder: str, when: str) -> None:
    """Refuse to save a diverged state: every weight and buffer must be finite."""
    bad = non_finite_entries(model)
    if bad:
        raise DivergedError(f"weights became NaN or infinite ({len(bad)} tensors, e.g. {bad[0]}) {when}; "
                            f"stopped; {last_good(folder)}")


def truncate_log(path: str, last_epoch: int) -> None:
    """Drop log lines for epochs after the resumed state (written before an interruption)."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip()]
    kept = []
    for ln in lines:
        try:
            if json.loads(ln)["epoch"] <= last_epoch:
                kept.append(ln)
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    with atomic_write(path) as f:
        f.writelines(kept)


def evaluate_and_keep_best(candidates, test_set, args, runtime, *, epoch: int, best: dict, folder: str):
    """Evaluate each (source, weights); whenever one beats ``best``, those exact weights become
    best.pth. Returns (log fields, updated best, the regular model's report)."""
    fields, model_report = {}, None
    for source, net in candidates:
        scores, targets, paths, indices = predict(net, test_set, runtime, batch_size=args.batch_size,
                                                  num_workers=args.num_workers, desc=f"eval {source}",
                                                  return_indices=True)
        if not np.isfinite(scores).all():
            raise DivergedError(f"the model diverged: its {source} scores on the test set are NaN or infinite "
                                f"after epoch {epoch + 1}; stopped; {last_good(folder)}")
        report = evaluate(scores, targets, paths=paths)
        prefix = "" if source == "model" else f"{source}_"
        fields.update({prefix + "mAP": report.map, prefix + "CF1": report.overall["CF1"],
                       prefix + "OF1": report.overall["OF1"]})
        if du.is_main():
            print(f"epoch {epoch + 1} {source}: mAP {report.map:.2f}  CF1 {report.overall['CF1']:.2f}  "
                  f"OF1 {report.overall['OF1']:.2f}")
        if report.map > best["mAP"]:
            best = {"mAP": report.map, "epoch": epoch + 1, "source": source}
            if du.is_main():
                save_torch_atomic(net.state_dict(), os.path.join(folder, "best.pth"))
        if source == "model":
            model_report = (report, scores, targets, paths, indices)
    return fields, best, model_report


def lock_run(folder: str, locks: list) -> None:
    """Rank 0 takes the run folder's lock (the other ranks share it); released when train() ends."""
    if du.is_main():
        lock = RunLock(folder)
        note = lock.acquire()
        locks.append(lock)
        if note:
            print(note)


def claim_new_run_folder(args, locks: list) -> str:
    """A fresh run folder, locked; a folder another new run took a moment earlier is skipped."""
    while True:
        folder = new_run_folder(args)
        make_folder(folder)
        try:
            lock_run(folder, locks)
            return folder
        except RunLockedError:
            continue


def prepare_resume(args, given, locks: list):
    """Find the run to continue, lock it, restore its recorded options (see utils.train_state) and read
    its state once, checking that the state belongs to this run. Returns (run folder, state file, state)."""
    folder, path = du.broadcast_object(resume_paths(args) if du.is_main() else None)
    lock_run(folder, locks)
    changes = reconcile_args(args, folder, given)
    resolve(args)
    if not os.path.isfile(path):
        raise CheckpointError(f"--resume: no training state at {path}")
    state = load_train_state(path)
    recorded = read_recorded_args(folder)
    check_state_identity(state, path, recorded, os.path.join(folder, "args.json"))
    if state.get("runtime") is None:  # a state from before states recorded their runtime
        state["runtime"] = recorded.get("runtime")
    if state["epoch"] >= args.total_epoch:
        raise CheckpointError(f"--resume: the run in {folder} is finished ({state['epoch']} of {args.total_epoch} "
                              "epochs); raise --total_epoch to train it further")
    if du.is_main():
        for name in remove_stale_temporaries(folder):
            print(f"removed {os.path.join(folder, name)}, left by an interrupted write")
        if changes:
            recorded.update({k: getattr(args, k) for k in SAFE_TO_CHANGE})
            recorded.setdefault("resume_changes", []).extend(changes)
            with atomic_write(os.path.join(folder, "args.json")) as f:
                json.dump(recorded, f, indent=1, default=str)
        print(f"resuming {folder}" + (f" with {', '.join(changes)}" if changes else ""))
    return folder, path, state


def train(args, given=frozenset()) -> dict:
    locks: list = []
    try:
        return _train(args, given, locks)
    finally:
        for lock in locks:
            lock.release()


def _train(args, given, locks: list) -> dict:
    device = du.init_distributed()
    folder, state_path, state = prepare_resume(args, given, locks) if args.resume else (None, None, None)
    torch.manual_seed(args.seed)
    ensure_demo_data(args)
    train_json, test_json = dataset_files(args)
    train_set = MultiLabelDataset(train_json, **dataset_kwargs(args, train=True),
                                  partial_labels=args.partial_labels)
    args.num_cls = args.num_cls or train_set.num_classes
    if train_set.table.unknown and not args.partial_labels:  # OpenImages-style: unlisted classes are unknown
        args.partial_labels = True
        if du.is_main():
            print(f"note: {train_json} leaves unlisted classes unknown: they stay out of the loss (--partial_labels)")
    finish_class_names(args, args.num_cls)
    test_set = MultiLabelDataset(test_json, **dataset_kwargs(args, train=False), require_labels=False)
    if not test_set.has_labels and du.is_main():
        print(f"note: {test_json} has no labels (e.g. VOC2012 test): training without evaluation; "
              "use val.py --voc_submission on the saved epochs")

    runtime = resolve_runtime(device, args.model, args.amp, not args.no_channels_last, args.normalize)
    eval_runtime = resolve_runtime(device, args.model, args.eval_amp, runtime.channels_last, args.normalize)
    governor = ThreadGovernor(args.threads)
    if runtime_warning(runtime) and du.is_main():
        print(runtime_warning(runtime))
    if state is not None and du.is_main():
        note = precision_change_note(state["runtime"], runtime, args.amp)
        if note:
            print(note)
    model = CSRANet(**model_kwargs(args), pretrained=args.pretrained, cutmix=args.cutmix)
    model = runtime.prepare_model(model, train=True)
    head_lr_mult = args.head_lr_mult if model.head_kind.head_lr_mult else 1.0
    optimizer = make_optimizer(args.optimizer, param_groups(model, args.lr, head_lr_mult, args.w_d,
                                                            args.no_decay_norm_bias),
                               args.lr, args.momentum, args.w_d)
    scaler = runtime.grad_scaler()
    criterion = make_criterion(args.loss, args.gamma_pos, args.gamma_neg, args.asl_clip, args.partial_labels)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True) if args.ema else None

    sampler = SeededShardSampler(len(train_set), args.seed, du.rank(), du.world_size())
    iters_per_epoch = math.ceil(len(range(0, len(train_set), du.world_size())) / args.batch_size)
    lr_fn = make_schedule(args.scheduler, iters_per_epoch=iters_per_epoch, total_epochs=args.total_epoch,
                          warmup_epochs=args.warmup_epoch, decay_every=args.decay_every,
                          onecycle_peak=args.onecycle_peak)

    if folder is None:
        args.run_id = uuid.uuid4().hex  # the identity a training state must carry to resume this run
        folder = du.broadcast_object(claim_new_run_folder(args, locks) if du.is_main() else None)
        state_path = os.path.join(folder, STATE_FILE)
    CURRENT_RUN["folder"] = folder
    start_epoch, start_iter, best = 0, 0, {"mAP": -1.0, "epoch": None, "source": None}
    if state is not None:
        restore_train_state(state, state_path, model=model, optimizer=optimizer, scaler=scaler, ema=ema)
        start_epoch, start_iter, best = state["epoch"], state["iter"], state["best"]
        if du.is_main():
            truncate_log(os.path.join(folder, LOG_FILE), start_epoch)
            print(f"resumed from {state_path}: epoch {start_epoch + 1}, iteration {start_iter}")
    elif du.is_main():
        make_folder(folder)
        with atomic_write(os.path.join(folder, "args.json")) as f:
            json.dump(dict(vars(args), runtime=runtime.as_dict()), f, indent=1, default=str)

    train_model = model
    if du.is_dist():
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        train_model = torch.compile(train_model)  # checkpoints still come from `model`: same keys
    loader = make_loader(train_set, args.batch_size, args.num_workers, sampler, device)

    steps = tb = None
    if du.is_main():
        steps_path = os.path.join(folder, STEPS_FILE)
        StepLog.truncate(steps_path, start_epoch * iters_per_epoch + start_iter)  # steps after the state go
        steps = StepLog(steps_path)
        tb = open_tensorboard(folder) if args.tensorboard else None
    clock = RunClock(start_epoch, args.total_epoch, iters_per_epoch, start_iter)
    start_step = start_iter

    def save_state(epoch: int, it: int, checked: bool = False) -> None:
        if not checked:
            ensure_finite(model, folder, f"at epoch {epoch + 1}, iteration {it}")
        if steps is not None:
            steps.flush()  # every step up to the state is on disk before the state is
        if du.is_main():
            save_train_state(state_path, model=model, optimizer=optimizer, scaler=scaler, ema=ema, epoch=epoch,
                             it=it, best=best, args=vars(args), run_id=args.run_id, runtime=runtime.as_dict())

    if du.is_main():
        print(run_header(args, train_set, test_json, runtime, eval_runtime, folder, governor.choice))
    last_report = None
    for epoch in range(start_epoch, args.total_epoch):
        sampler.set_epoch(epoch, start_iter * args.batch_size)

        def on_step(it: int, loss, epoch=epoch) -> None:
            global_step = epoch * iters_per_epoch + it
            if steps is not None:
                steps.write(global_step, epoch + 1, it, loss, [g["lr"] for g in optimizer.param_groups[:2]])
            if tb is not None and loss is not None:
                tb.add_scalar("train/loss", loss, global_step)
                tb.add_scalar("train/lr_backbone", optimizer.param_groups[0]["lr"], global_step)
            eta = clock.after_step(global_step - start_epoch * iters_per_epoch - start_step)
            if eta and du.is_main():
                say(eta)
            change = governor.after_step(f"epoch {epoch + 1} step {it}")
            if change and du.is_main():
                say(change)
            if args.state_every and it % args.state_every == 0 and it < iters_per_epoch:
                save_state(epoch, it)

        try:
            stats = train_one_epoch(train_model, loader, optimizer, runtime, criterion=criterion, epoch=epoch,
                                    start_iter=start_iter, iters_per_epoch=iters_per_epoch, lr_fn=lr_fn,
                                    scaler=scaler, ema=ema, on_step=on_step, print_freq=args.print_freq,
                                    total_epochs=args.total_epoch, seed=args.seed)
        except NonFiniteLossError as e:
            raise DivergedError(f"{e}; {last_good(folder)}") from None
        ensure_finite(model, folder, f"after epoch {epoch + 1}")
        start_iter = 0
        entry = {"epoch": epoch + 1,
                 **{k: stats[k] for k in ("train_loss", "images_per_s", "train_seconds", "skipped_images")},
                 "lr_backbone": stats["lr"][0], "lr_head": stats["lr"][1], "loss": args.loss, "amp": runtime.amp,
                 "channels_last": runtime.channels_last, "threads": governor.choice.threads}
        changes = governor.take_changes()
        if changes:
            entry["thread_changes"] = changes
        due = (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.total_epoch
        if due and test_set.has_labels:
            candidates = [("model", model)] + ([("ema", ema.module)] if ema is not None else [])
            fields, best, last_report = evaluate_and_keep_best(candidates, test_set, args, eval_runtime, epoch=epoch,
                                                               best=best, folder=folder)
            entry.update(fields)
        if du.is_main():
            save_torch_atomic(model.state_dict(), os.path.join(folder, f"epoch_{epoch + 1}.pth"))
            entry["best_mAP"], entry["best_epoch"], entry["best_source"] = best["mAP"], best["epoch"], best["source"]
            with open(os.path.join(folder, LOG_FILE), "a") as f:
                f.write(json.dumps(entry) + "\n")
        save_state(epoch + 1, 0, checked=True)  # checked after the epoch; the weights have not changed since
        if du.is_main():
            if tb is not None:
                for key in ("train_loss", "images_per_s", "mAP", "CF1", "OF1", "ema_mAP"):
                    if entry.get(key) is not None:
                        tb.add_scalar(f"epoch/{key}", entry[key], epoch + 1)
                tb.flush()
            print(clock.after_epoch(epoch + 1), flush=True)
        du.barrier()
    if steps is not None:
        steps.close()
    if tb is not None:
        tb.close()
    if du.is_main() and last_report is not None:
        print(format_report(last_report[0], args.class_names, per_class=True))
        if not hasattr(last_report[2], "table"):  # (not at OpenImages size)
            print(threshold_advice(last_report[1], last_report[2], f"{args.report}/thresholds.json" if args.report
                                   else f"val.py --load_from {os.path.join(folder, 'best.pth')} --report DIR writes "
                                   "them"))
        if args.report:
            report, scores, targets, paths, indices = last_report
            out = write_report(args.report, scores, report_targets(targets), paths, args.class_names, report,
                               info={"model": describe_model(args),
                                     "checkpoint": f"{folder} (last epoch)", "data": test_json},
                               thumbnails=lambda req: thumbnails_by_row(model, test_set, eval_runtime, indices, req))
            print(f"wrote {out['index']}")
        print(f"best mAP {best['mAP']:.2f} at epoch {best['epoch']} ({best['source']} weights), "
              f"saved as {os.path.join(folder, 'best.pth')}")
    du.cleanup()
    return {"folder": folder, "best": best}


CURRENT_RUN: dict = {"folder": None}  # for the Ctrl-C line: the folder the run writes to, once chosen


def resume_command(argv) -> str:
    """The command that continues this run: the same flags, any --resume replaced by the run folder."""
    kept, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == "--resume":
            skip = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            continue
        if not a.startswith("--resume="):
            kept.append(a)
    return shlex.join(["python", "main.py", *kept, "--resume", CURRENT_RUN["folder"]])


def interrupted_hint(argv) -> str:
    if CURRENT_RUN["folder"] is None:
        return "the run had not started; run the same command again"
    return f"continue with: {resume_command(argv)}"


def open_tensorboard(folder: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(os.path.join(folder, "tensorboard"))


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    CURRENT_RUN["folder"] = None
    run_main(lambda: train(get_args(argv), given_flags(argv)), interrupted_hint=lambda: interrupted_hint(argv))


if __name__ == "__main__":
    main()
