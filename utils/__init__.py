"""What the scripts share above the library, in rooms:

- ``configuration/``: the option table, the typed Config, parsing, main.py's command line, the scripts' parser
- ``runs/``: a run folder, its lock, its record, the training state, the logs
- ``output/``: atomic writers, progress and ETA, prediction records, heatmaps
- ``process/``: torchrun ranks, the thread count, OpenMP settings, the inference session
- ``evaluation/``: the metrics, the printed and HTML reports; ``experiments/``: sweeps; ``prepare/``: datasets

A module's path before the rooms (``utils.cli``) still imports it (``pipeline.old_paths``)."""
from pipeline.old_paths import keep_old_paths

MOVED = keep_old_paths("utils", {
    "configuration": ("options", "config", "cli", "train_options", "entry"),
    "runs": ("run_folder", "run_lock", "run_record", "train_state", "loggers"),
    "output": ("fileio", "progress", "predictions", "visualize"),
    "process": ("distributed", "threads", "openmp_env", "inference"),
})
