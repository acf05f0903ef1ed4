"""--resume as a source of options. Before main.py parses its flags it finds the run to continue and reads its
record (``find_resumed_run``); the record's values are the defaults below the typed flags
(``resume_defaults``, one layer of utils.configuration.cli.parse_args); the flags typed against the record are
checked once the options are resolved (``settle``: a run-defining one that differs is an error, a safe one
is a change written to the record). ``open_for_resume`` then locks the folder, checks that the record is still
the one the options came from (rank 0), reads the training state, and on rank 0 removes stale temporaries and
writes the changes into the record; it changes no option."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Set, Tuple

from pipeline.errors import CheckpointError
from pipeline.training.optim import SPANS_THE_RUN
from utils.configuration.options import RUN_DEFINING, SAFE_TO_CHANGE
from utils.process import distributed as du
from utils.runs.run_folder import RunFolder, run_base
from utils.runs.run_record import RECORD_FILE, check_record_values
from utils.runs.train_state import (STATE_FILE, check_state_identity, load_train_state, read_recorded_args,
                                    remove_stale_temporaries)

RECORDED = RUN_DEFINING + SAFE_TO_CHANGE  # what a resumed run takes back from its record


@dataclass(frozen=True)
class ResumePlan:
    """The run --resume continues: its folder, its training-state file, the record its options came from,
    and the changes the typed flags make (with the values then in force of the options that may change)."""
    folder: str
    state_path: str
    record: dict
    changes: Tuple[str, ...] = ()
    options: Dict[str, object] = field(default_factory=dict)  # SAFE_TO_CHANGE's values in force (settle fills it)


def progress(folder: str) -> Optional[Tuple[int, int]]:
    """(finished epochs, recorded total epochs) of a run folder, or None when it holds no training
    state. The state file is memory-mapped: its weights are not read."""
    path = os.path.join(folder, STATE_FILE)
    if not os.path.isfile(path):
        return None
    done = int(load_train_state(path, mmap=True)["epoch"])
    total = read_recorded_args(folder).get("total_epoch")
    return done, int(total) if isinstance(total, int) else done


def run_folders(base: str) -> List[str]:
    """``base`` and its numbered siblings ``base_2``, ``base_3``, ... that exist."""
    base = os.path.normpath(base)
    parent, name = os.path.split(base)
    pattern = re.compile(re.escape(name) + r"_(\d+)$")
    found = [base] if os.path.isdir(base) else []
    if not os.path.isdir(parent or "."):
        return found
    siblings = []
    for entry in os.listdir(parent or "."):
        m = pattern.match(entry)
        if m and os.path.isdir(os.path.join(parent, entry)):
            siblings.append((int(m.group(1)), os.path.join(parent, entry)))
    return found + [p for _, p in sorted(siblings)]


def find_unfinished_run(base: str) -> str:
    """The one unfinished run among ``base``, ``base_2``, ...; an error naming the candidates when
    there is none or more than one."""
    unfinished, finished = [], []
    for folder in run_folders(base):
        p = progress(folder)
        if p is not None:
            (unfinished if p[0] < p[1] else finished).append((folder, p))
    named = lambda runs: ", ".join(f"{f} ({done}/{total} epochs)" for f, (done, total) in runs)  # noqa: E731
    if len(unfinished) == 1:
        return unfinished[0][0]
    if not unfinished:
        seen = f"; finished: {named(finished)} (raise --total_epoch and name it with --resume PATH)" \
            if finished else ""
        raise CheckpointError(f"--resume: no training state of an unfinished run in {base} or its numbered "
                              f"siblings{seen}")
    raise CheckpointError(f"--resume: several unfinished runs: {named(unfinished)}; "
                          "name one with --resume PATH")


def resume_target(resume: str, output_dir: Optional[str], model: str) -> Tuple[str, str]:
    """(run folder, training-state file) --resume continues: the named folder or state file, else the
    one unfinished run under --output_dir (or checkpoint/<model>)."""
    if resume == "auto":
        folder = find_unfinished_run(run_base(output_dir, model))
    elif os.path.isdir(resume):
        folder = resume
    else:
        return os.path.dirname(resume) or ".", resume
    return folder, os.path.join(folder, STATE_FILE)


def find_resumed_run(resume: str, output_dir: Optional[str], model: Optional[str]) -> ResumePlan:
    folder, path = resume_target(resume, output_dir, model)
    record = read_recorded_args(folder)
    # checked as --config's and --load_from's records are, before any value becomes a default
    check_record_values(record, RECORDED, f"--resume {os.path.join(folder, RECORD_FILE)}")
    return ResumePlan(folder, path, record)


def resume_defaults(record: dict) -> dict:
    """The options a resumed run takes from its record, as defaults (flags typed now sit above them)."""
    return {k: record[k] for k in RECORDED if k in record}


def _as_recorded(value):
    return json.loads(json.dumps(value, default=str))


def _typed_differences(keys, record: dict, args, given: Set[str]):
    """(key, value now as a record holds it, recorded value) of each of ``keys`` typed with another value."""
    for key in keys:
        if key in record and key in given:
            now = _as_recorded(getattr(args, key))
            if now != record[key]:
                yield key, now, record[key]


def settle(plan: ResumePlan, args, given: Set[str]) -> ResumePlan:
    """``plan`` with the changes the flags typed now (``given``) make to the recorded run, whose options
    ``args`` holds resolved. A run-defining option typed with another value is an error naming both (except
    --amp over a recorded 'auto'); a safe one is a change (--total_epoch only upwards)."""
    record, folder, changes = plan.record, plan.folder, []
    for key, now, then in _typed_differences(RUN_DEFINING, record, args, given):
        if key == "amp" and then == "auto":
            changes.append(f"--amp auto -> {now}")  # 'auto' never fixed the precision: each machine picks its own
            continue
        raise CheckpointError(f"--resume: --{key} is {now} but the run in {folder} was started with {then}; "
                              "drop the flag to continue it, or start a new run")
    for key, _, then in _typed_differences(SAFE_TO_CHANGE, record, args, given):
        if key == "total_epoch" and args.total_epoch < then:
            raise CheckpointError(f"--resume: --total_epoch {args.total_epoch} is below the run's {then}; "
                                  "it can only be raised")
        if key == "total_epoch" and record.get("scheduler") in SPANS_THE_RUN:
            raise CheckpointError(f"--resume: the run in {folder} uses --scheduler {record['scheduler']}, whose LR "
                                  "curve spans its recorded --total_epoch; it cannot be changed (start a new run to "
                                  "train longer)")
        changes.append(f"--{key} {then} -> {getattr(args, key)}")
    return replace(plan, changes=tuple(changes), options={k: getattr(args, k) for k in SAFE_TO_CHANGE})


def open_for_resume(plan: ResumePlan) -> Tuple[RunFolder, dict]:
    """Lock the run ``plan`` continues and read its state once, checking that the state belongs to this run
    and that the record is still the one the options came from; rank 0 records the changes. Returns
    (run folder, state)."""
    folder = du.broadcast_object(plan.folder if du.is_main() else None)
    if folder != plan.folder:
        raise CheckpointError(f"--resume: this process chose {plan.folder} but rank 0 chose {folder}")
    run = RunFolder(folder)
    run.lock()
    try:
        state = _check_and_record(run, plan)
    except BaseException:
        run.release()
        raise
    return run, state


def _check_and_record(run: RunFolder, plan: ResumePlan) -> dict:
    """open_for_resume's checks and record update, with the folder locked."""
    folder, path = run.path, plan.state_path
    # rank 0 checks the record under its lock, then may write the changes: a slower rank would read that
    # update, so the other ranks keep the record their options came from (the same options: the same argv)
    recorded = run.read_record() if du.is_main() else dict(plan.record)
    if resume_defaults(recorded) != resume_defaults(plan.record):
        raise CheckpointError(f"--resume: {run.file(RECORD_FILE)} changed while this run was starting (resumed by "
                              "another process?); run the command again")
    if not os.path.isfile(path):
        raise CheckpointError(f"--resume: no training state at {path}")
    state = load_train_state(path)
    run.run_id = recorded.get("run_id")
    check_state_identity(state, path, recorded, run.file(RECORD_FILE))
    if state.get("runtime") is None:  # a state from before states recorded their runtime
        state["runtime"] = recorded.get("runtime")
    total = plan.options.get("total_epoch", recorded.get("total_epoch"))
    if state["epoch"] >= total:
        raise CheckpointError(f"--resume: the run in {folder} is finished ({state['epoch']} of {total} epochs); "
                              "raise --total_epoch to train it further")
    if du.is_main():
        for name in remove_stale_temporaries(folder):
            print(f"removed {run.file(name)}, left by an interrupted write")
        run.settle_best(state["best"].get("epoch"))  # a killed run's new best weights: best.pth if the state names them
        if plan.changes:
            recorded.update(plan.options)
            recorded.setdefault("resume_changes", []).extend(plan.changes)
            run.write_record(recorded)
        print(f"resuming {folder}" + (f" with {', '.join(plan.changes)}" if plan.changes else ""))
    return state
