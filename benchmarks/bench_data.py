"""Data pipeline throughput at 448 px with the training transforms, one worker (the main process).

Ours: PIL decode (JPEG draft when the image is much larger), crop+resize in one PIL call, flip,
uint8 tensor (normalised later on the device). Reference: the plain path of the authors' code,
PIL -> torchvision RandomHorizontalFlip + RandomResizedCrop -> ToTensor (float32), same images, same run.
Also ours with the strong recipe's augmentation (RandAugment + Cutout 0.5 on the 8-bit image) and the
fraction of the plain images/s it keeps.

    python benchmarks/bench_data.py [--n 200] [--size 500x375] [--img_size 448]
    python benchmarks/bench_data.py --quick       # 20 images: the same table in seconds

Full runtime on a 2-core CPU: about a minute (200 VOC-sized JPEGs, best of 3 per path).
"""
from __future__ import annotations

import json
import os
import tempfile
import time

import utils.process.openmp_env  # noqa: F401  (first: it configures OpenMP before torch loads it)

from utils.configuration.entry import ScriptParser

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

from pipeline.data.dataset import ImageTransform, MultiLabelDataset
from pipeline.models.runtime import cpu_has_native_bf16, to_model_input


def make_images(folder: str, n: int, size) -> list:
    rng = np.random.default_rng(0)
    paths = []
    base = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    for i in range(n):
        arr = np.asarray(Image.fromarray(np.roll(base, i, axis=1)).resize(size, Image.BICUBIC))
        noisy = np.clip(arr.astype(np.int16) + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
        p = os.path.join(folder, f"{i:05d}.jpg")
        Image.fromarray(noisy).save(p, quality=90)
        paths.append(p)
    return paths


class Reference(torch.utils.data.Dataset):
    def __init__(self, paths, img_size):
        self.paths = paths
        self.t = T.Compose([T.RandomHorizontalFlip(), T.RandomResizedCrop(img_size, scale=(0.7, 1.0)), T.ToTensor()])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.t(Image.open(self.paths[i]).convert("RGB"))


def throughput(fn, n: int, rounds: int = 3) -> float:
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main() -> None:
    p = ScriptParser(description=__doc__)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--size", default="500x375", help="source image size WxH (VOC-like by default)")
    p.add_argument("--img_size", type=int, default=448)
    p.add_argument("--quick", action="store_true", help="20 images: checks the script and its output shape")
    a = p.parse_args()
    if a.quick:
        a.n = min(a.n, 20)
    size = tuple(int(v) for v in a.size.split("x"))
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(tmp, a.n, size)
        json_path = os.path.join(tmp, "d.json")
        with open(json_path, "w") as f:
            json.dump([{"img_path": q, "target": [1, 0]} for q in paths], f)
        ours = MultiLabelDataset(json_path, ImageTransform(a.img_size, train=True), 2)
        ref = Reference(paths, a.img_size)
        strong = MultiLabelDataset(json_path, ImageTransform(a.img_size, train=True, randaugment=True, cutout=0.5), 2)
        r_ours = throughput(lambda i: ours[(i, i)], a.n)
        r_strong = throughput(lambda i: strong[(i, i)], a.n)
        r_ref = throughput(lambda i: ref[i], a.n)
        sample_ours = ours[(0, 0)][0]
        sample_ref = ref[0]
        batch = torch.stack([ours[(i, i)][0] for i in range(16)])
        t0 = time.perf_counter()
        for _ in range(10):
            to_model_input(batch, (0, 0, 0), (1, 1, 1), torch.device("cpu"))
        per_img_norm = (time.perf_counter() - t0) / 160
    print(f"{a.n} JPEGs of {size[0]}x{size[1]}, training transforms to {a.img_size} px, one worker, best of 3; "
          f"CPU native bf16: {cpu_has_native_bf16()}, {os.cpu_count()} cores")
    print(f"{'loader':28s}{'img/s':>9s}{'bytes/sample':>14s}")
    print(f"{'ours (uint8 out)':28s}{r_ours:9.1f}{sample_ours.numel() * sample_ours.element_size():14d}")
    print(f"{'ours + RandAugment + Cutout':28s}{r_strong:9.1f}{sample_ours.numel() * sample_ours.element_size():14d}")
    print(f"{'reference (PIL->ToTensor)':28s}{r_ref:9.1f}{sample_ref.numel() * sample_ref.element_size():14d}")
    print(f"ratio ours/reference: x{r_ours / r_ref:.2f}")
    print(f"RandAugment + Cutout keep {100 * r_strong / r_ours:.0f}% of ours' images/s (goal: at least 70%)")
    print(f"device-side float conversion (here on CPU): {1e3 * per_img_norm:.3f} ms/img "
          f"(ours incl. it: {1 / (1 / r_ours + per_img_norm):.1f} img/s)")


if __name__ == "__main__":
    main()
