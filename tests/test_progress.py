"""Progress: round k/N with elapsed time and ETA, a live bar where the output is a terminal."""

from __future__ import annotations

from helpers import plan_local, run_local

from fedper import progress
from fedper.progress import RunProgress, clock, eta


def test_clock_and_eta():
    assert clock(0) == "0:00" and clock(65) == "1:05" and clock(3725) == "1:02:05"
    assert eta(30.0, 3, 7) == "1:10"  # 10 s a step, 7 steps left
    assert eta(12.0, 0, 5) == "?"  # no pace before the first step


def test_a_resumed_run_counts_its_pace_from_its_own_start(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    tracker = RunProgress(num_rounds=10, first_round=5, live=False)
    now[0] += 40.0  # rounds 5 and 6 took 40 s
    assert tracker.note(6) == "elapsed 0:40, ETA 1:20"  # 4 rounds left at 20 s each


def test_a_terminal_gets_a_live_bar_with_round_elapsed_and_eta(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(progress, "is_terminal", lambda: True)
    run_local(plan_local(tmp_path))
    err = capsys.readouterr().err
    assert "round 2/2 " in err and "━" in err and "ETA" in err and "accuracy 0." in err


def test_no_live_bar_on_a_dumb_terminal(monkeypatch):
    monkeypatch.setenv("TERM", "dumb")
    assert not progress.is_terminal()
