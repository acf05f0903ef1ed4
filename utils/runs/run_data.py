"""A training run's datasets: the training set, the validation set that chooses the epoch, the weights and the
thresholds when there is one (``--val_json``'s file, or ``--val_split``'s records held out of the training file),
and the test set; and the configuration as the training data complete it (class count and names, partial labels)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from pipeline.data.dataset import DATASETS, MultiLabelDataset
from pipeline.data.splits import stratified_split
from utils.configuration.cli import dataset_files, dataset_kwargs, plural, with_label_count
from utils.configuration.config import Config
from utils.output.progress import RankZero
from utils.process import distributed as du


def ensure_demo_data(cfg: Config) -> None:
    if cfg.data.dataset != "demo" or cfg.training.train_json or cfg.data.test_json:
        return
    if du.is_main():
        from utils.prepare.prepare_demo import ensure_demo_files
        ensure_demo_files(DATASETS["demo"].train_json, DATASETS["demo"].test_json)
    du.barrier()


@dataclass
class RunData:
    """The run's datasets: training, the set that chooses (validation when there is one, else test) and test."""
    train_set: MultiLabelDataset
    test_set: MultiLabelDataset
    test_json: str
    val_set: Optional[MultiLabelDataset] = None
    val_source: str = ""       # what the validation set is, for the header and the record

    @property
    def chooser(self) -> MultiLabelDataset:
        return self.test_set if self.val_set is None else self.val_set

    @property
    def selected_on(self) -> str:
        return "test" if self.val_set is None else "val"

    def selection(self) -> dict:
        """For the run record: the set that chooses, and what the validation set is."""
        return {"on": self.selected_on, "validation": self.val_source or None}


def load_data(cfg: Config, out: RankZero) -> Tuple[RunData, Config]:
    """The training, validation and test sets, and the config as the training data complete it."""
    ensure_demo_data(cfg)
    train_json, test_json = dataset_files(cfg, train=True)
    partial = cfg.training.partial_labels
    train_set = MultiLabelDataset(train_json, **dataset_kwargs(cfg, train=True), partial_labels=partial)
    if train_set.table.unknown and not partial:  # OpenImages-style: unlisted classes are unknown
        partial = True
        out.say(f"note: {train_json} leaves unlisted classes unknown: they stay out of the loss (--partial_labels)")
    cfg = with_label_count(cfg, cfg.model.num_cls or train_set.num_classes, partial, counted_in=train_json)
    test_set = MultiLabelDataset(test_json, **dataset_kwargs(cfg, train=False), require_labels=False)
    if not test_set.has_labels:
        out.say(f"note: {test_json} has no labels (e.g. VOC2012 test): "
                + ("the test set is not scored; use val.py --voc_submission on best.pth" if
                   cfg.training.val_json or cfg.training.val_split else
                   "training without evaluation; use val.py --voc_submission on the saved epochs"))
    return validation_data(cfg, train_set, train_json, test_set, test_json, out), cfg


def validation_data(cfg: Config, train_set: MultiLabelDataset, train_json: str, test_set: MultiLabelDataset,
                    test_json: str, out: RankZero) -> RunData:
    """The run's data with its validation set: --val_json's file, or --val_split's records held out of the
    training file (then the training set is the rest); none for the authors' protocol."""
    t = cfg.training
    eval_kwargs = dataset_kwargs(cfg, train=False)
    if t.val_json:  # (with --partial_labels its -1 is unknown too, as in the training file)
        val_set = MultiLabelDataset(t.val_json, **eval_kwargs, partial_labels=t.partial_labels)
        return RunData(train_set, test_set, test_json, val_set, f"{t.val_json} ({len(val_set)} images)")
    if t.val_split is None:
        return RunData(train_set, test_set, test_json)
    split = stratified_split(train_set.table, t.val_split, t.split_seed)
    if split.unsplit:
        names = [cfg.class_names[c] for c in split.unsplit]
        out.say(f"note: --val_split: {plural(len(names), 'class', 'classes')} could not keep a positive on each "
                f"side (their positives overlap other rare classes'): {', '.join(names[:5])}"
                f"{', ...' if len(names) > 5 else ''}")
    source = (f"{len(split.val)} of the {len(train_set)} records of {train_json} (--val_split {t.val_split:g}, "
              f"stratified, split seed {t.split_seed})")
    return RunData(train_set.subset(split.train, train_set.transform), test_set, test_json,
                   train_set.subset(split.val, eval_kwargs["transform"], eval_kwargs["reading"].fast_decode), source)
