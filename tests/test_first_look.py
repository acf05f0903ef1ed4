"""What a newcomer sees: records that refuse contradicting flags in every script, a readable header,
the ETA on its own line, progress a few times an epoch, bars or plain lines by the terminal's width,
the best threshold named after evaluation, and report headings that say what their rows are."""
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest
from PIL import Image

import main as train_main
from conftest import ROOT
from helpers import run_py, tiny_demo, train_argv
from utils.output.run_header import HEADER_WIDTH
from utils.evaluation.html_report import ScoredImages, write_report
from utils.evaluation.metrics import evaluate
from utils.output import progress


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("first_look")
    files = tiny_demo(root / "data", num_train=16, num_test=8)
    out = train_main.train(train_main.get_args(train_argv(files, root / "run", "--total_epoch", "1")))
    return root, files, os.path.join(out["folder"], "best.pth")


@pytest.mark.parametrize("script,extra", [
    ("val.py", []), ("demo.py", ["--img_dir", "IMG"]), ("export.py", ["--format", "onnx", "--out", "OUT"]),
    ("tools/training_free_sweep.py", [])])
def test_a_dataset_flag_that_contradicts_the_record_stops_in_every_script(demo_run, tmp_path, script, extra):
    root, files, ckpt = demo_run
    extra = [str(root / "data") if a == "IMG" else str(tmp_path / "m.onnx") if a == "OUT" else a for a in extra]
    r = run_py(script, "--load_from", ckpt, "--dataset", "voc07", *extra)
    assert r.returncode == 1, r.stdout[-500:]
    line = r.stderr.strip().splitlines()[-1]
    assert "--dataset voc07 has 20 classes (aeroplane, bicycle, bird, ...)" in line
    assert "run record" in line and "says 6 (circle, square, triangle, ...)" in line
    assert not (tmp_path / "m.onnx").exists()


def test_the_header_is_a_short_block_that_explains_its_stars(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=4)  # 2 steps: 1 step at warm-up LR 0 is refused
    r = run_py("main.py", *train_argv(files, tmp_path / "run", "--total_epoch", "1", "--lr", "0.02"))
    assert r.returncode == 0, r.stderr[-2000:]
    head = re.split(r"\n(?:ETA for the whole run|epoch 1/1)", r.stdout)[0].splitlines()
    assert 5 <= len(head) <= 12 and all(len(ln) <= HEADER_WIDTH for ln in head), head
    assert [ln.split()[0] for ln in head if not ln.startswith(" ")] == ["model", "data", "test", "recipe", "runtime", "threads", "run"]
    assert any("lr 0.02*" in ln for ln in head)
    assert any("* = changed from --recipe paper by a flag or by the dataset's defaults" in ln for ln in head)
    assert not any(re.search(r"w_d$", ln) for ln in head)  # lists break between items, not inside one


def test_progress_is_printed_a_few_times_an_epoch(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=40, num_test=4)
    r = run_py("main.py", *train_argv(files, tmp_path / "run", "--total_epoch", "1", "--batch_size", "2"))
    assert r.returncode == 0, r.stderr[-2000:]
    steps = [int(m.group(1)) for m in re.finditer(r"^epoch 1/1 step (\d+)/20 loss ", r.stdout, re.M)]
    assert steps == [5, 10, 15, 20]  # --print_freq 100 > 20 steps: still every fifth of the epoch


def run_on_a_terminal(argv, columns, rows=40, timeout=240):
    """Run ``python main.py argv`` with stdout and stderr on a pseudo-terminal of the given size."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "main.py", *map(str, argv)], cwd=ROOT, stdout=slave, stderr=slave,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait()
    os.close(master)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")


def test_on_a_terminal_the_eta_has_its_own_line_and_a_0x0_terminal_gets_plain_lines(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=48, num_test=4)
    argv = train_argv(files, tmp_path / "run", "--total_epoch", "1", "--batch_size", "2")
    code, text = run_on_a_terminal(argv, columns=120)
    assert code == 0, text[-2000:]
    at = text.index("ETA for the whole run")
    assert text[at - 1] in "\r\n", repr(text[at - 60:at + 20])  # not glued to the end of the bar
    assert "it/s]" in text or "s/it]" in text  # there was a bar
    code, text = run_on_a_terminal(train_argv(files, tmp_path / "run0", "--total_epoch", "1", "--batch_size", "2"),
                                   columns=0, rows=0)
    assert code == 0, text[-2000:]
    assert re.search(r"^epoch 1/1 step 6/24 loss ", text.replace("\r\n", "\n"), re.M)  # plain lines instead


class FakeTerminal:
    """stderr as a terminal (its size is what os.get_terminal_size is patched to say)."""

    def isatty(self):
        return True

    def fileno(self):
        return 2


def test_a_terminal_without_width_is_not_a_terminal_for_bars(monkeypatch):
    monkeypatch.setattr(progress.sys, "stderr", FakeTerminal())
    monkeypatch.setattr(progress.os, "get_terminal_size", lambda fd: os.terminal_size((0, 0)))
    assert not progress.on_terminal()
    monkeypatch.setattr(progress.os, "get_terminal_size", lambda fd: os.terminal_size((120, 40)))
    assert progress.on_terminal()


def test_a_terminal_without_rows_is_not_a_terminal_for_bars(monkeypatch):
    monkeypatch.setattr(progress.sys, "stderr", FakeTerminal())
    for rows, bars in ((0, False), (2, False), (3, True), (40, True)):  # tqdm draws nothing at 0, "more hidden" at 2
        monkeypatch.setattr(progress.os, "get_terminal_size", lambda fd: os.terminal_size((120, rows)))
        assert progress.on_terminal() == bars, rows


def test_a_120x0_terminal_gets_plain_progress_lines(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=4)
    code, text = run_on_a_terminal(train_argv(files, tmp_path / "run", "--total_epoch", "1", "--batch_size", "2"),
                                   columns=120, rows=0)
    assert code == 0, text[-2000:]
    text = text.replace("\r\n", "\n")
    epoch = text[text.index("\nrun folder "):text.index("\nepoch 1 model: ")].split("\n")[2:]
    assert epoch and all(re.match(r"epoch 1/1 step \d+/8 loss ", ln) for ln in epoch), text[-2000:]  # not blank


def test_main_and_val_name_the_best_single_threshold(demo_run, tmp_path):
    root, files, ckpt = demo_run
    r = run_py("val.py", "--load_from", ckpt, "--save_scores", tmp_path / "s.json")
    assert r.returncode == 0, r.stderr[-2000:]
    import json
    data = json.loads((tmp_path / "s.json").read_text())
    scores = np.array([im["scores"] for im in data["images"]])
    targets = np.array([im["target"] for im in data["images"]])
    best = max((evaluate(scores, targets, threshold=t).overall["CF1"], -t) for t in np.round(np.arange(0.05, 0.951, 0.05), 2))
    m = re.search(r"^best single threshold for every class: ([0-9.]+)", r.stdout, re.M)
    assert m and float(m.group(1)) == pytest.approx(-best[1])
    assert "demo.py --thresholds" in r.stdout and "--report DIR" in r.stdout


def test_val_prints_clean_paths_for_a_folder_typed_with_a_slash(demo_run, tmp_path):
    root, files, ckpt = demo_run
    r = run_py("val.py", "--load_from", ckpt, "--report", f"{tmp_path / 'rep'}/")
    assert r.returncode == 0, r.stderr[-2000:]
    said = " ".join(r.stdout.split())  # (a long path goes on a line of its own: the report keeps under 100 columns)
    assert f"per-class thresholds for demo.py --thresholds: {tmp_path / 'rep' / 'thresholds.json'} " in said
    assert f"wrote {tmp_path / 'rep' / 'index.html'}" in r.stdout and "//" not in r.stdout
    assert (tmp_path / "rep" / "thresholds.json").is_file()


def test_report_headings_say_what_their_rows_are(tmp_path):
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0], [1, 1]])
    scores = np.array([[0.9, 0.2], [0.8, 0.6], [0.1, 0.7], [0.2, 0.3], [0.3, 0.1], [0.7, 0.9]])
    report = evaluate(scores, targets)
    scored = ScoredImages(scores, targets, [f"{i}.jpg" for i in range(6)], ["cat", "dog"])
    out = write_report(str(tmp_path / "rep"), scored, report,
                       info={"scores": "by hand"})
    page = open(out["index"]).read()
    cat = page[page.index("<h3>cat"):]
    cat = cat[:cat.index("</div><div class=cls>")] if "</div><div class=cls>" in cat else cat
    assert "Highest-scoring negatives: all 3 correct at 0.5 (no false positives)" in cat  # 0.3, 0.2, 0.1
    dog = page[page.index("<h3>dog"):]
    assert "Highest-scoring negatives: 1 false positive at 0.5, 2 correct" in dog  # 0.6 >= 0.5; 0.2, 0.1
    assert "Lowest-scoring positives: 1 false negative at 0.5, 2 correct" in dog  # 0.3 < 0.5; 0.7, 0.9


def test_plot_curves_tells_runs_apart_and_zooms_to_the_map(tmp_path):
    import json
    import matplotlib.pyplot as plt
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import plot_curves
    runs = []
    for name, amp, maps in (("a", "bf16", [98.6, 99.1]), ("b", "off", [98.9, 99.2])):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "args.json").write_text(json.dumps({"model": "small_cnn", "amp": "auto", "lr": 0.05,
                                                      "run_id": name, "output_dir": str(folder)}))
        (folder / "log.jsonl").write_text("".join(json.dumps({"epoch": e + 1, "train_loss": 0.5, "lr_backbone": 0.05,
                                                              "mAP": m, "amp": amp, "channels_last": True}) + "\n"
                                                  for e, m in enumerate(maps)))
        runs.append(str(folder))
    logs = [plot_curves.read_log(r) for r in runs]
    assert plot_curves.legend_labels(runs, logs) == ["a (precision bf16)", "b (precision float32)"]
    captured = {}
    real = plot_curves.zoom
    plot_curves.zoom = lambda ax, values: (real(ax, values), captured.update(ylim=ax.get_ylim()))
    try:
        plot_curves.plot(runs, str(tmp_path / "c.png"))
    finally:
        plot_curves.zoom = real
        plt.close("all")
    lo, hi = captured["ylim"]
    assert 98.0 < lo < 98.6 and 99.2 < hi <= 100.1  # the data's range, not 60-100


def test_a_closed_output_pipe_ends_quietly():
    proc = subprocess.Popen([sys.executable, "tools/list_backbones.py"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # as `| head -1` does once it has its line: here before the script writes anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_report_thumbnails_are_named_as_the_page_marks_them(tmp_path):
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0], [1, 1]])
    scores = np.array([[0.9, 0.2], [0.8, 0.6], [0.1, 0.7], [0.2, 0.3], [0.3, 0.1], [0.7, 0.9]])
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for i in range(6):
        paths.append(str(folder / f"{i}.png"))
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(paths[-1])
    out = write_report(str(tmp_path / "rep"), ScoredImages(scores, targets, paths, ["cat", "dog"]),
                       evaluate(scores, targets),
                       info={"scores": "by hand"})
    page = open(out["index"]).read()
    # cat: negatives 2 (0.1), 3 (0.2), 4 (0.3) all below 0.5; positives 0, 1, 5 all above: nothing wrong
    # dog: negative 1 scores 0.6 (a false positive), positive 3 scores 0.3 (a false negative)
    want = {"c000_correct_2.png", "c000_correct_3.png", "c000_correct_4.png", "c000_correct_0.png",
            "c000_correct_1.png", "c000_correct_5.png", "c001_fp_1.png", "c001_correct_0.png", "c001_correct_4.png",
            "c001_fn_3.png", "c001_correct_2.png", "c001_correct_5.png"}
    assert set(os.listdir(tmp_path / "rep" / "thumbs")) == want
    for name in want:
        figure = page[page.index(f'src="thumbs/{name}"'):].split("</div>")[0]
        assert ("<b>FP</b>" in figure) == ("_fp_" in name) and ("<b>FN</b>" in figure) == ("_fn_" in name)
        assert ("correct at 0.5" in figure) == ("_correct_" in name)
