"""The table of known datasets: their files, classes and the settings the paper's recipe uses for them
(and, per recipe, the demo's changes). Adding a dataset is one row."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from pipeline.data.classes import COCO_CLASSES, DEMO_CLASSES, VOC_CLASSES, WIDER_ATTRIBUTES


# the strong recipe on the demo (a small CNN from scratch, 630 steps): a from-scratch AdamW LR; an EMA whose
# horizon (1 / (1 - decay) = 100 steps) fits the run (0.9997's 3,333 steps would outlast it); no Cutout: a
# square of half the 64 px side hides whole shapes whose labels stay on (best mAP 96.6 with it, 99.2
# without: benchmarks/bench_demo_variants.py, README)
DEMO_STRONG = dict(lr=2e-3, ema=0.99, cutout=0.0)


@dataclass(frozen=True)
class DatasetSpec:
    """A known dataset's files and the settings the paper's recipe uses for it."""
    classes: Tuple[str, ...]           # empty: the names come from --classes or a file beside the JSON
    train_json: Optional[str]          # None: --train_json / --test_json name the files
    test_json: Optional[str]
    img_size: int
    batch_size: int
    decay_every: int                   # x0.1 every N epochs
    crop: bool = True                  # random resized crop in training (WIDER: flip only)
    normalize: str = "unit"            # input normalisation, the authors' rule: by dataset, whatever the backbone
    model: str = "resnet101"           # default backbone
    train_overrides: Dict[str, object] = field(default_factory=dict)  # main.py defaults it changes
    recipe_overrides: Dict[str, Dict[str, object]] = field(default_factory=dict)  # --recipe name -> its changes

    @property
    def num_cls(self) -> int:
        return len(self.classes)


DATASETS: Dict[str, DatasetSpec] = {
    "voc07": DatasetSpec(tuple(VOC_CLASSES), "data/voc07/trainval_voc07.json", "data/voc07/test_voc07.json",
                         img_size=448, batch_size=16, decay_every=4),
    "voc12": DatasetSpec(tuple(VOC_CLASSES), "data/voc12/trainval_voc12.json", "data/voc12/test_voc12.json",
                         img_size=448, batch_size=16, decay_every=4),
    "coco": DatasetSpec(tuple(COCO_CLASSES), "data/coco/train_coco2014.json", "data/coco/val_coco2014.json",
                        img_size=448, batch_size=16, decay_every=5),
    "wider": DatasetSpec(tuple(WIDER_ATTRIBUTES), "data/wider/trainval_wider.json", "data/wider/test_wider.json",
                         img_size=224, batch_size=64, decay_every=5, crop=False, normalize="half"),
    # the built-in generated dataset: a small CNN trained from scratch on CPU in a few minutes
    "demo": DatasetSpec(tuple(DEMO_CLASSES), "data/demo/train_demo.json", "data/demo/test_demo.json",
                        img_size=64, batch_size=32, decay_every=4, model="small_cnn",
                        train_overrides=dict(pretrained="none", num_workers=0, cache_images=True),
                        recipe_overrides={"paper": dict(lr=0.05, total_epoch=10, warmup_epoch=1),
                                          "strong": dict(DEMO_STRONG, total_epoch=10)}),
    # sparse label files (utils/prepare/prepare_openimages.py, prepare_nuswide.py), class names in classes.txt
    # beside them; OpenImages: train on train, report on test (ASL, ML-Decoder)
    "openimages": DatasetSpec((), "data/openimages/train_openimages.jsonl", "data/openimages/test_openimages.jsonl",
                              img_size=448, batch_size=16, decay_every=5),
    "nuswide": DatasetSpec((), "data/nuswide/train_nuswide.jsonl", "data/nuswide/test_nuswide.jsonl",
                           img_size=448, batch_size=16, decay_every=5),
    # your own prepared files (--train_json / --test_json without --dataset): VOC's recipe
    "custom": DatasetSpec((), None, None, img_size=448, batch_size=16, decay_every=4),
}
CUSTOM = "custom"
