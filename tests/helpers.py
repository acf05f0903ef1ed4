"""Small datasets and checkpoints made by the tests themselves, and running the entry scripts."""
import contextlib
import io
import os
import runpy
import subprocess
import sys

from conftest import ROOT


def tiny_demo(folder, num_train=48, num_test=24, size=32, seed=0):
    from utils.prepare.prepare_demo import generate_demo
    return generate_demo(str(folder), num_train=num_train, num_test=num_test, size=size, seed=seed, quiet=True)


def train_argv(files, out_dir, *extra):
    return ["--dataset", "demo", "--train_json", files["train"], "--test_json", files["test"],
            "--classes", files["classes"], "--img_size", "32", "--batch_size", "8", "--num_workers", "0",
            "--total_epoch", "2", "--warmup_epoch", "1", "--decay_every", "1", "--output_dir", str(out_dir),
            *extra]


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
    """Make main.py's criterion pass each loss through ``wrap(loss) -> loss`` (to record or poison it)."""
    import main as train_main
    real = train_main.make_criterion

    def make(*a, **k):
        crit = real(*a, **k)
        return lambda x, y: wrap(crit(x, y))
    monkeypatch.setattr(train_main, "make_criterion", make)
