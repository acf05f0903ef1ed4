"""Class names, one rule in every script: --classes FILE; else the run record beside --load_from; else a
class file beside the JSON; else the --dataset's names when their number matches the labels; else class_<i>
with a warning. A trained model's outputs are in its record's class order: names that contradict it stop."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence, Set, Tuple

from pipeline.data.classes import load_class_names
from pipeline.data.dataset import DATASETS
from pipeline.errors import ConfigError
from utils.runs.run_record import find_record

CLASS_FILES = ("classes.txt", "classes.json")  # a class-names file beside a prepared JSON


def custom_json(args) -> Optional[str]:
    return args.test_json or args.train_json


def class_file_beside(json_path: str) -> Optional[str]:
    """The class-names file beside a prepared JSON (the preparation scripts write one), if there is one."""
    folder = os.path.dirname(os.path.abspath(json_path))
    return next((p for p in (os.path.join(folder, n) for n in CLASS_FILES) if os.path.isfile(p)), None)


def names_beside(json_path: str) -> Optional[Tuple[str, List[str]]]:
    """(path, names) of the class-names file beside a prepared JSON."""
    path = class_file_beside(json_path)
    return None if path is None else (path, load_class_names(path))


def class_names_known_now(args) -> Tuple[Optional[List[str]], str]:
    """The first steps of the one rule for class names, every entry script: --classes; else the
    checkpoint's run record; else a class file beside the JSON; else the --dataset's names when the
    data are the dataset's own. (None, '') when only the label count can decide (finish_class_names)."""
    class_file = args.classes
    if class_file:
        return load_class_names(class_file), class_file
    if args.record_names:
        return list(args.record_names), args.record_path
    spec = DATASETS[args.dataset]
    custom = custom_json(args) or (None if spec.classes else spec.test_json or spec.train_json)
    if custom:
        found = names_beside(custom)
        if found:
            return found[1], found[0]
        return None, ""
    return (list(spec.classes), args.dataset) if spec.classes else (None, "")


def init_class_names(path: str, init_classes: Optional[str]) -> List[str]:
    """The class names of --init_from's checkpoint: --init_classes (a names file, or a dataset's), else the run
    record beside the checkpoint."""
    if init_classes:
        spec = DATASETS.get(init_classes)
        if spec is not None and spec.classes:
            return list(spec.classes)
        if not os.path.isfile(init_classes):
            named = ", ".join(k for k, v in DATASETS.items() if v.classes)
            raise ConfigError(f"--init_classes {init_classes}: neither a class-names file nor a dataset with class "
                              f"names ({named})")
        return load_class_names(init_classes)
    found = find_record(path)
    if found is not None and found[1].get("class_names"):
        return list(found[1]["class_names"])
    raise ConfigError(f"--init_from {path}: its class names are unknown (no run record beside it): name them with "
                      "--init_classes FILE, or the dataset it was trained on (e.g. --init_classes coco)")


def default_class_names(dataset: str, num_cls: int) -> List[str]:
    """The last step of the rule, once the label count is known: the --dataset's names when their number
    matches, else class_<i> with a one-line warning."""
    spec = DATASETS[dataset]
    if spec.classes and len(spec.classes) == num_cls:
        return list(spec.classes)
    print(f"warning: no class names for these {num_cls} classes (pass --classes FILE, or put "
          f"{CLASS_FILES[0]} beside the JSON); calling them class_0 ... class_{num_cls - 1}", file=sys.stderr)
    return numbered_names(num_cls)


def numbered_names(num_cls: int) -> List[str]:
    """class_0 ... class_<n-1>: the names of classes nothing names."""
    return [f"class_{i}" for i in range(num_cls)]


def finish_class_names(args: argparse.Namespace, num_cls: int) -> List[str]:
    """Class names on a command line being resolved, once the label count is known."""
    if args.class_names is None:
        args.class_names = default_class_names(args.dataset, num_cls)
    return args.class_names


def config_class_names(args: argparse.Namespace, typed: Set[str], config: dict) -> None:
    """--config RUN: the recorded run's class names are the new run's, unless other data typed name their own
    (then the recorded run's --classes file, which named its own data's, goes too)."""
    args.record_names = config.get("class_names")
    if names_of_other_data(args, typed):
        args.record_names = None
        if "classes" not in typed:
            args.classes = None


def names_of_other_data(args: argparse.Namespace, typed: Set[str]) -> bool:
    """--config RUN with other data typed: whether those data name their classes themselves (a class file
    beside the typed JSON, or a typed --dataset's own names); then they, not the recorded run's, are the new
    run's (labels in another order would otherwise be trained and reported under the old run's names)."""
    if "dataset" in typed and DATASETS[args.dataset].classes:
        return True
    data = [getattr(args, k, None) for k in ("train_json", "test_json") if k in typed]
    return any(d and class_file_beside(d) for d in data)


def _unlike(names: Sequence[str], recorded: Sequence[str], path: str) -> str:
    """How a list of as many class names as the record's differs from them, for a message: order or names,
    and where."""
    at = next(i for i, (a, b) in enumerate(zip(names, recorded)) if a != b)
    how = "the same classes in another order than" if sorted(names) == sorted(recorded) else "other classes than"
    return f"lists {how} the checkpoint's run record {path} (class {at}: {names[at]!r} here, {recorded[at]!r} there)"


def check_class_order(args: argparse.Namespace, path: str, recorded: Optional[Sequence[str]]) -> None:
    """A trained model's outputs are in its record's class order: a --classes file, or the class file beside
    the data it is evaluated on, that names or orders the classes otherwise would label (or score) every
    output as another class. Both stop; a record that only numbers its classes (class_0, ...) is named by
    --classes as before, and another number of classes is the count checks' to name."""
    if not recorded or list(recorded) == numbered_names(len(recorded)):
        return
    recorded = list(recorded)
    names = args.class_names if args.classes else None  # (read from --classes by the rule, first)
    if names is not None and len(names) == len(recorded) and names != recorded:
        raise ConfigError(f"--classes {args.classes} {_unlike(names, recorded, path)}; the model's outputs follow "
                          "the record: drop the flag, or pass --no_record to describe the model by flags")
    data = (args.test_json or DATASETS[args.dataset].test_json) if hasattr(args, "test_json") else None
    beside = names_beside(data) if data and os.path.isfile(data) else None
    if beside is not None and len(beside[1]) == len(recorded) and beside[1] != recorded:
        raise ConfigError(f"{data}: its labels follow {beside[0]}, which {_unlike(beside[1], recorded, path)}; its "
                          "targets would be scored against other classes' outputs")
