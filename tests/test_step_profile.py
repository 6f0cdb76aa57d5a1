"""The step profile adds up: phases never nest, the remainder is `other`, the sum is the window."""

from __future__ import annotations

import json
import random

import pytest

from r1mega.training.step_profile import PHASES, ProfileLog, StepProfile, profile_keys


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt


def test_phases_and_the_remainder_sum_to_the_window():
    rng = random.Random(7)
    clock = FakeClock()
    prof = StepProfile(clock=clock)
    prof.begin()
    spent = {p: 0.0 for p in PHASES}
    untimed = 0.0
    for _ in range(40):
        gap = rng.uniform(0, 0.3)
        clock.advance(gap)
        untimed += gap
        name = rng.choice(PHASES)
        with prof.phase(name):
            dt = rng.uniform(0, 1)
            clock.advance(dt)
            spent[name] += dt
    times = prof.end()
    assert set(times) == set(profile_keys())
    for p in PHASES:
        assert times[f"time/{p}"] == pytest.approx(spent[p], abs=1e-9)
    assert times["time/other"] == pytest.approx(untimed, abs=1e-9)
    assert sum(times[k] for k in profile_keys() if k != "time/step") == pytest.approx(times["time/step"], abs=1e-9)


def test_nested_or_unknown_phases_are_refused_and_a_phase_body_error_still_counts():
    clock = FakeClock()
    prof = StepProfile(clock=clock)
    prof.begin()
    with pytest.raises(RuntimeError, match="never nest"):
        with prof.phase("generate"):
            with prof.phase("reward"):
                pass
    with pytest.raises(ValueError, match="unknown phase 'gen'"):
        with prof.phase("gen"):
            pass
    with pytest.raises(KeyError):
        with prof.phase("sync"):
            clock.advance(0.5)
            raise KeyError("boom")
    assert prof.end()["time/sync"] == pytest.approx(0.5)


def test_outside_a_window_nothing_is_recorded():
    prof = StepProfile()
    with prof.phase("eval"):  # e.g. the evaluation before the first step
        pass
    assert not prof.active
    with pytest.raises(RuntimeError, match="without begin"):
        prof.end()


def test_profile_log_writes_every_rank_and_drops_rows_after_a_resume_point(tmp_path):
    log = ProfileLog(tmp_path, enabled=True)
    clock = FakeClock()
    prof = StepProfile(clock=clock)
    for step in (1, 2, 3):
        prof.begin()
        with prof.phase("fwd_bwd"):
            clock.advance(0.25 * step)
        clock.advance(0.1)
        row = log.record(step, prof.end())
        assert row["time/step_max"] == row["time/step"] == pytest.approx(0.25 * step + 0.1)
    assert log.plot().is_file()
    resumed = ProfileLog(tmp_path, start_step=2, enabled=True)
    rows = [json.loads(x) for x in (tmp_path / "profile.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["rank"] == 0 for r in rows)
    assert len(resumed.rows) == 2
