"""Train CSRA (or the GAP baseline) with the paper's recipe, then evaluate every epoch.

    python main.py --num_heads 1 --lam 0.1 --dataset voc07 --num_cls 20
    torchrun --nproc_per_node 4 main.py --num_heads 6 --lam 0.5 --dataset coco --num_cls 80
    python main.py --dataset demo                       # built-in demo data, CPU, a few minutes
"""
from __future__ import annotations

import utils.process.openmp_env  # noqa: F401  (first: it configures OpenMP before torch loads it)

import shlex
import sys
from typing import Optional

import torch

from trainer import Trainer, build
from utils.configuration.cli import run_main
from utils.configuration.config import Config
from utils.configuration.train_options import get_args
from utils.process import distributed as du
from utils.runs.resume import open_for_resume
from utils.runs.run_folder import claim_new


class ResumeHint:
    """What Ctrl-C prints: the command that continues this run once its folder is chosen."""

    def __init__(self, argv):
        self.argv, self.folder = list(argv), None

    def command(self) -> str:
        """The same flags, any --resume replaced by the run folder."""
        kept, skip = [], False
        for i, a in enumerate(self.argv):
            if skip:
                skip = False
                continue
            if a == "--resume":
                skip = i + 1 < len(self.argv) and not self.argv[i + 1].startswith("--")
                continue
            if not a.startswith("--resume="):
                kept.append(a)
        return shlex.join(["python", "main.py", *kept, "--resume", self.folder])

    def __call__(self) -> str:
        if self.folder is None:
            return "the run had not started; run the same command again"
        return f"continue with: {self.command()}"


def train(args, hint: Optional[ResumeHint] = None) -> dict:
    """A new run in a fresh folder, or with --resume the run it names (``args.resume_plan``, see
    utils.runs.resume); its folder stays locked until it ends."""
    device = du.init_distributed()
    plan = args.resume_plan
    cfg = Config.from_args(args)  # the options in force, frozen: the Namespace is not read after this
    run, state = open_for_resume(plan) if plan else (None, None)
    state_path = plan.state_path if plan else None
    try:
        torch.manual_seed(cfg.run.seed)
        parts = build(cfg, device, state)
        if run is None:
            run = claim_new(cfg.run.output_dir, cfg.model.model)
            state_path = run.state_path
            if du.is_main():
                run.write_record(dict(parts.config.record(), run_id=run.run_id, runtime=parts.runtime.as_dict(),
                                      selection=parts.data.selection(),
                                      **({"init": parts.init.record()} if parts.init else {})))
        if hint is not None:
            hint.folder = run.path
        return Trainer(parts, run, state, state_path).fit()
    finally:
        if run is not None:
            run.release()


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    hint = ResumeHint(argv)
    run_main(lambda: train(get_args(argv), hint), interrupted_hint=hint)


if __name__ == "__main__":
    main()
