"""search.timeline: where a sweep's slot time went, from the trials' driver-side intervals."""

from __future__ import annotations

import pytest

from results.schema import SLOT_TIME_PARTS
from search.timeline import TrialTimeline, slot_shares, slot_time


def parts_sum(parts):
    return sum(parts[part] for part in SLOT_TIME_PARTS)


def test_idle_slots_before_between_and_after_trials():
    # 2 slots over [0, 100]: trial a 5-60 and c 62-90 on one slot, trial b 7-95 on the other.
    parts = slot_time(0.0, 100.0, 2, [(5.0, 60.0), (7.0, 95.0), (62.0, 90.0)], training_seconds=170.0)
    assert parts["fit"] == 200.0
    assert parts["before_first"] == pytest.approx(10.0)  # both slots idle until 5
    assert parts["between"] == pytest.approx(2.0 + 2.0 + 5.0)  # one slot 5-7, one 60-62, one 90-95
    assert parts["after_last"] == pytest.approx(10.0)  # both idle 95-100
    assert parts["training"] == pytest.approx(170.0)
    assert parts["in_trials"] == pytest.approx(200.0 - 10.0 - 9.0 - 10.0 - 170.0)
    assert parts_sum(parts) == pytest.approx(parts["fit"])
    assert sum(slot_shares(parts).values()) == pytest.approx(1.0)


def test_training_never_exceeds_the_time_trials_ran_and_spans_are_clipped_to_the_fit():
    parts = slot_time(10.0, 20.0, 1, [(5.0, 25.0)], training_seconds=50.0)
    assert parts["before_first"] == 0.0 and parts["after_last"] == 0.0 and parts["between"] == 0.0
    assert parts["training"] == pytest.approx(10.0) and parts["in_trials"] == 0.0


def test_a_fit_without_trials_was_idle_throughout():
    parts = slot_time(0.0, 4.0, 2, [], training_seconds=0.0)
    assert parts["before_first"] == 8.0 and parts_sum(parts) == parts["fit"] == 8.0


def test_a_trial_still_running_at_the_fit_end_ends_there():
    class Trial:
        def __init__(self, trial_id):
            self.trial_id = trial_id

    timeline = TrialTimeline()
    timeline.on_trial_start(0, [], Trial("a"))
    timeline.on_trial_start(0, [], Trial("b"))
    timeline.on_trial_complete(0, [], Trial("a"))
    end = timeline.started["b"] + 100.0
    intervals = dict(zip(("a", "b"), timeline.intervals(end), strict=True))
    assert intervals["a"][1] == timeline.ended["a"] and intervals["b"][1] == end
