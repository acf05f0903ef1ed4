"""Small datasets and checkpoints made by the tests themselves, and running the entry scripts."""
import contextlib
import io
import os
import runpy
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from conftest import ROOT


def tiny_demo(folder, num_train=48, num_test=24, size=32, seed=0):
    from utils.prepare.prepare_demo import generate_demo
    return generate_demo(str(folder), num_train=num_train, num_test=num_test, size=size, seed=seed, quiet=True)


def touch_images(folder, image_ids):
    """Empty <id>.jpg files: the preparation scripts only check that a listed image is there."""
    os.makedirs(folder, exist_ok=True)
    for i in image_ids:
        open(os.path.join(folder, f"{i}.jpg"), "wb").close()


def write_openimages(root):
    """OpenImages' files in its own layout: 3 trainable classes (and one that is not), 2 train images, one
    validation and one test image, each image file there."""
    root.mkdir()
    (root / "oidv6-class-descriptions.csv").write_text(
        "LabelName,DisplayName\n/m/cat,Cat\n/m/dog,Dog\n/m/car,Car\n/m/old,Old class\n")
    (root / "oidv6-classes-trainable.txt").write_text("/m/dog\n/m/cat\n/m/car\n")
    head = "ImageID,Source,LabelName,Confidence\n"
    (root / "oidv6-train-annotations-human-imagelabels.csv").write_text(
        head + "bbb,verification,/m/cat,1\naaa,verification,/m/dog,0\naaa,crowdsource-verification,/m/cat,1\n"
        "bbb,verification,/m/old,1\nbbb,verification,/m/car,0\n")
    (root / "validation-annotations-human-imagelabels.csv").write_text(head + "vvv,verification,/m/car,1\n")
    (root / "test-annotations-human-imagelabels.csv").write_text(head + "ttt,verification,/m/dog,0\n")
    for split, ids in (("train", ("aaa", "bbb")), ("validation", ("vvv",)), ("test", ("ttt",))):
        touch_images(root / split, ids)


def write_nuswide(root):
    """NUS-WIDE's files in its own layout: 3 concepts, 3 train images (one missing from Flickr/), 1 test image."""
    (root / "ImageList").mkdir(parents=True)
    (root / "Groundtruth" / "TrainTestLabels").mkdir(parents=True)
    (root / "Concepts81.txt").write_text("animal\nbeach\nsky\n")
    (root / "ImageList" / "TrainImagelist.txt").write_text("actor\\0001_1.jpg\nactor\\0002_2.jpg\nbeach\\0003_3.jpg\n")
    (root / "ImageList" / "TestImagelist.txt").write_text("sky\\0004_4.jpg\n")
    train = {"animal": "1\n0\n0\n", "beach": "0\n0\n1\n", "sky": "1\n0\n1\n"}
    test = {"animal": "0\n", "beach": "0\n", "sky": "1\n"}
    for concept in train:
        (root / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_Train.txt").write_text(train[concept])
        (root / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_Test.txt").write_text(test[concept])
    for name in ("actor/0001_1.jpg", "beach/0003_3.jpg", "sky/0004_4.jpg"):  # 0002_2 is missing
        (root / "Flickr" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "Flickr" / name).write_bytes(b"")


def train_argv(files, out_dir, *extra, recipe="paper"):
    """main.py on a tiny_demo: 2 epochs; the paper's recipe with a 1-epoch warm-up and decay, or another
    recipe (named, with its own schedule)."""
    schedule = ["--warmup_epoch", "1", "--decay_every", "1"] if recipe == "paper" else ["--recipe", recipe]
    return ["--dataset", "demo", "--train_json", files["train"], "--test_json", files["test"],
            "--classes", files["classes"], "--img_size", "32", "--batch_size", "8", "--num_workers", "0",
            "--total_epoch", "2", *schedule, "--output_dir", str(out_dir), *extra]


def kill_mid_epoch(argv, state_path, epoch=1, min_iter=5, timeout=120, env=None):
    """Start ``python main.py argv`` and SIGKILL it once its training state shows ``min_iter`` finished
    iterations of epoch ``epoch + 1``. Returns (epoch, iteration) of the state it was killed after,
    or None when the run ended first."""
    import torch
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.Popen([sys.executable, "main.py", *map(str, argv)], cwd=ROOT, env=full_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    killed_at = None
    try:
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(state_path):
                try:
                    st = torch.load(state_path, weights_only=True)
                except Exception:  # caught mid-replace: read it again
                    continue
                if st["epoch"] == epoch and st["iter"] >= min_iter:
                    proc.send_signal(signal.SIGKILL)
                    killed_at = (st["epoch"], st["iter"])
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait()
    return killed_at


def run_in_process(script, *args, cwd=None):
    """``python script args`` in this process (no new interpreter to start: torch is imported once),
    with stdout, stderr and the exit status captured as a subprocess would report them."""
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    sys.argv = [script, *map(str, args)]
    os.chdir(cwd or ROOT)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    except SystemExit as e:
        if isinstance(e.code, int) or e.code is None:
            code = e.code or 0
        else:  # sys.exit("message"): Python prints it and exits 1
            err.write(f"{e.code}\n")
            code = 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())


def run_py(*args, timeout=300, env=None, fresh=False):
    """Run an entry script. In this process unless ``fresh`` (a new interpreter: needed for signals,
    torchrun, exact float comparisons with one thread, or checking which modules get imported)."""
    if not fresh and not env and args and str(args[0]).endswith(".py"):
        return run_in_process(*args)
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env=full_env)


def wrap_training_loss(monkeypatch, wrap):
    """Make the trainer's criterion pass each loss through ``wrap(loss) -> loss`` (to record or poison it)."""
    import trainer
    real = trainer.make_criterion

    def make(*a, **k):
        crit = real(*a, **k)
        return lambda x, y: wrap(crit(x, y))
    monkeypatch.setattr(trainer, "make_criterion", make)


def image_kinds(folder):
    """One image file of each kind (8-bit RGB, 16-bit, float, alpha, grayscale, palette, CMYK) in ``folder``,
    and the 8-bit RGB pixels each must give, computed here with numpy."""
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    gray_f = rng.random((20, 30), dtype=np.float32)
    rgba = np.dstack([rgb, rng.integers(0, 256, (20, 30), dtype=np.uint8)])
    gray8 = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(16)
    cmyk = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    expected = {}
    Image.fromarray(rgb).save(folder / "rgb8.png")
    expected["rgb8.png"] = rgb
    Image.fromarray(gray16).save(folder / "gray16.png")
    expected["gray16.png"] = np.repeat(np.rint(gray16 * (255 / 65535)).astype(np.uint8)[..., None], 3, axis=2)
    Image.fromarray(gray_f, mode="F").save(folder / "float.tif")
    expected["float.tif"] = np.repeat(np.rint(gray_f.astype(np.float64) * 255).astype(np.uint8)[..., None], 3, axis=2)
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    expected["alpha.png"] = rgb  # alpha dropped, as convert("RGB") drops it
    Image.fromarray(gray8, "L").save(folder / "gray8.png")
    expected["gray8.png"] = np.repeat(gray8[..., None], 3, axis=2)
    palette.save(folder / "palette.png")
    pal = np.array(palette.getpalette()[:48], dtype=np.uint8).reshape(16, 3)
    expected["palette.png"] = pal[np.asarray(palette)]
    Image.fromarray(cmyk, "CMYK").save(folder / "cmyk.tif")
    c, m, y, k = (cmyk[..., i].astype(np.int64) for i in range(4))
    expected["cmyk.tif"] = np.rint(np.stack([(255 - c) * (255 - k), (255 - m) * (255 - k), (255 - y) * (255 - k)],
                                            axis=2) / 255).astype(np.uint8)
    return expected
