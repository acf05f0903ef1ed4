"""The library: CSRA models, their weights, the data and the pieces of training; it imports nothing from
utils/ or the scripts above it. Its rooms:

- ``models/``: backbones (the table, timm's), the heads (CSRA, GAP, the head table), the model, its runtime
- ``weights/``: ImageNet weights, checkpoints in every layout, ``--init_from``, export to ONNX/TorchScript
- ``data/``: the dataset table, class names, prepared files, the label table, the dataset, transforms, splits
- ``training/``: the loss table, optimisers and LR schedules, the ``--recipe`` presets

and beside them the pieces defined in predict_onnx.py and shared (``errors``, ``jsonfile``, ``images``).
A module's path before the rooms (``pipeline.csra``) still imports it (``old_paths``)."""
from pipeline.old_paths import keep_old_paths

MOVED = keep_old_paths("pipeline", {
    "models": ("backbone_spec", "backbones", "timm_backbones", "csra", "heads", "model", "runtime"),
    "weights": ("pretrained", "checkpoint", "finetune", "export"),
    "data": ("dataset", "dataset_table", "classes", "records", "labels", "splits", "transforms", "imagefolder"),
    "training": ("losses", "optim", "recipes"),
})
