"""The training run: what main.py builds (``build``) and the epoch loop that owns it (``Trainer``):
training, evaluation of the model and its EMA, the best checkpoint, the divergence stop, training-state
saves, and the sinks and watchers that follow each step (``utils.loggers``, the ETA clock, the thread
governor)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from engine import (NonFiniteLossError, SeededShardSampler, make_loader, non_finite_entries, predict,
                    thumbnails_by_row, train_one_epoch)
from pipeline.dataset import DATASETS, MultiLabelDataset
from pipeline.errors import CSRAError
from pipeline.losses import make_criterion
from pipeline.model import CSRANet
from pipeline.optim import make_optimizer, make_schedule, param_groups
from pipeline.recipes import RECIPES, TRAINING_OPTIONS, describe_options
from pipeline.runtime import Runtime, precision_name, resolve_runtime, runtime_warning
from utils import distributed as du
from utils.cli import dataset_files, dataset_kwargs, describe_model, finish_class_names, model_kwargs, plural
from utils.evaluation import evaluate, format_report
from utils.evaluation.html_report import report_targets, write_report
from utils.evaluation.report import global_sweep, threshold_advice
from utils.fileio import save_torch_atomic
from utils.loggers import EpochLog, Loggers, StepsCsv, TensorBoard
from utils.progress import RunClock, say
from utils.run_folder import BEST_FILE, LOG_FILE, STEPS_FILE, RunFolder
from utils.threads import ThreadGovernor
from utils.train_state import precision_change_note, restore_train_state, save_train_state

HEADER_WIDTH = 100


class DivergedError(CSRAError):
    """Training diverged: non-finite loss, weights or scores. Nothing diverged was saved."""


def ensure_demo_data(args) -> None:
    if args.dataset != "demo" or args.train_json or args.test_json:
        return
    spec = DATASETS[args.dataset]
    if not (os.path.isfile(spec.train_json) and os.path.isfile(spec.test_json)):
        if du.is_main():
            from utils.prepare.prepare_demo import generate_demo
            print(f"generating the demo dataset in {os.path.dirname(spec.train_json)} ...")
            generate_demo(os.path.dirname(spec.train_json), quiet=True, force=True)  # no JSON: interrupted before
        du.barrier()


@dataclass
class Parts:
    """What a run trains with, built once from its options."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: Callable
    ema: Optional[AveragedModel]
    runtime: Runtime
    eval_runtime: Runtime
    governor: ThreadGovernor
    train_set: MultiLabelDataset
    test_set: MultiLabelDataset
    test_json: str
    sampler: SeededShardSampler
    iters_per_epoch: int
    lr_fn: Callable[[int], float]


def load_data(args) -> Tuple[MultiLabelDataset, MultiLabelDataset, str]:
    ensure_demo_data(args)
    train_json, test_json = dataset_files(args, train=True)
    train_set = MultiLabelDataset(train_json, **dataset_kwargs(args, train=True), partial_labels=args.partial_labels)
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
    return train_set, test_set, test_json


def build(args, device: torch.device, state: Optional[dict]) -> Parts:
    """Data, runtime, model, optimiser, loss, EMA and schedule from the run's options."""
    train_set, test_set, test_json = load_data(args)
    runtime = resolve_runtime(device, args.model, args.amp, not args.no_channels_last, args.normalize)
    eval_runtime = resolve_runtime(device, args.model, args.eval_amp, runtime.channels_last, args.normalize)
    governor = ThreadGovernor(args.threads)
    if runtime_warning(runtime) and du.is_main():
        print(runtime_warning(runtime))
    if state is not None and du.is_main():
        note = precision_change_note(state["runtime"], runtime, args.amp)
        if note:
            print(note)
    model = runtime.prepare_model(CSRANet(**model_kwargs(args), pretrained=args.pretrained, cutmix=args.cutmix),
                                  train=True)
    head_lr_mult = args.head_lr_mult if model.head_kind.head_lr_mult else 1.0
    groups = param_groups(model, args.lr, head_lr_mult, args.w_d, args.no_decay_norm_bias)
    optimizer = make_optimizer(args.optimizer, groups, args.lr, args.momentum, args.w_d)
    criterion = make_criterion(args.loss, args.gamma_pos, args.gamma_neg, args.asl_clip, args.partial_labels)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True) if args.ema else None
    sampler = SeededShardSampler(len(train_set), args.seed, du.rank(), du.world_size())
    iters_per_epoch = math.ceil(len(range(0, len(train_set), du.world_size())) / args.batch_size)
    lr_fn = make_schedule(args.scheduler, iters_per_epoch=iters_per_epoch, total_epochs=args.total_epoch,
                          warmup_epochs=args.warmup_epoch, decay_every=args.decay_every,
                          onecycle_peak=args.onecycle_peak)
    return Parts(model, optimizer, runtime.grad_scaler(), criterion, ema, runtime, eval_runtime, governor, train_set,
                 test_set, test_json, sampler, iters_per_epoch, lr_fn)


# --- the start-up header -------------------------------------------------------------------------------
def describe_in_force(args) -> str:
    """The training options in force; those that differ from the recipe's are marked with '*'."""
    return describe_options({k: getattr(args, k) for k in TRAINING_OPTIONS}, RECIPES[args.recipe].values)


def weights_in_use(args) -> str:
    source = args.cutmix or args.pretrained
    return {"none": "from scratch", "imagenet": "from ImageNet weights"}.get(source, f"from {source}")


def run_header(args, p: Parts, folder: str) -> str:
    """The start-up block: one topic a line, none wider than HEADER_WIDTH (lists break between items)."""
    import textwrap
    options = describe_in_force(args)
    threads = p.governor.choice
    rows = [
        ("model", f"{describe_model(args)}, {weights_in_use(args)}"),
        ("data", f"{len(p.train_set)} training images ({args.dataset})" + (", partial labels" if args.partial_labels
                                                                            else "")),
        ("test data", p.test_json),
        ("recipe", f"{args.recipe}: {options}"),
        ("runtime", f"{plural(du.world_size(), 'process', 'processes')} on {p.runtime.describe()}; evaluation in "
                    f"{precision_name(p.eval_runtime.amp)}"),
        ("threads", threads.describe() + ("" if threads.fixed else "; fitted to the load while training")),
        ("run folder", folder),
    ]
    if "*" in options:
        rows.insert(4, ("", f"* = changed from --recipe {args.recipe} by a flag or by the dataset's defaults"))
    if args.config:
        typed = ", ".join(f"--{k}" for k in args.config_changes) or "none"
        rows.insert(0, ("config", f"the options of {args.config}; typed now: {typed}"))
    lines = []
    for label, text in rows:
        glued = ", ".join(item.replace(" ", "\u00a0") for item in text.split(", "))  # no break inside an item
        lines += [ln.replace("\u00a0", " ") for ln in textwrap.wrap(
            glued, HEADER_WIDTH, initial_indent=f"{label:<11s}", subsequent_indent=" " * 11,
            break_on_hyphens=False, break_long_words=False)]
    return "\n".join(lines)


# --- the loop ------------------------------------------------------------------------------------------
class Trainer:
    """The epoch loop of one run in ``run`` (its folder), resumed from ``state`` when given."""

    def __init__(self, args, p: Parts, run: RunFolder, state: Optional[dict], state_path: str):
        self.args, self.p, self.run, self.state_path = args, p, run, state_path
        self.start_epoch, self.start_iter = 0, 0
        self.best = {"mAP": -1.0, "epoch": None, "source": None}
        if state is not None:
            restore_train_state(state, state_path, model=p.model, optimizer=p.optimizer, scaler=p.scaler, ema=p.ema)
            self.start_epoch, self.start_iter, self.best = state["epoch"], state["iter"], state["best"]
            if du.is_main():
                print(f"resumed from {state_path}: epoch {self.start_epoch + 1}, iteration {self.start_iter}")
        self.logs = Loggers([])
        self.last_report = None

    def open_logs(self) -> None:
        """The sinks, on the rank that writes; a resumed run first drops what it is about to redo."""
        if not du.is_main():
            return
        sinks = [EpochLog(self.run.file(LOG_FILE), self.start_epoch),
                 StepsCsv(self.run.file(STEPS_FILE), self.start_epoch * self.p.iters_per_epoch + self.start_iter)]
        if self.args.tensorboard:
            sinks.append(TensorBoard(self.run.path))
        self.logs = Loggers(sinks)

    def training_model(self) -> nn.Module:
        model = self.p.model
        if du.is_dist():
            device = self.p.runtime.device
            model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
        return torch.compile(model) if self.args.compile else model  # checkpoints still come from p.model

    def ensure_finite(self, when: str) -> None:
        """Refuse to save a diverged state: every weight and buffer must be finite."""
        bad = non_finite_entries(self.p.model)
        if bad:
            raise DivergedError(f"weights became NaN or infinite ({len(bad)} tensors, e.g. {bad[0]}) {when}; "
                                f"stopped; {self.run.last_good()}")

    def save_state(self, epoch: int, it: int, checked: bool = False) -> None:
        if not checked:
            self.ensure_finite(f"at epoch {epoch + 1}, iteration {it}")
        self.logs.flush()  # every step up to the state is on disk before the state is
        if du.is_main():
            p, args = self.p, self.args
            save_train_state(self.state_path, model=p.model, optimizer=p.optimizer, scaler=p.scaler, ema=p.ema,
                             epoch=epoch, it=it, best=self.best, args=vars(args), run_id=args.run_id,
                             runtime=p.runtime.as_dict())

    def fit(self) -> dict:
        args, p = self.args, self.p
        train_model = self.training_model()
        loader = make_loader(p.train_set, args.batch_size, args.num_workers, p.sampler, p.runtime.device)
        self.open_logs()
        self.clock = RunClock(self.start_epoch, args.total_epoch, p.iters_per_epoch, self.start_iter)
        self.first_step = self.start_iter
        if du.is_main():
            print(run_header(args, p, self.run.path))
        try:
            for epoch in range(self.start_epoch, args.total_epoch):
                self.train_epoch(train_model, loader, epoch)
        finally:
            self.logs.close()
        if du.is_main() and self.last_report is not None:
            self.finish()
        du.cleanup()
        return {"folder": self.run.path, "best": self.best}

    def on_step(self, epoch: int, it: int, loss: Optional[float]) -> None:
        args, p = self.args, self.p
        global_step = epoch * p.iters_per_epoch + it
        self.logs.step(global_step, epoch + 1, it, loss, [g["lr"] for g in p.optimizer.param_groups[:2]])
        eta = self.clock.after_step(global_step - self.start_epoch * p.iters_per_epoch - self.first_step)
        change = p.governor.after_step(f"epoch {epoch + 1} step {it}")
        if du.is_main():
            for line in (eta, change):
                if line:
                    say(line)
        if args.state_every and it % args.state_every == 0 and it < p.iters_per_epoch:
            self.save_state(epoch, it)

    def train_epoch(self, train_model: nn.Module, loader, epoch: int) -> None:
        args, p = self.args, self.p
        p.sampler.set_epoch(epoch, self.start_iter * args.batch_size)
        try:
            stats = train_one_epoch(train_model, loader, p.optimizer, p.runtime, criterion=p.criterion, epoch=epoch,
                                    start_iter=self.start_iter, iters_per_epoch=p.iters_per_epoch, lr_fn=p.lr_fn,
                                    scaler=p.scaler, ema=p.ema, print_freq=args.print_freq,
                                    on_step=lambda it, loss: self.on_step(epoch, it, loss),
                                    total_epochs=args.total_epoch, seed=args.seed)
        except NonFiniteLossError as e:
            raise DivergedError(f"{e}; {self.run.last_good()}") from None
        self.ensure_finite(f"after epoch {epoch + 1}")
        self.start_iter = 0
        entry = {"epoch": epoch + 1,
                 **{k: stats[k] for k in ("train_loss", "images_per_s", "train_seconds", "skipped_images")},
                 "lr_backbone": stats["lr"][0], "lr_head": stats["lr"][1], "loss": args.loss, "amp": p.runtime.amp,
                 "channels_last": p.runtime.channels_last, "threads": p.governor.choice.threads}
        changes = p.governor.take_changes()
        if changes:
            entry["thread_changes"] = changes
        due = (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.total_epoch
        if due and p.test_set.has_labels:
            entry.update(self.evaluate(epoch))
        if du.is_main():
            save_torch_atomic(p.model.state_dict(), self.run.epoch_path(epoch + 1))
            entry.update(best_mAP=self.best["mAP"], best_epoch=self.best["epoch"], best_source=self.best["source"])
            self.logs.epoch(entry)
        self.save_state(epoch + 1, 0, checked=True)  # checked after the epoch; the weights have not changed since
        if du.is_main():
            print(self.clock.after_epoch(epoch + 1), flush=True)
        du.barrier()

    def candidates(self) -> List[Tuple[str, nn.Module]]:
        return [("model", self.p.model)] + ([("ema", self.p.ema.module)] if self.p.ema is not None else [])

    def evaluate(self, epoch: int) -> dict:
        """Evaluate the model (and its EMA); whenever one beats the best, those exact weights become
        best.pth. Returns the log fields."""
        args, p = self.args, self.p
        fields = {}
        for source, net in self.candidates():
            scores, targets, paths, indices = predict(net, p.test_set, p.eval_runtime, batch_size=args.batch_size,
                                                      num_workers=args.num_workers, desc=f"eval {source}",
                                                      return_indices=True)
            if not np.isfinite(scores).all():
                raise DivergedError(f"the model diverged: its {source} scores on the test set are NaN or infinite "
                                    f"after epoch {epoch + 1}; stopped; {self.run.last_good()}")
            report = evaluate(scores, targets, paths=paths)
            prefix = "" if source == "model" else f"{source}_"
            fields.update({prefix + "mAP": report.map, prefix + "CF1": report.overall["CF1"],
                           prefix + "OF1": report.overall["OF1"]})
            if du.is_main():
                print(f"epoch {epoch + 1} {source}: mAP {report.map:.2f}  CF1 {report.overall['CF1']:.2f}  "
                      f"OF1 {report.overall['OF1']:.2f}")
            if report.map > self.best["mAP"]:
                self.best = {"mAP": report.map, "epoch": epoch + 1, "source": source}
                if du.is_main():
                    save_torch_atomic(net.state_dict(), self.run.file(BEST_FILE))
            if source == "model":
                self.last_report = (report, scores, targets, paths, indices)
        return fields

    def finish(self) -> None:
        """After the last epoch: the full report, the threshold advice, the HTML report, the best."""
        args, p = self.args, self.p
        report, scores, targets, paths, indices = self.last_report
        best_path = self.run.file(BEST_FILE)
        print(format_report(report, args.class_names, per_class=True))
        sweep = global_sweep(scores, targets)
        if sweep is not None:
            print(threshold_advice(sweep, f"{args.report}/thresholds.json" if args.report else
                                   f"val.py --load_from {best_path} --report DIR writes them"))
        if args.report:
            out = write_report(args.report, scores, report_targets(targets), paths, args.class_names, report,
                               sweep=sweep,
                               info={"model": describe_model(args), "checkpoint": f"{self.run.path} (last epoch)",
                                     "data": p.test_json},
                               thumbnails=lambda req: thumbnails_by_row(p.model, p.test_set, p.eval_runtime, indices,
                                                                        req))
            print(f"wrote {out['index']}")
        print(f"best mAP {self.best['mAP']:.2f} at epoch {self.best['epoch']} ({self.best['source']} weights), "
              f"saved as {best_path}")
