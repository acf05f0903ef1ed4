"""The training run: what main.py builds (``build``) and the epoch loop that owns it (``Trainer``):
training, evaluation of the model and its EMA, the best checkpoint, the divergence stop, training-state
saves, and the sinks and watchers that follow each step (``utils.runs.loggers``, the ETA clock, the thread
governor). Its datasets come from ``utils.runs.run_data``, what it prints about itself from
``utils.output.run_header``."""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from engine import NonFiniteLossError, SeededShardSampler, TrainingLoop, make_loader, predict, thumbnails_by_row
from pipeline.data.dataset import MultiLabelDataset
from pipeline.data.labels import DENSE_LIMIT, fits_dense
from pipeline.errors import CSRAError
from pipeline.models.model import MultiLabelNet
from pipeline.models.runtime import Runtime, resolve_runtime, runtime_warning
from pipeline.training.losses import loss_parameters, make_criterion
from pipeline.training.optim import make_optimizer, make_schedule, param_groups
from pipeline.weights.checkpoint import non_finite_keys, safe_load, to_authors_layout
from pipeline.weights.finetune import InitSummary, init_from, read_class_map, shipped_pairs
from utils.configuration.class_names import init_class_names
from utils.configuration.cli import describe_model, model_kwargs
from utils.configuration.config import Config
from utils.evaluation import evaluate, format_report
from utils.evaluation.html_report import ScoredImages, report_targets, write_report
from utils.evaluation.metrics import Report
from utils.evaluation.report import global_sweep, threshold_advice, write_thresholds
from utils.output.fileio import save_torch_atomic
from utils.output.progress import RankZero, RunClock
from utils.output.run_header import FUSED_NOTE, choice_lines, run_header
from utils.process import distributed as du
from utils.process.threads import ThreadGovernor
from utils.runs.loggers import EpochLog, Loggers, StepsCsv, TensorBoard
from utils.runs.run_data import RunData, load_data
from utils.runs.run_folder import BEST_FILE, LOG_FILE, STEPS_FILE, THRESHOLDS_FILE, RunFolder
from utils.runs.train_state import TrainedObjects, precision_change_note, restore_train_state, save_train_state


class DivergedError(CSRAError):
    """Training diverged: non-finite loss, weights or scores. Nothing diverged was saved."""


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
    data: RunData
    sampler: SeededShardSampler
    iters_per_epoch: int
    lr_fn: Callable[[int], float]
    out: RankZero                             # what the run prints and writes goes through it (rank 0 only)
    init: Optional[InitSummary] = None        # --init_from: what came from the trained model

    def trained_objects(self) -> TrainedObjects:
        return TrainedObjects(self.model, self.optimizer, self.scaler, self.ema)


def build(cfg: Config, device: torch.device, state: Optional[dict]) -> Parts:
    """Data, runtime, model, optimiser, loss, EMA and schedule from the run's options."""
    out = RankZero(du.is_main())
    data, cfg = load_data(cfg, out)
    m, rt, t = cfg.model, cfg.runtime, cfg.training
    runtime = resolve_runtime(device, m.model, rt.amp, not rt.no_channels_last, m.normalize)
    eval_runtime = resolve_runtime(device, m.model, rt.eval_amp, runtime.channels_last, m.normalize)
    governor = ThreadGovernor(rt.threads)
    out.say(runtime_warning(runtime), state and precision_change_note(state["runtime"], runtime, rt.amp))
    starts_blank = t.init_from or state is not None  # (weights that come from a trained model or a saved state:
    net = MultiLabelNet(**model_kwargs(m), pretrained="none" if starts_blank else t.pretrained,  # a resumed run
                        cutmix=None if starts_blank else t.cutmix)                              # needs no file)
    init = start_from_trained(net, cfg) if t.init_from and state is None else None  # (a resumed state has it all)
    net.head_product_follows_autocast(not rt.head_float32)
    model = runtime.prepare_model(net, train=True)
    head_lr_mult = t.head_lr_mult if model.head_kind.head_lr_mult else 1.0
    groups = param_groups(model, t.lr, head_lr_mult, t.w_d, t.no_decay_norm_bias)
    optimizer = make_optimizer(t.optimizer, groups, t.lr, t.momentum, t.w_d)
    loss_options = {k: getattr(t, k) for k in loss_parameters()}
    criterion = make_criterion(t.loss, partial_labels=t.partial_labels, **loss_options)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema), use_buffers=True) if t.ema else None
    sampler = SeededShardSampler(len(data.train_set), cfg.run.seed, du.rank(), du.world_size())
    iters_per_epoch = math.ceil(len(range(0, len(data.train_set), du.world_size())) / cfg.data.batch_size)
    lr_fn = make_schedule(t.scheduler, iters_per_epoch=iters_per_epoch, total_epochs=t.total_epoch,
                          warmup_epochs=t.warmup_epoch, decay_every=t.decay_every, onecycle_peak=t.onecycle_peak,
                          lr_floor=t.lr_floor)
    return Parts(cfg, model, optimizer, runtime.grad_scaler(), criterion, ema, runtime, eval_runtime, governor,
                 data, sampler, iters_per_epoch, lr_fn, out, init)


def start_from_trained(model: MultiLabelNet, cfg: Config) -> InitSummary:
    """--init_from: the trained model's backbone, and its head's rows moved to this run's classes."""
    t = cfg.training
    old_names = init_class_names(t.init_from, t.init_classes)
    pairs = shipped_pairs() + (read_class_map(t.class_map) if t.class_map else [])
    sd = to_authors_layout(safe_load(t.init_from), t.init_from, model.model_name)
    return init_from(model, sd, t.init_from, old_names, list(cfg.class_names), pairs)


# --- the loop ------------------------------------------------------------------------------------------
@dataclass
class Scored:
    """One model's scores on one dataset and their report (the finish prints and draws from it)."""
    net: nn.Module
    dataset: MultiLabelDataset
    report: Report
    scores: np.ndarray
    targets: object
    paths: List[str]
    indices: np.ndarray


def metric_fields(source: str, key: str, report: Report) -> dict:
    """log.jsonl fields of one evaluation: 'mAP' (test, the authors' protocol), 'val_mAP', 'test_mAP' with
    a validation set; the EMA's with 'ema_' in front."""
    prefix = ("" if source == "model" else f"{source}_") + key
    return {prefix + "mAP": report.map, prefix + "CF1": report.overall["CF1"], prefix + "OF1": report.overall["OF1"]}


class Trainer:
    """The epoch loop of one run in ``run`` (its folder), resumed from ``state`` when given."""

    def __init__(self, p: Parts, run: RunFolder, state: Optional[dict], state_path: str):
        self.cfg, self.p, self.run, self.state_path, self.out = p.config, p, run, state_path, p.out
        self.start_epoch, self.start_iter = 0, 0
        self.best = {"mAP": -1.0, "epoch": None, "source": None}
        self.resumed = state is not None
        self.epoch_files: List[int] = []  # the epochs whose checkpoint this run wrote and keeps (--keep_epochs)
        self.unsaved_best: Optional[dict] = None  # new best weights, written with the next training state
        if state is not None:
            restore_train_state(state, state_path, p.trained_objects())
            self.start_epoch, self.start_iter, self.best = state["epoch"], state["iter"], state["best"]
            self.epoch_files = list(state.get("epoch_files") or [])  # (a state from before lists none: none go)
            self.out.say(f"resumed from {state_path}: epoch {self.start_epoch + 1}, iteration {self.start_iter}")
        self.logs = Loggers([])
        self.best_weights: Optional[dict] = None  # with a validation set: the best weights, on the CPU
        self.best_val: Optional[Tuple[np.ndarray, object]] = None  # ... their validation scores and targets
        self.last_scored: Optional[Scored] = None  # the model's last evaluation
        self.shown: Optional[Scored] = None        # what the finish prints: the chosen weights on the test set
        self.val_sweep = None                      # the chosen weights' global-threshold sweep on validation
        self.final: Optional[dict] = None          # the run's result (conclude)

    def open_logs(self) -> None:
        """The sinks, on the rank that writes; a resumed run first drops what it is about to redo."""
        if not self.out.on:
            return
        sinks = [EpochLog(self.run.file(LOG_FILE), self.start_epoch if self.resumed else None),
                 StepsCsv(self.run.file(STEPS_FILE), self.start_epoch * self.p.iters_per_epoch + self.start_iter)]
        if self.cfg.run.tensorboard:
            sinks.append(TensorBoard(self.run.path))
        r = self.cfg.run
        if r.mlflow:
            from utils.experiments.tracking import MLflowSink
            sinks.append(MLflowSink(r.mlflow, r.mlflow_experiment, self.run.path, self.run.read_record(),
                                    r.mlflow_parent))
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
        bad = non_finite_keys(self.p.model.state_dict())  # (BatchNorm statistics included)
        if bad:
            raise DivergedError(f"weights became NaN or infinite ({len(bad)} tensors, e.g. {bad[0]}) {when}; "
                                f"stopped; {self.run.last_good()}")

    def save_state(self, epoch: int, it: int, checked: bool = False) -> None:
        if not checked:
            self.ensure_finite(f"at epoch {epoch + 1}, iteration {it}")
        self.logs.flush()  # every step up to the state is on disk before the state is
        progress = {"epoch": epoch, "iter": it, "best": self.best, "epoch_files": self.epoch_files}
        best, self.unsaved_best = self.unsaved_best, None
        if best is not None:  # the new best's weights, then the state that names them, then they are best.pth
            self.out.do(save_torch_atomic, best, self.run.pending_best(self.best["epoch"]))
        self.out.do(save_train_state, self.state_path, self.p.trained_objects(), progress=progress,
                    args=self.cfg.record(), run_id=self.run.run_id, runtime=self.p.runtime.as_dict())
        if best is not None:
            self.out.do(self.run.settle_best, self.best["epoch"])

    def fit(self) -> dict:
        cfg, p = self.cfg, self.p
        train_model = self.training_model()
        self.loop = TrainingLoop(train_model, p.optimizer, p.runtime, p.criterion, lr_fn=p.lr_fn,
                                 iters_per_epoch=p.iters_per_epoch, total_epochs=cfg.training.total_epoch,
                                 scaler=p.scaler, ema=p.ema, seed=cfg.run.seed, print_freq=cfg.run.print_freq)
        loader = make_loader(p.data.train_set, cfg.data.batch_size, cfg.data.num_workers, p.sampler, p.runtime.device)
        self.open_logs()
        self.clock = RunClock(self.start_epoch, cfg.training.total_epoch, p.iters_per_epoch, self.start_iter,
                              device=p.runtime.device.type)
        self.first_step = self.start_iter
        self.out.say(run_header(p, self.run.path))
        try:
            for epoch in range(self.start_epoch, cfg.training.total_epoch):
                self.train_epoch(loader, epoch)
        finally:
            self.logs.close()
        if self.final is not None:
            self.out.do(self.finish)
        du.cleanup()
        return {"folder": self.run.path, "best": self.best}

    def on_step(self, epoch: int, it: int, loss: Optional[float]) -> None:
        p = self.p
        global_step = epoch * p.iters_per_epoch + it
        self.logs.step(global_step, epoch + 1, it, loss, [g["lr"] for g in p.optimizer.param_groups[:2]])
        steps_here = global_step - self.start_epoch * p.iters_per_epoch - self.first_step
        eta = self.clock.after_step(steps_here)
        change = p.governor.after_step(f"epoch {epoch + 1} step {it}")
        fused = steps_here == 1 and getattr(p.model.head, "pooling_fused", False)
        self.out.say(eta, change, FUSED_NOTE if fused else None)
        every = self.cfg.run.state_every
        if every and it % every == 0 and it < p.iters_per_epoch:
            self.save_state(epoch, it)

    def train_epoch(self, loader, epoch: int) -> None:
        cfg, p = self.cfg, self.p
        total = cfg.training.total_epoch
        p.sampler.set_epoch(epoch, self.start_iter * cfg.data.batch_size)
        try:
            stats = self.loop.run_epoch(loader, epoch, self.start_iter,
                                        on_step=lambda it, loss: self.on_step(epoch, it, loss))
        except NonFiniteLossError as e:
            raise DivergedError(f"{e}; {self.run.last_good()}") from None
        self.ensure_finite(f"after epoch {epoch + 1}")
        self.start_iter = 0
        entry = {"epoch": epoch + 1, "train_loss": stats.train_loss, "images_per_s": stats.images_per_s,
                 "train_seconds": stats.train_seconds, "skipped_images": stats.skipped_images,
                 "lr_backbone": stats.lr[0], "lr_head": stats.lr[1], "loss": cfg.training.loss, "amp": p.runtime.amp,
                 "channels_last": p.runtime.channels_last, "threads": p.governor.choice.threads}
        changes = p.governor.take_changes()
        if changes:
            entry["thread_changes"] = changes
        due = (epoch + 1) % cfg.run.eval_every == 0 or epoch + 1 == total
        if due and p.data.chooser.has_labels:
            entry.update(self.evaluate(epoch))
        if self.out.on:
            save_torch_atomic(p.model.state_dict(), self.run.epoch_path(epoch + 1))
            self.epoch_files = self.run.keep_recent_epochs(self.epoch_files, epoch + 1, self.cfg.run.keep_epochs)
        entry.update(best_mAP=self.best["mAP"], best_epoch=self.best["epoch"], best_source=self.best["source"])
        if epoch + 1 == total:  # before the state that marks the run finished: a kill now redoes this epoch
            self.final = entry["final"] = self.conclude()
        self.logs.epoch(entry)  # (no sinks but on rank 0)
        self.save_state(epoch + 1, 0, checked=True)  # checked after the epoch; the weights have not changed since
        self.out.say(self.clock.after_epoch(epoch + 1))
        du.barrier()

    def candidates(self) -> List[Tuple[str, nn.Module]]:
        return [("model", self.p.model)] + ([("ema", self.p.ema.module)] if self.p.ema is not None else [])

    def score(self, net: nn.Module, dataset: MultiLabelDataset, what: str, source: str, epoch: int) -> Scored:
        """``net``'s scores and report on ``dataset`` (``what``: validation or test); non-finite scores stop
        the run."""
        d = self.cfg.data
        got = predict(net, dataset, self.p.eval_runtime, batch_size=d.batch_size, num_workers=d.num_workers,
                      desc=f"{what} {source}")
        scores, targets, paths = got.scores, got.targets, got.paths
        if not np.isfinite(scores).all():
            raise DivergedError(f"the model diverged: its {source} scores on the {what} set are NaN or infinite "
                                f"after epoch {epoch}; stopped; {self.run.last_good()}")
        return Scored(net, dataset, evaluate(scores, targets, paths=paths), scores, targets, paths, got.indices)

    def evaluate(self, epoch: int) -> dict:
        """Score the model (and its EMA) on the set that chooses (validation, else test); whenever one beats the
        best, those exact weights become best.pth. With a validation set and --test_every_epoch the test set
        too, for the curves only. Returns the log fields."""
        data, fields = self.p.data, {}
        what, key = ("test", "") if data.val_set is None else ("validation", "val_")
        for source, net in self.candidates():
            scored = self.score(net, data.chooser, what, source, epoch + 1)
            fields.update(metric_fields(source, key, scored.report))
            self.say_scores(epoch, source, key, scored.report)
            if scored.report.map > self.best["mAP"]:
                self.new_best(epoch, source, net, scored)
            if source == "model":
                self.last_scored = scored
        if data.val_set is not None and self.cfg.run.test_every_epoch and data.test_set.has_labels:
            for source, net in self.candidates():
                report = self.score(net, data.test_set, "test", source, epoch + 1).report
                fields.update(metric_fields(source, "test_", report))
                self.say_scores(epoch, source, "test_", report, " (for the curves only)")
        return fields

    def say_scores(self, epoch: int, source: str, key: str, report, note: str = "") -> None:
        which = {"val_": "val ", "test_": "test "}.get(key, "")
        self.out.say(f"epoch {epoch + 1} {source}: {which}mAP {report.map:.2f}  CF1 {report.overall['CF1']:.2f}  "
                     f"OF1 {report.overall['OF1']:.2f}{note}")

    def new_best(self, epoch: int, source: str, net: nn.Module, scored: Scored) -> None:
        """``net`` (the model or its EMA) scored best so far: its weights become best.pth once the training
        state that names them is saved (and, with a validation set, are kept with their validation scores for
        the end: the test set's one scoring and the thresholds)."""
        report = scored.report
        self.best = {"mAP": float(report.map), "epoch": epoch + 1, "source": source,  # (plain floats: the state
                     "CF1": float(report.overall["CF1"]), "OF1": float(report.overall["OF1"])}  # loads weights only)
        weights = net.state_dict()
        if self.p.data.val_set is not None:
            weights = self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}
            if fits_dense(len(scored.scores), self.cfg.model.num_cls):  # (what thresholds.json is searched on)
                self.best_val = (scored.scores, scored.targets)
        self.unsaved_best = weights  # (written once, with the state: the EMA may beat the model in this epoch too)

    def chosen_model(self) -> nn.Module:
        """The model with the weights that scored best: kept in memory when they did, read back from best.pth
        by a run resumed after that."""
        weights = self.best_weights
        if weights is None:
            du.barrier()  # (rank 0 wrote it)
            weights = safe_load(self.run.file(BEST_FILE))
        model = copy.deepcopy(self.p.model)
        model.load_state_dict(weights)
        return model

    def conclude(self) -> dict:
        """After the last epoch's evaluation, the run's result (the ``final`` entry of its last log.jsonl line):
        the chosen epoch and weights and their test figures. With a validation set the chosen weights are
        scored once on the test set here; their validation scores give thresholds.json (kept from when they were
        chosen; a run resumed after that scores them again)."""
        data, best = self.p.data, self.best
        final = {"selected_on": data.selected_on, "epoch": best["epoch"], "source": best["source"]}
        if best["epoch"] is None:  # nothing was evaluated: a test set without labels, no validation set
            return final
        if data.val_set is None:
            self.shown = self.last_scored  # the full report printed is the last epoch's, as the authors' code prints
            return dict(final, test_mAP=best["mAP"], test_CF1=best.get("CF1"), test_OF1=best.get("OF1"),
                        last_test_mAP=self.last_scored.report.map)
        chosen = self.chosen_model()
        final.update(val_mAP=best["mAP"], val_CF1=best.get("CF1"), val_OF1=best.get("OF1"))
        if fits_dense(len(data.val_set), self.cfg.model.num_cls):  # (beyond: no threshold search, no pass)
            # (the scores the best weights got when they were chosen; a run resumed after that scores them again)
            if self.best_val is None:
                again = self.score(chosen, data.val_set, "validation", "chosen", best["epoch"])
                self.best_val = (again.scores, again.targets)
            scores, targets = self.best_val
            self.val_sweep = global_sweep(scores, targets)
            self.out.do(write_thresholds, self.run.file(THRESHOLDS_FILE), list(self.cfg.class_names), scores,
                        targets, f"the validation set ({data.val_source})")
        if data.test_set.has_labels:
            self.shown = self.score(chosen, data.test_set, "test", "chosen", best["epoch"])
            report = self.shown.report
            final.update(test_mAP=report.map, test_CF1=report.overall["CF1"], test_OF1=report.overall["OF1"])
        return final

    def finish(self) -> None:
        """After the last epoch (rank 0): the full report, the thresholds, the HTML report, the choice."""
        cfg, data = self.cfg, self.p.data
        report_dir, names, shown = cfg.run.report, list(cfg.class_names), self.shown
        best_path = self.run.file(BEST_FILE)
        if shown is not None:
            print(format_report(shown.report, names, per_class=True))
        # the test set's sweep when it chooses (also the report's: computed once)
        sweep = global_sweep(shown.scores, shown.targets) if data.val_set is None and shown is not None else None
        if sweep is not None:
            print(threshold_advice(sweep, os.path.join(report_dir, THRESHOLDS_FILE) if report_dir else
                                   f"val.py --load_from {best_path} --report DIR writes them"))
        elif self.val_sweep is not None:
            print(threshold_advice(self.val_sweep, f"{self.run.file(THRESHOLDS_FILE)} (chosen on the validation "
                                   "set)", held_out=True))
        elif data.val_set is not None:
            print(f"no thresholds.json: {len(data.val_set)} validation images x {cfg.model.num_cls} classes are beyond "
                  f"the threshold search's {DENSE_LIMIT:,} labels; val.py --report on part of them writes one")
        if report_dir and shown is not None:
            which = "last epoch" if data.val_set is None else f"best.pth, epoch {self.best['epoch']}"
            scored = ScoredImages(shown.scores, report_targets(shown.targets), shown.paths, names)
            info = {"model": describe_model(cfg.model), "checkpoint": f"{self.run.path} ({which})",
                    "data": data.test_json}
            out = write_report(report_dir, scored, shown.report, info=info, sweep=sweep,
                               thumbnails=lambda req: thumbnails_by_row(shown.net, data.test_set, self.p.eval_runtime,
                                                                        shown.indices, req))
            print(f"wrote {out['index']}")
        for line in choice_lines(self.best, self.final, data, best_path):
            print(line)
