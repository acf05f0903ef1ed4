"""The floor plan: rooms of at most 8 modules, layers that point down, the import paths from before the rooms,
and an installed package instead of paths put on sys.path by hand."""
import ast
import importlib
import os

import pytest

from conftest import ROOT

# every module of pipeline/ and utils/ that moved into a room, at its path before (written out here, not read
# from the code: these are the paths users' scripts may hold)
OLD_PATHS = {
    "pipeline.backbone_spec": "pipeline.models.backbone_spec", "pipeline.backbones": "pipeline.models.backbones",
    "pipeline.timm_backbones": "pipeline.models.timm_backbones", "pipeline.csra": "pipeline.models.csra",
    "pipeline.heads": "pipeline.models.heads", "pipeline.model": "pipeline.models.model",
    "pipeline.runtime": "pipeline.models.runtime", "pipeline.pretrained": "pipeline.weights.pretrained",
    "pipeline.checkpoint": "pipeline.weights.checkpoint", "pipeline.finetune": "pipeline.weights.finetune",
    "pipeline.export": "pipeline.weights.export", "pipeline.dataset": "pipeline.data.dataset",
    "pipeline.dataset_table": "pipeline.data.dataset_table", "pipeline.classes": "pipeline.data.classes",
    "pipeline.records": "pipeline.data.records", "pipeline.labels": "pipeline.data.labels",
    "pipeline.splits": "pipeline.data.splits", "pipeline.transforms": "pipeline.data.transforms",
    "pipeline.imagefolder": "pipeline.data.imagefolder", "pipeline.losses": "pipeline.training.losses",
    "pipeline.optim": "pipeline.training.optim", "pipeline.recipes": "pipeline.training.recipes",
    "utils.options": "utils.configuration.options", "utils.config": "utils.configuration.config",
    "utils.cli": "utils.configuration.cli", "utils.train_options": "utils.configuration.train_options",
    "utils.entry": "utils.configuration.entry", "utils.run_folder": "utils.runs.run_folder",
    "utils.run_lock": "utils.runs.run_lock", "utils.run_record": "utils.runs.run_record",
    "utils.train_state": "utils.runs.train_state", "utils.loggers": "utils.runs.loggers",
    "utils.fileio": "utils.output.fileio", "utils.progress": "utils.output.progress",
    "utils.predictions": "utils.output.predictions", "utils.visualize": "utils.output.visualize",
    "utils.distributed": "utils.process.distributed", "utils.threads": "utils.process.threads",
    "utils.openmp_env": "utils.process.openmp_env", "utils.inference": "utils.process.inference",
}


PRODUCT = ("pipeline", "utils", "tools", "benchmarks")


def python_files(*folders):
    """The .py files of the product code under ``folders`` (of PRODUCT; "" for those and the top level),
    as paths relative to the repository (read from the tree: a checkout without git has them too)."""
    found = [f for f in os.listdir(ROOT) if f.endswith(".py")]
    for top in PRODUCT:
        for folder, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            found += [os.path.relpath(os.path.join(folder, f), ROOT) for f in files if f.endswith(".py")]
    return sorted(f for f in found if f.startswith(folders))


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_an_import_path_from_before_the_rooms_gives_the_module_itself(old):
    module = importlib.import_module(old)
    assert module is importlib.import_module(OLD_PATHS[old])
    assert module.__spec__.name == OLD_PATHS[old]  # its own spec, not the old path's


def test_old_paths_work_in_from_imports_too():
    from pipeline.csra import MultiHeadCSRA
    from pipeline.models import csra
    from utils import distributed as du
    from utils.cli import run_main
    from utils.configuration.entry import run_main as entry_run_main
    assert MultiHeadCSRA is csra.MultiHeadCSRA and du.rank() == 0 and run_main is entry_run_main


def test_no_folder_of_product_code_holds_more_than_8_modules():
    counts = {}
    for f in python_files("pipeline/", "utils/"):
        if not f.endswith("__init__.py"):
            counts[os.path.dirname(f)] = counts.get(os.path.dirname(f), 0) + 1
    assert counts and max(counts.values()) <= 8, counts


def imported_modules(path):
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module


def test_the_library_imports_nothing_above_it():
    above = ("utils", "trainer", "engine", "main", "val", "demo", "export", "tools", "benchmarks")
    offenders = [f"{f}: {m}" for f in python_files("pipeline/") for m in imported_modules(f)
                 if m.split(".")[0] in above]
    assert offenders == []


def test_nothing_outside_the_tests_puts_a_folder_on_sys_path():
    files = python_files("")
    offenders = [f for f in files if "sys.path.insert" in open(os.path.join(ROOT, f), encoding="utf-8").read()
                 or "sys.path.append" in open(os.path.join(ROOT, f), encoding="utf-8").read()]
    assert len(files) > 50 and offenders == []


def test_the_package_declares_the_requirements_and_installs_from_the_first_readme_command():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    assert lines[-1] == "-e ." and sorted(project["project"]["dependencies"]) == sorted(lines[:-1])
    assert set(project["project"]["optional-dependencies"]) == {"timm", "submitit", "mlflow", "onnx"}
    assert project["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]
