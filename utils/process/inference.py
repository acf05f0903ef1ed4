"""One inference session for the scripts that load a checkpoint (val.py, demo.py, the sweep): the device
and precision, the threads, the model built from the checkpoint's description (its run record or the
flags) in eval mode, its class names, and the header and warning the script prints."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch.nn as nn

from pipeline.models.model import load_for_inference
from pipeline.models.runtime import Runtime, resolve_runtime, runtime_warning
from utils.configuration.cli import describe_inference, model_kwargs
from utils.configuration.config import Config
from utils.process import distributed as du
from utils.process.threads import ThreadChoice, ThreadGovernor


@dataclass
class Session:
    model: nn.Module
    runtime: Runtime
    threads: ThreadChoice
    class_names: List[str]  # from the run record, --classes, the file beside the data, the dataset, or class_<i>
    header: str             # what was loaded, from which description, how it runs
    warning: str            # a choice that runs but slowly here ('' if none)


def open_session(cfg: Config, load_from: str) -> Session:
    model_options, run_options = cfg.model, cfg.runtime
    runtime = resolve_runtime(du.init_distributed(), model_options.model, run_options.amp,
                              not run_options.no_channels_last, model_options.normalize)
    threads = ThreadGovernor(run_options.threads).choice
    model, _ = load_for_inference(load_from, **model_kwargs(model_options), num_classes_from=cfg.num_cls_from)
    return Session(runtime.prepare_model(model), runtime, threads, list(cfg.class_names),
                   describe_inference(cfg, load_from, runtime, threads), runtime_warning(runtime))
