import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a fixed thread count for the runs made in this process: the scripts' adaptive choice (utils.process.threads) would
# otherwise follow the machine's load, and float results depend on the count (tests/test_threads.py tests it)
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                             else os.cpu_count() or 1))
sys.path.insert(0, ROOT)
# the scripts the tests start in a new interpreter (tools/, benchmarks/, utils/prepare/) import the checkout under
# test: where the project is installed (pip install -r requirements.txt) that is the installed one already, and
# this makes it so in an environment where it is not (or where another checkout is)
os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
SHARED_SAMPLES = os.path.join(ROOT, "..", "shared", "data", "voc_samples")
# six real VOC images with their labels, beside the repository in the development workplace only (a clone has none)
needs_voc_samples = pytest.mark.skipif(not os.path.isdir(SHARED_SAMPLES), reason=(
    "needs real VOC images in ../shared/data/voc_samples, which only the development workplace has (not a clone)"))


@pytest.fixture(autouse=True)
def _same_thread_count():
    """Each test starts with the process's thread count: a run made in-process sets torch's count
    (utils.process.threads), and float sums in later tests depend on it."""
    import torch

    count = torch.get_num_threads()
    yield
    torch.set_num_threads(count)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path):
    """Tests never download: any attempt fails loudly; torch's hub cache points at a temp folder."""
    import torch.hub

    def refuse(*a, **k):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    torch.hub.set_dir(str(tmp_path / "torch_home" / "hub"))
