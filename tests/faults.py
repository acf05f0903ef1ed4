"""Fault injection for writers: a read-only folder and a full one. Real tmpfs mounts where the machine
allows it (a read-only mount refuses even root); elsewhere the same errors raised by patched writes."""
import builtins
import contextlib
import errno
import os
import subprocess

import pytest


def _mount(path, options) -> bool:
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@contextlib.contextmanager
def broken_dir(tmp_path, kind: str, monkeypatch=None):
    """A folder where every write fails: ``kind`` "readonly" (EROFS) or "full" (ENOSPC)."""
    path = tmp_path / f"{kind}_disk"
    path.mkdir()
    if _mount(path, "ro,size=64k" if kind == "readonly" else "size=16k"):
        try:
            if kind == "full":
                with contextlib.suppress(OSError), open(path / "filler", "wb") as f:
                    while True:
                        f.write(b"\0" * 4096)
                        f.flush()
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        return
    if monkeypatch is None:
        pytest.skip("cannot mount a tmpfs here (mounting needs root), and no monkeypatch to simulate one")
    code = errno.EROFS if kind == "readonly" else errno.ENOSPC
    root = str(path)
    real_open, real_makedirs = builtins.open, os.makedirs

    def inside(p) -> bool:
        return isinstance(p, (str, os.PathLike)) and os.path.abspath(os.fspath(p)).startswith(root)

    def guarded_open(file, mode="r", *a, **k):
        if inside(file) and any(c in mode for c in "wax+"):
            raise OSError(code, os.strerror(code), str(file))
        return real_open(file, mode, *a, **k)

    def guarded_makedirs(name, *a, **k):
        if inside(name) and os.path.abspath(name) != root:
            raise OSError(code, os.strerror(code), str(name))
        return real_makedirs(name, *a, **k)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "makedirs", guarded_makedirs)
    yield path
