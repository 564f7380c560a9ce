"""Where a sweep's trial slots spent its fit: training, or waiting for what.

``TrialTimeline`` records, on the driver, when each trial started and ended (Ray Tune's
``on_trial_start`` fires once the trial's worker is up and running it); ``slot_time`` turns that
into slot-seconds (``results.schema.SlotTime``). A slot is idle while fewer trials run than there
are slots: before the first trial starts (Ray Tune starting, trial processes starting and
importing torch), between trials, and after the last one ends (the budget's end, Ray Tune
stopping). Inside a running trial, the time its own clock (Ray's ``time_total_s``) does not count
is the reports' round trips and, for a trial the budget stopped, its work since the last report.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from ray import tune

from results.schema import SLOT_TIME_PARTS, SlotTime


class TrialTimeline(tune.Callback):
    """Each trial's driver-side start and end (``time.time()``), by trial id."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.started.setdefault(trial.trial_id, time.time())

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.ended.setdefault(trial.trial_id, time.time())

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.ended.setdefault(trial.trial_id, time.time())

    def intervals(self, fit_end: float) -> list[tuple[float, float]]:
        """(start, end) of every trial that started; one still running at the fit's end ends there."""
        return [(start, min(self.ended.get(trial_id, fit_end), fit_end)) for trial_id, start in self.started.items()]


def slot_time(
    fit_start: float, fit_end: float, slots: int, intervals: Iterable[tuple[float, float]], training_seconds: float
) -> SlotTime:
    """Slot-seconds of the fit ``[fit_start, fit_end]`` on ``slots`` slots: idle before the first
    trial, between trials and after the last (fewer trials running than slots), training (the
    trials' own clocks, ``training_seconds`` in all) and the rest, in running trials off their clocks."""
    spans = sorted((max(start, fit_start), max(min(end, fit_end), fit_start)) for start, end in intervals)
    total = slots * max(fit_end - fit_start, 0.0)
    if not spans:
        return SlotTime(slots=slots, fit=round(total, 1), training=0.0, in_trials=0.0,
                        before_first=round(total, 1), between=0.0, after_last=0.0)  # fmt: skip
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    first_start, last_end = spans[0][0], max(end for _, end in spans)
    between, running, clock = 0.0, 0, first_start
    for moment, change in events:
        between += max(0, slots - running) * (moment - clock)
        running, clock = running + change, moment
    before_first = slots * (first_start - fit_start)
    after_last = slots * (fit_end - last_end)
    training = min(training_seconds, total - before_first - between - after_last)
    in_trials = total - before_first - between - after_last - training
    return SlotTime(
        slots=slots, fit=round(total, 1), training=round(training, 1), in_trials=round(max(in_trials, 0.0), 1),
        before_first=round(before_first, 1), between=round(between, 1), after_last=round(after_last, 1),
    )  # fmt: skip


def slot_shares(slot_time: Mapping[str, Any]) -> dict[str, float]:
    """Each part of ``slot_time`` as a share of the fit's slot-seconds."""
    total = float(slot_time["fit"])
    return {part: float(slot_time[part]) / total if total > 0 else float("nan") for part in SLOT_TIME_PARTS}
