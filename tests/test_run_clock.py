"""The start-up ETA (utils.output.progress.RunClock) and its warning for a run of more than a few hours, on a fake
clock."""
import pytest

from utils.output.progress import RankZero, RunClock


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.mark.parametrize("device,where", [(None, "or a GPU"), ("cpu", "or a GPU"),
                                          ("cuda", "or more GPUs (torchrun)")])
def test_the_start_up_eta_warns_when_the_run_will_take_more_than_3_hours(device, where):
    clock = FakeClock()
    run = RunClock(0, 30, 1000, 0, device=device, now=clock)  # 30,000 steps
    assert run.after_step(9) is None
    clock.t += 10 * 0.37  # 0.37 s a step: 29,990 more steps, 3:04:56
    lines = run.after_step(10).splitlines()
    assert lines[0].startswith("ETA for the whole run: about 3:04:56 of training")
    assert lines[1] == ("warning: over 3 hours; to go faster: a smaller --img_size or --model, fewer --total_epoch, "
                        + where)
    assert run.after_step(20) is None  # said once


def test_the_start_up_eta_of_a_run_under_3_hours_is_one_line():
    clock = FakeClock()
    run = RunClock(0, 30, 1000, 0, now=clock)
    clock.t += 10 * 0.36  # 2:59:56
    assert run.after_step(10) == ("ETA for the whole run: about 2:59:56 of training (measured on the first 10 steps; "
                                  "evaluation comes on top)")
    resumed = RunClock(29, 30, 1000, 500, now=clock)  # resumed half-way through its last epoch: 490 steps left
    clock.t += 10 * 10.0
    text = resumed.after_step(10)  # 10 s a step would warn for a whole run; not for what is left of this one
    assert text.startswith("ETA for the whole run: about 1:21:40 of training") and "\n" not in text


def test_rank_zero_prints_and_writes_and_the_other_ranks_do_neither(capsys):
    calls = []
    for on in (True, False):
        out = RankZero(on)
        out.say(f"line of rank {'0' if on else '1'}", None, "")
        out.do(calls.append, on)
    assert capsys.readouterr().out == "line of rank 0\n"
    assert calls == [True]
