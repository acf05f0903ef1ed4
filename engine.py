"""Training and evaluation loops shared by main.py, val.py and the tools."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Sampler

from pipeline.data.dataset import collate_skipping_bad
from pipeline.errors import CSRAError, DataError
from pipeline.models.runtime import Runtime
from utils.output.progress import EpochProgress, bar
from utils.process import distributed as du


class NonFiniteLossError(CSRAError):
    """The loss became NaN or infinite; raised before the step that would have used it."""


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63)


def seed_step(seed: int, step: int, device: torch.device) -> None:
    """Seed torch's generator for one training step from (seed, global step, rank), so what the model
    draws itself (stochastic depth in ConvNeXt, EfficientNet and Swin; dropout) is the same whether the
    run was resumed or not. (``Generator.manual_seed``: microseconds; ``torch.manual_seed`` is slower.)"""
    value = sample_seed(seed + 7_919, step, du.rank())
    torch.default_generator.manual_seed(value)
    if device.type == "cuda":
        torch.cuda.manual_seed(value)


class SeededShardSampler(Sampler):
    """Shuffles per epoch from (seed, epoch), shards across ranks without padding (each sample
    once per epoch), and yields ``(index, sample_seed)`` so augmentation is reproducible.
    ``start`` skips the first items of this rank's shard, to resume mid-epoch."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def shard(self) -> List[int]:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
        return torch.randperm(self.n, generator=g)[self.rank::self.world].tolist()

    def __iter__(self) -> Iterator:
        for i in self.shard()[self.start:]:
            yield (i, sample_seed(self.seed, self.epoch, i))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world)) - self.start


def make_loader(dataset, batch_size: int, num_workers: int, sampler, device: torch.device) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_skipping_bad, pin_memory=device.type == "cuda",
                      persistent_workers=False, drop_last=False)


def train_step(model: nn.Module, criterion: Callable, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               targets: torch.Tensor, runtime: Runtime, scaler=None) -> float:
    """One optimiser step on one batch; returns the loss. A non-finite loss is returned before
    any update, so the caller can stop with the weights as they were. The loss is computed in
    float32 on float32 logits, whatever the autocast precision; the targets reach it as they are
    (with partial labels a -1 is an unknown)."""
    x = runtime.to_input(images)
    y = targets.to(runtime.device, non_blocking=True)
    with runtime.autocast():
        logits = model(x)
    loss = criterion(logits.float(), y.float())
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        return loss_value
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss_value


@dataclass(frozen=True)
class EpochStats:
    """One epoch's training figures, summed over every rank."""
    train_loss: float           # the mean loss of the images trained on
    images: int
    skipped_images: int         # unreadable (--skip_bad_images)
    images_per_s: float
    train_seconds: float
    lr: List[float]             # each parameter group's LR at the epoch's last step


@dataclass
class TrainingLoop:
    """The steps of one run: what every step uses, fixed for the run (the model as it trains, its optimiser
    and runtime, ``criterion(logits, targets)`` from ``pipeline.training.losses``, the LR as a factor of each
    group's ``base_lr`` by global step, the scaler and EMA, the seed), and an epoch of them (``run_epoch``).
    Loss, LR and speed are shown every ``print_freq`` iterations (a bar on a terminal, a plain line in a log
    file)."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    runtime: Runtime
    criterion: Callable
    lr_fn: Callable[[int], float]
    iters_per_epoch: int
    total_epochs: int
    scaler: Optional[torch.amp.GradScaler] = None
    ema: Optional[nn.Module] = None
    seed: int = 0
    print_freq: int = 100

    def step(self, batch, epoch: int, it: int) -> Optional[float]:
        """Iteration ``it`` of ``epoch``: its LR, then one optimiser step on ``batch`` (None: every image of it
        was unreadable; no step). Returns the loss, or None without a step."""
        step = epoch * self.iters_per_epoch + it
        factor = self.lr_fn(step)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        if batch is None:
            return None
        seed_step(self.seed, step, self.runtime.device)
        loss_value = train_step(self.model, self.criterion, self.optimizer, batch[0], batch[1], self.runtime,
                                self.scaler)
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f"loss is {loss_value} at epoch {epoch + 1}, step {it + 1} "
                                     f"(global step {step + 1}); stopped")
        if self.ema is not None:
            self.ema.update_parameters(self.model.module if hasattr(self.model, "module") else self.model)
        return loss_value

    def run_epoch(self, loader: DataLoader, epoch: int, start_iter: int = 0,
                  on_step: Optional[Callable[[int, Optional[float]], None]] = None) -> EpochStats:
        """Epoch ``epoch`` from iteration ``start_iter``; ``on_step(iter_done, loss or None)`` runs after each
        step."""
        model = self.model
        model.train()
        loss_sum, seen, skipped = 0.0, 0, 0
        t0 = time.time()
        join = model.join() if isinstance(model, nn.parallel.DistributedDataParallel) else contextlib.nullcontext()
        progress = EpochProgress(epoch, self.total_epochs or epoch + 1, self.iters_per_epoch, start_iter,
                                 self.print_freq)
        it = start_iter
        try:
            with join:
                for batch, n_skipped in loader:
                    skipped += n_skipped
                    loss_value = self.step(batch, epoch, it)
                    if loss_value is not None:
                        loss_sum += loss_value * len(batch[0])
                        seen += len(batch[0])
                    it += 1
                    elapsed = max(time.time() - t0, 1e-9)
                    progress.update(it, loss_sum / max(seen, 1), self.optimizer.param_groups[0]["lr"],
                                    seen * du.world_size() / elapsed)
                    if on_step is not None:
                        on_step(it, loss_value)
        finally:
            progress.close()
        return self.epoch_stats(loader, epoch, [loss_sum, float(seen), float(skipped)], t0)

    def epoch_stats(self, loader: DataLoader, epoch: int, sums: List[float], t0: float) -> EpochStats:
        """The epoch's figures from this rank's (loss sum, images, skipped), summed over the ranks, and its
        time from ``t0``; an error when no rank could read a training image."""
        totals = du.all_reduce_sum(sums, self.runtime.device)
        if totals[1] == 0:
            raise DataError(f"{getattr(loader.dataset, 'json_path', 'the training set')}: no training image could "
                            f"be read in epoch {epoch + 1} ({int(totals[2])} skipped)")
        elapsed = max(time.time() - t0, 1e-9)
        return EpochStats(totals[0] / max(totals[1], 1), int(totals[1]), int(totals[2]), totals[1] / elapsed, elapsed,
                          [g["lr"] for g in self.optimizer.param_groups])


def loader_images(item) -> Optional[torch.Tensor]:
    """The images of one ``make_loader`` item, ``(batch or None, images skipped)``."""
    batch, _ = item
    return None if batch is None else batch[0]


def score_batches(batches: Iterable, runtime: Runtime, forward: Callable[[torch.Tensor], object], *,
                  images: Callable[[object], Optional[torch.Tensor]] = lambda item: item[0]
                  ) -> Iterator[Tuple[object, object]]:
    """The one scoring loop (evaluation, val.py, demo.py, the sweep, the report's heatmaps): for each item
    of ``batches``, its images (``images(item)``: uint8, or None when none could be read) made the model's
    input and passed through ``forward`` without gradients, in the runtime's precision. Yields
    ``(item, output)``, output None for an item without images. What the caller does with an output
    runs outside autocast (the sweep's mean and max stay float32)."""
    for item in batches:
        x = images(item)
        if x is None:
            yield item, None
            continue
        with torch.no_grad(), runtime.autocast():
            out = forward(runtime.to_input(x))
        yield item, out


@dataclass(frozen=True)
class Predictions:
    """The scores of the images that could be read, in dataset order (rows skip unreadable images; several
    WIDER records share one path, so paths do not identify records: ``indices`` does)."""
    scores: np.ndarray                # (N, C) sigmoid scores
    targets: Optional[np.ndarray]     # (N, C), None for a dataset without labels
    paths: List[str]
    indices: np.ndarray               # (N,) each row's dataset index


def predict(model: nn.Module, dataset, runtime: Runtime, *, batch_size: int, num_workers: int,
            desc: str = "eval") -> Predictions:
    """Sigmoid scores of every image exactly once, gathered from all ranks, in dataset order."""
    model.eval()
    shard = list(range(du.rank(), len(dataset), du.world_size()))
    loader = make_loader(dataset, batch_size, num_workers, shard, runtime.device)
    idx_parts, score_parts, paths = [], [], []
    skipped = 0
    for (batch, n_skipped), logits in score_batches(bar(loader, desc=desc), runtime, model, images=loader_images):
        skipped += n_skipped
        if logits is None:
            continue
        _, _, batch_paths, indices = batch
        score_parts.append(torch.sigmoid(logits.float()).cpu().numpy())
        idx_parts.append(indices.numpy())
        paths.extend(batch_paths)
    num_classes = dataset.num_classes or 0
    local = (np.concatenate(idx_parts) if idx_parts else np.zeros(0, dtype=np.int64),
             np.concatenate(score_parts) if score_parts else np.zeros((0, num_classes)), paths)
    parts = du.all_gather_objects(local)
    skipped = int(du.all_reduce_sum([float(skipped)], runtime.device)[0])
    if skipped and du.is_main():
        print(f"warning: {skipped} unreadable images skipped (--skip_bad_images); metrics cover the rest")
    indices = np.concatenate([p[0] for p in parts])
    if len(indices) == 0 and len(dataset):
        raise DataError(f"{getattr(dataset, 'json_path', 'the test set')}: no image could be read "
                        f"({skipped} skipped)")
    scores = np.concatenate([p[1] for p in parts])
    all_paths = [q for p in parts for q in p[2]]
    order = np.argsort(indices, kind="stable")
    indices = indices[order]
    scores = scores[order]
    all_paths = [all_paths[i] for i in order]
    targets = dataset.targets()[indices] if dataset.has_labels else None
    return Predictions(scores, targets, all_paths, indices)


def attention_thumbnails(model: nn.Module, dataset, runtime: Runtime, requests, size: int = 160, head: int = 0,
                         batch_size: int = 16):
    """Thumbnails of dataset images with a class's attention heatmap overlaid, from one forward pass
    over just the requested images. ``requests``: image index -> class indices; returns
    {(image index, class index): PIL image}."""
    from utils.output.visualize import class_map, fit_thumbnail, overlay, upsample

    model.eval()
    out = {}
    indices = sorted(requests)

    def readable(start: int) -> list:
        chosen = [(i, dataset[i]) for i in indices[start:start + batch_size]]
        return [(i, item) for i, item in chosen if item is not None]

    batches = (readable(start) for start in range(0, len(indices), batch_size))
    for items, maps in score_batches(batches, runtime, model.forward_with_maps,
                                     images=lambda items: torch.stack([it[0] for _, it in items]) if items else None):
        if maps is None:
            continue
        for j, (i, _) in enumerate(items):
            img = fit_thumbnail(dataset.load_image(i), size)
            for c in requests[i]:
                out[(i, c)] = overlay(img, upsample(class_map(maps, j, c, head), (img.height, img.width)))
    return out


def thumbnails_by_row(model, dataset, runtime, indices, requests) -> dict:
    """attention_thumbnails keyed by rows of the score matrix; ``indices`` (from ``predict``) maps rows
    to dataset indices."""
    made = attention_thumbnails(model, dataset, runtime, {int(indices[row]): cs for row, cs in requests.items()})
    row_of = {int(indices[row]): row for row in requests}
    return {(row_of[i], c): img for (i, c), img in made.items()}
