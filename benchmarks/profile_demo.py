"""Where the README's first command spends its time: one epoch of the demo, split by component.

    python benchmarks/profile_demo.py [--out_dir /tmp/demo_profile]
    python benchmarks/profile_demo.py --quick    # 320 training images: the same table

Full runtime on a 2-core CPU: about a minute (one demo epoch of 2,000 images per timed part).

Each part is timed alone, in the same run, with the demo's settings (small_cnn, 64 px, batch 32):
data generation; one epoch of the loader with 2 workers (the old default) and in the main process
with decoded images cached (the demo's default now; second epoch, cache warm); the training step on
in-memory batches in plain float32 NCHW and in the runtime ``--amp auto`` picks here; evaluation of
the test set; the checkpoint writes of one epoch.
"""
from __future__ import annotations

import os
import tempfile
import time

import utils.process.openmp_env  # noqa: F401  (first: it configures OpenMP before torch loads it)

from utils.configuration.entry import ScriptParser

import torch

from engine import SeededShardSampler, make_loader, predict, train_step
from pipeline.data.dataset import ImageReading, ImageTransform, MultiLabelDataset
from pipeline.models.model import MultiLabelNet
from pipeline.models.runtime import Runtime, resolve_runtime
from utils.output.fileio import save_torch_atomic
from utils.prepare.prepare_demo import generate_demo
from utils.runs.train_state import TrainedObjects, save_train_state

CPU = torch.device("cpu")


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def loader_epoch(ds, workers: int, batch: int = 32) -> float:
    sampler = SeededShardSampler(len(ds), 0)
    sampler.set_epoch(1)
    loader = make_loader(ds, batch, workers, sampler, CPU)
    return timed(lambda: sum(1 for _ in loader))[0]


def step_rate(runtime: Runtime, batches) -> float:
    torch.manual_seed(0)
    model = runtime.prepare_model(MultiLabelNet("small_cnn", 6, img_size=64, pretrained="none")).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    crit = torch.nn.BCEWithLogitsLoss()
    for images, targets in batches[:3]:
        train_step(model, crit, opt, images, targets, runtime)
    t, _ = timed(lambda: [train_step(model, crit, opt, x, y, runtime) for x, y in batches])
    return sum(len(x) for x, _ in batches) / t


def main() -> None:
    p = ScriptParser(description=__doc__)
    p.add_argument("--out_dir", default=None)
    p.add_argument("--quick", action="store_true", help="320 training and 80 test images")
    a = p.parse_args()
    out = a.out_dir or tempfile.mkdtemp(prefix="demo_profile_")
    sizes = dict(num_train=320, num_test=80) if a.quick else {}
    t_gen, files = timed(lambda: generate_demo(out, quiet=True, **sizes))
    train_tf = ImageTransform(64, train=True)
    plain = MultiLabelDataset(files["train"], train_tf)
    cached = MultiLabelDataset(files["train"], train_tf, reading=ImageReading(cache=True))
    n = len(plain)
    t_load2 = loader_epoch(plain, 2)
    loader_epoch(cached, 0)  # fills the cache
    t_load0 = loader_epoch(cached, 0)
    sampler = SeededShardSampler(n, 0)
    batches = [(b[0], b[1]) for b, _ in make_loader(cached, 32, 0, sampler, CPU)]
    fp32 = Runtime(CPU, "off", False, (0.0,) * 3, (1.0,) * 3)
    auto = resolve_runtime(CPU, "small_cnn", "auto")
    r_fp32, r_auto = step_rate(fp32, batches), step_rate(auto, batches)
    test = MultiLabelDataset(files["test"], ImageTransform(64, train=False), reading=ImageReading(cache=True))
    model = auto.prepare_model(MultiLabelNet("small_cnn", 6, img_size=64, pretrained="none"))
    t_eval, _ = timed(lambda: predict(model, test, auto, batch_size=32, num_workers=0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ckpt = os.path.join(out, "ckpt")

    def writes():
        save_torch_atomic(model.state_dict(), os.path.join(ckpt, "epoch_1.pth"))
        save_torch_atomic(model.state_dict(), os.path.join(ckpt, "best.pth"))
        save_train_state(os.path.join(ckpt, "train_state.pth"), TrainedObjects(model, opt),
                         progress={"epoch": 1, "iter": 0, "best": {"mAP": 0}})
    t_write, _ = timed(writes)
    print(f"demo: {n} training images, {len(test)} test images, 64 px, batch 32, torch threads "
          f"{torch.get_num_threads()}; auto runtime here: {auto.describe()}")
    print(f"{'part':44s}{'seconds/epoch':>14s}{'img/s':>10s}")
    rows = [
        ("data generation (once per machine)", t_gen, None),
        ("loader, 2 workers, decode every epoch", t_load2, n / t_load2),
        ("loader, main process, decoded cache warm", t_load0, n / t_load0),
        ("training step, float32 NCHW", n / r_fp32, r_fp32),
        (f"training step, {auto.describe()}", n / r_auto, r_auto),
        ("evaluation of the test set (auto runtime)", t_eval, len(test) / t_eval),
        ("checkpoint writes (epoch, best, state)", t_write, None),
    ]
    for name, sec, rate in rows:
        print(f"{name:44s}{sec:14.3f}{(f'{rate:10.0f}' if rate else ''):>10s}")
    print(f"step speed-up of the auto runtime over float32 NCHW: x{r_auto / r_fp32:.2f}")


if __name__ == "__main__":
    main()
