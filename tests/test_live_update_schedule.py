"""The trail updater's schedule and its custom-directory watch (engine/processes/updater.py), with
real child processes forked as the sensor forks them and the clock passed in (no sleeps decide
anything): a scheduled update comes after the period plus at most 5 % jitter, an edit still in
progress is not built until it holds still, requests made while one runs are queued (one), and the
child's lines are relayed with their level and its failure given with its last complaint.
"""

from __future__ import annotations

import random
import sys
import time

from engine.processes.updater import CUSTOM, REQUESTED, SCHEDULED, UpdateSpec, Updater


def _succeeds(argv) -> int:
    print("ran with %s" % " ".join(argv))
    return 0


def _fails(argv) -> int:
    sys.stderr.write("[!] 2026-12-06 10:00:00 feed x: timed out\n")
    print("update FAILED: the build holds less than half the trails")
    return 1


class Lines(list):
    def notice(self, text):
        self.append(("i", text))

    def warn(self, text):
        self.append(("!", text))


def _finish(updater: Updater, now: float, limit_s: float = 60.0):
    """Ticks (at the given clock) until the running child ends; returns its Outcome. The real
    deadline only bounds a failing test."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        outcome = updater.tick(now)
        if outcome is not None:
            return outcome
        time.sleep(0.01)
    raise AssertionError("the update child never ended")


def test_a_scheduled_update_runs_after_the_period_plus_at_most_five_percent():
    lines = Lines()
    spec = UpdateSpec(_succeeds, ("trails", "update"), period_s=1000)
    updater = Updater(spec, lines.notice, lines.warn, now=0.0, rng=random.Random(7))
    assert 1000 <= updater.next_due <= 1050
    first_due = updater.next_due
    assert updater.tick(first_due - 0.001) is None and not updater.running
    assert updater.tick(first_due) is None and updater.running
    outcome = _finish(updater, first_due + 5)
    assert outcome.ok and outcome.trigger == SCHEDULED and not outcome.offline
    assert ("i", "trail update: ran with trails update") in lines
    # the next one counts from the end of this one
    assert first_due + 5 + 1000 <= updater.next_due <= first_due + 5 + 1050
    assert updater.successes == 1 and updater.failures == 0 and updater.last_success_unix > 0


def test_an_edit_in_progress_waits_until_it_holds_still_then_one_offline_update_runs(tmp_path):
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "mine.txt").write_text("first.org\n")
    lines = Lines()
    spec = UpdateSpec(_succeeds, ("trails", "update"), custom_dir=str(custom))
    updater = Updater(spec, lines.notice, lines.warn, now=0.0)
    assert updater.tick(15.0) is None and not updater.running          # nothing changed
    (custom / "mine.txt").write_text("first.org\nsecond.o")             # an editor half way
    assert updater.tick(30.0) is None and not updater.running          # seen; must hold still 5 s
    (custom / "mine.txt").write_text("first.org\nsecond.org\n")         # still changing 5 s later
    assert updater.tick(35.0) is None and not updater.running
    (custom / "other.md").write_text("not a trail file")                # not looked at
    assert updater.tick(40.0) is None and updater.running              # unchanged for 5 s: built
    outcome = _finish(updater, 41.0)
    assert outcome.ok and outcome.trigger == CUSTOM and outcome.offline
    assert ("i", "trail update: ran with trails update --offline") in lines
    assert updater.tick(55.0) is None and not updater.running          # the same state: no new update
    assert [t for _, t in lines].count("custom trails changed in %s: an offline update picks them up" % custom) == 1


def test_requests_while_one_runs_are_queued_once_and_a_failure_says_why():
    lines = Lines()
    spec = UpdateSpec(_fails, ("trails", "update"))
    updater = Updater(spec, lines.notice, lines.warn, now=0.0)
    assert updater.next_due is None                                    # no period: no schedule
    updater.request(now=1.0)
    assert updater.running
    updater.request(CUSTOM, offline=True, now=1.0)
    updater.request(now=1.0)                                           # an online one replaces it
    updater.request(now=1.0)
    outcome = _finish(updater, 2.0)
    assert not outcome.ok and outcome.trigger == REQUESTED
    assert outcome.why == "exit status 1: update FAILED: the build holds less than half the trails"
    assert ("!", "trail update: feed x: timed out") in lines
    assert updater.running                                             # the queued one started at once
    assert _finish(updater, 3.0).trigger == REQUESTED
    assert updater.tick(4.0) is None and not updater.running           # and only one was queued
    assert updater.failures == 2 and updater.last_failure_why.startswith("exit status 1")
