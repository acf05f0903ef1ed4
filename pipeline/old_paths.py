"""The import paths modules had before they moved into rooms (``pipeline.csra`` is ``pipeline.models.csra``
now, ``utils.cli`` is ``utils.configuration.cli``): a script that imports an old path gets the module at its
new path, the same object (so what it patches is what runs). ``pipeline/__init__.py`` and ``utils/__init__.py``
name their rooms here; nothing is imported until a script asks for an old path."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Dict, Sequence


class OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and hands out the module at the new one."""

    def __init__(self, moved: Dict[str, str]):
        self.moved = moved          # old name -> new name
        self.own_specs: Dict[str, object] = {}

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in self.moved else None

    def create_module(self, spec) -> ModuleType:
        module = importlib.import_module(self.moved[spec.name])
        self.own_specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.own_specs[module.__name__]  # the import system gave it the old path's spec


def keep_old_paths(package: str, rooms: Dict[str, Sequence[str]]) -> Dict[str, str]:
    """Make ``package.<module>`` import ``package.<room>.<module>`` for each module of each room; returns the
    old -> new names."""
    moved = {f"{package}.{m}": f"{package}.{room}.{m}" for room, modules in rooms.items() for m in modules}
    sys.meta_path.append(OldPaths(moved))
    return moved
