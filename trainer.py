"""The training run: what main.py builds (``build``) and the epoch loop that owns it (``Trainer``):
training, evaluation of the model and its EMA, the best checkpoint, the divergence stop, training-state
saves, and the sinks and watchers that follow each step (``utils.loggers``, the ETA clock, the thread
governor)."""
from __future__ import annotations

import math
import os
import textwrap
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
from utils.cli import dataset_files, dataset_kwargs, describe_model, model_kwargs, plural, with_label_count
from utils.config import Config
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


def ensure_demo_data(cfg: Config) -> None:
    if cfg.data.dataset != "demo" or cfg.training.train_json or cfg.data.test_json:
        return
    spec = DATASETS[cfg.data.dataset]
    if not (os.path.isfile(spec.train_json) and os.path.isfile(spec.test_json)):
        if du.is_main():
            from utils.prepare.prepare_demo import generate_demo
            print(f"generating the demo dataset in {os.path.dirname(spec.train_json)} ...")
            generate_demo(os.path.dirname(spec.train_json), quiet=True, force=True)  # no JSON: interrupted before
        du.barrier()


@dataclass
class Parts:
    """What a run trains with, built once from its options (``config``: as the training data completed them)."""
    config: Config
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


def load_data(cfg: Config) -> Tuple[MultiLabelDataset, MultiLabelDataset, str, Config]:
    """The training and test sets, and the config as the training data complete it."""
    ensure_demo_data(cfg)
    train_json, test_json = dataset_files(cfg, train=True)
    partial = cfg.training.partial_labels
    train_set = MultiLabelDataset(train_json, **dataset_kwargs(cfg, train=True), partial_labels=partial)
    if train_set.table.unknown and not partial:  # OpenImages-style: unlisted classes are unknown
        partial = True
        if du.is_main():
            print(f"note: {train_json} leaves unlisted classes unknown: they stay out of the loss (--partial_labels)")
    cfg = with_label_count(cfg, cfg.model.num_cls or train_set.num_classes, partial)
    test_set = MultiLabelDataset(test_json, **dataset_kwargs(cfg, train=False), require_labels=False)
    if not test_set.has_labels and du.is_main():
        print(f"note: {test_json} has no labels (e.g. VOC2012 test): training without evaluation; "
              "use val.py --voc_submission on the saved epochs")
    return train_set, test_set, test_json, cfg


def build(cfg: Config, device: torch.device, state: Optional[dict]) -> Parts:
    """Data, runtime, model, optimiser, loss, EMA and schedule from the run's options."""
    train_set, test_set, test_json, cfg = load_data(cfg)
    m, rt, t = cfg.model, cfg.runtime, cfg.training
    runtime = resolve_runtime(device, m.model, rt.amp, not rt.no_channels_last, m.normalize)
    eval_runtime = resolve_runtime(device, m.model, rt.eval_amp, runtime.channels_last, m.normalize)
    governor = ThreadGovernor(rt.threads)
    if runtime_warning(runtime) and du.is_main():
        print(runtime_warning(runtime))
    if state is not None and du.is_main():
        note = precision_change_note(state["runtime"], runtime, rt.amp)
        if note:
            print(note)
    model = runtime.prepare_model(CSRANet(**model_kwargs(m), pretrained=t.pretrained, cutmix=t.cutmix), train=True)
    head_lr_mult = t.head_lr_mult if model.head_kind.head_lr_mult else 1.0
    groups = param_groups(model, t.lr, head_lr_mult, t.w_d, t.no_decay_norm_bias)
    optimizer = make_optimizer(t.optimizer, groups, t.lr, t.momentum, t.w_d)
    criterion = make_criterion(t.loss, t.gamma_pos, t.gamma_neg, t.asl_clip, t.partial_labels)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema), use_buffers=True) if t.ema else None
    sampler = SeededShardSampler(len(train_set), cfg.run.seed, du.rank(), du.world_size())
    iters_per_epoch = math.ceil(len(range(0, len(train_set), du.world_size())) / cfg.data.batch_size)
    lr_fn = make_schedule(t.scheduler, iters_per_epoch=iters_per_epoch, total_epochs=t.total_epoch,
                          warmup_epochs=t.warmup_epoch, decay_every=t.decay_every, onecycle_peak=t.onecycle_peak)
    return Parts(cfg, model, optimizer, runtime.grad_scaler(), criterion, ema, runtime, eval_runtime, governor,
                 train_set, test_set, test_json, sampler, iters_per_epoch, lr_fn)


# --- the start-up header -------------------------------------------------------------------------------
def describe_in_force(cfg: Config) -> str:
    """The training options in force; those that differ from the recipe's are marked with '*'."""
    flat = cfg.record()
    return describe_options({k: flat[k] for k in TRAINING_OPTIONS}, RECIPES[cfg.training.recipe].values)


def weights_in_use(training) -> str:
    source = training.cutmix or training.pretrained
    return {"none": "from scratch", "imagenet": "from ImageNet weights"}.get(source, f"from {source}")


def run_header(p: Parts, folder: str) -> str:
    """The start-up block: one topic a line, none wider than HEADER_WIDTH (lists break between items)."""
    cfg = p.config
    options = describe_in_force(cfg)
    threads = p.governor.choice
    rows = [
        ("model", f"{describe_model(cfg.model)}, {weights_in_use(cfg.training)}"),
        ("data", f"{len(p.train_set)} training images ({cfg.data.dataset})" +
                 (", partial labels" if cfg.training.partial_labels else "")),
        ("test data", p.test_json),
        ("recipe", f"{cfg.training.recipe}: {options}"),
        ("runtime", f"{plural(du.world_size(), 'process', 'processes')} on {p.runtime.describe()}; evaluation in "
                    f"{precision_name(p.eval_runtime.amp)}"),
        ("threads", threads.describe() + ("" if threads.fixed else "; fitted to the load while training")),
        ("run folder", folder),
    ]
    if "*" in options:
        rows.insert(4, ("", f"* = changed from --recipe {cfg.training.recipe} by a flag or by the dataset's defaults"))
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


# --- the loop ------------------------------------------------------------------------------------------
class Trainer:
    """The epoch loop of one run in ``run`` (its folder), resumed from ``state`` when given."""

    def __init__(self, p: Parts, run: RunFolder, state: Optional[dict], state_path: str):
        self.cfg, self.p, self.run, self.state_path = p.config, p, run, state_path
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
        if self.cfg.run.tensorboard:
            sinks.append(TensorBoard(self.run.path))
        self.logs = Loggers(sinks)

    def training_model(self) -> nn.Module:
        model = self.p.model
        if du.is_dist():
            device = self.p.runtime.device
            model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
        return torch.compile(model) if self.cfg.run.compile else model  # checkpoints still come from p.model

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
            p = self.p
            save_train_state(self.state_path, model=p.model, optimizer=p.optimizer, scaler=p.scaler, ema=p.ema,
                             epoch=epoch, it=it, best=self.best, args=self.cfg.record(), run_id=self.run.run_id,
                             runtime=p.runtime.as_dict())

    def fit(self) -> dict:
        cfg, p = self.cfg, self.p
        train_model = self.training_model()
        loader = make_loader(p.train_set, cfg.data.batch_size, cfg.data.num_workers, p.sampler, p.runtime.device)
        self.open_logs()
        self.clock = RunClock(self.start_epoch, cfg.training.total_epoch, p.iters_per_epoch, self.start_iter)
        self.first_step = self.start_iter
        if du.is_main():
            print(run_header(p, self.run.path))
        try:
            for epoch in range(self.start_epoch, cfg.training.total_epoch):
                self.train_epoch(train_model, loader, epoch)
        finally:
            self.logs.close()
        if du.is_main() and self.last_report is not None:
            self.finish()
        du.cleanup()
        return {"folder": self.run.path, "best": self.best}

    def on_step(self, epoch: int, it: int, loss: Optional[float]) -> None:
        p = self.p
        global_step = epoch * p.iters_per_epoch + it
        self.logs.step(global_step, epoch + 1, it, loss, [g["lr"] for g in p.optimizer.param_groups[:2]])
        eta = self.clock.after_step(global_step - self.start_epoch * p.iters_per_epoch - self.first_step)
        change = p.governor.after_step(f"epoch {epoch + 1} step {it}")
        if du.is_main():
            for line in (eta, change):
                if line:
                    say(line)
        every = self.cfg.run.state_every
        if every and it % every == 0 and it < p.iters_per_epoch:
            self.save_state(epoch, it)

    def train_epoch(self, train_model: nn.Module, loader, epoch: int) -> None:
        cfg, p = self.cfg, self.p
        total = cfg.training.total_epoch
        p.sampler.set_epoch(epoch, self.start_iter * cfg.data.batch_size)
        try:
            stats = train_one_epoch(train_model, loader, p.optimizer, p.runtime, criterion=p.criterion, epoch=epoch,
                                    start_iter=self.start_iter, iters_per_epoch=p.iters_per_epoch, lr_fn=p.lr_fn,
                                    scaler=p.scaler, ema=p.ema, print_freq=cfg.run.print_freq,
                                    on_step=lambda it, loss: self.on_step(epoch, it, loss),
                                    total_epochs=total, seed=cfg.run.seed)
        except NonFiniteLossError as e:
            raise DivergedError(f"{e}; {self.run.last_good()}") from None
        self.ensure_finite(f"after epoch {epoch + 1}")
        self.start_iter = 0
        entry = {"epoch": epoch + 1,
                 **{k: stats[k] for k in ("train_loss", "images_per_s", "train_seconds", "skipped_images")},
                 "lr_backbone": stats["lr"][0], "lr_head": stats["lr"][1], "loss": cfg.training.loss, "amp": p.runtime.amp,
                 "channels_last": p.runtime.channels_last, "threads": p.governor.choice.threads}
        changes = p.governor.take_changes()
        if changes:
            entry["thread_changes"] = changes
        due = (epoch + 1) % cfg.run.eval_every == 0 or epoch + 1 == total
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
        data, p = self.cfg.data, self.p
        fields = {}
        for source, net in self.candidates():
            scores, targets, paths, indices = predict(net, p.test_set, p.eval_runtime, batch_size=data.batch_size,
                                                      num_workers=data.num_workers, desc=f"eval {source}",
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
        cfg, p = self.cfg, self.p
        report_dir, names = cfg.run.report, list(cfg.class_names)
        report, scores, targets, paths, indices = self.last_report
        best_path = self.run.file(BEST_FILE)
        print(format_report(report, names, per_class=True))
        sweep = global_sweep(scores, targets)
        if sweep is not None:
            print(threshold_advice(sweep, f"{report_dir}/thresholds.json" if report_dir else
                                   f"val.py --load_from {best_path} --report DIR writes them"))
        if report_dir:
            out = write_report(report_dir, scores, report_targets(targets), paths, names, report,
                               sweep=sweep,
                               info={"model": describe_model(cfg.model), "checkpoint": f"{self.run.path} (last epoch)",
                                     "data": p.test_json},
                               thumbnails=lambda req: thumbnails_by_row(p.model, p.test_set, p.eval_runtime, indices,
                                                                        req))
            print(f"wrote {out['index']}")
        print(f"best mAP {self.best['mAP']:.2f} at epoch {self.best['epoch']} ({self.best['source']} weights), "
              f"saved as {best_path}")
