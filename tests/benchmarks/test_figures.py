"""The arithmetic behind the end-to-end benchmark's figures, against hand-computed values."""

from __future__ import annotations

import pytest

from tests.support.benchmarks import load_script

fig = load_script("figures")


def test_rate_is_events_over_the_span() -> None:
    assert fig.rate(1000, 2.0, 6.0) == 250.0
    assert fig.rate(0, 1.0, 3.0) == 0.0


def test_rate_of_an_empty_or_reversed_span_is_none() -> None:
    assert fig.rate(1000, 5.0, 5.0) is None
    assert fig.rate(1000, 6.0, 5.0) is None


def test_rate_refuses_negative_events() -> None:
    with pytest.raises(ValueError):
        fig.rate(-1, 0.0, 1.0)


def test_nearest_rank_quantiles_of_one_to_hundred() -> None:
    samples = [float(i) for i in range(100, 0, -1)]  # unsorted on purpose
    assert fig.quantiles(samples, (0.5, 0.99, 1.0, 0.0)) == (50.0, 99.0, 100.0, 1.0)
    # 0.07 * 100 is 7.000000000000001 in floating point: still rank 7, not 8.
    assert fig.quantiles(samples, (0.07,)) == (7.0,)


def test_quantiles_are_samples_not_interpolations() -> None:
    # n = 4: p50 is rank ceil(2.0) = 2, p99 rank ceil(3.96) = 4, p25 rank 1, p26 rank 2.
    assert fig.quantiles([10.0, 40.0, 20.0, 30.0], (0.5, 0.99, 0.25, 0.26)) == (
        20.0, 40.0, 10.0, 20.0)
    assert fig.quantiles([3.5], (0.5, 0.99)) == (3.5, 3.5)


def test_quantiles_of_an_empty_sample_are_none() -> None:
    assert fig.quantiles([], (0.5, 0.99)) is None


def test_quantile_outside_zero_one_is_refused() -> None:
    with pytest.raises(ValueError):
        fig.quantiles([1.0], (99,))


def _poll(t: float, assigned: bool | None, committed: int = 0, done: bool = False,
          cpu: float | None = None) -> object:
    return fig.Poll(t0=t, t1=t + 0.5, assigned=assigned, committed=committed, done=done,
                    cpu_s=cpu)


def test_clock_runs_from_the_last_unassigned_poll_to_the_first_done_poll() -> None:
    # Polls at whole seconds, each answered half a second later. A system that commits
    # coarsely: nothing committed for two polls after its assignment, then most at once.
    # Its clock must start before the assignment (t0 = 1), not at the poll before its
    # first commit (t0 = 3).
    polls = [_poll(0, False, cpu=0.5), _poll(1, False, cpu=0.75),
             _poll(2, True, cpu=1.0), _poll(3, True, cpu=1.5),
             _poll(4, True, 6000, cpu=2.0), _poll(5, True, 10000, done=True, cpu=2.75),
             _poll(6, True, 10000, done=True, cpu=3.0)]
    span = fig.throughput_span(polls)
    assert (span.start_s, span.end_s, span.events, span.complete) == (1, 5.5, 10000, True)
    assert span.seconds == 4.5
    assert span.events_per_s() == pytest.approx(2222.222, abs=1e-3)  # 10000 / 4.5
    assert span.cpu_s == 2.0  # 2.75 - 0.75
    assert span.events_per_cpu_s() == 5000.0


def test_clock_of_a_cut_run_ends_at_the_last_poll() -> None:
    polls = [_poll(0, False), _poll(1, True, 100), _poll(2, True, 300)]
    span = fig.throughput_span(polls)
    assert (span.start_s, span.end_s, span.events, span.complete) == (0, 2.5, 300, False)
    assert span.cpu_s is None and span.events_per_cpu_s() is None


def test_clock_when_the_first_poll_already_sees_an_assignment() -> None:
    span = fig.throughput_span([_poll(3, True, 50), _poll(4, True, 80, done=True)])
    assert (span.start_s, span.end_s, span.events) == (3, 4.5, 80)


def test_a_poll_that_could_not_tell_does_not_start_the_clock() -> None:
    # The group could not be described at t = 2: the system may have been consuming then.
    polls = [_poll(1, False), _poll(2, None), _poll(3, True, 100, done=True)]
    span = fig.throughput_span(polls)
    assert (span.start_s, span.end_s) == (1, 3.5)


def test_no_clock_for_a_system_never_assigned() -> None:
    assert fig.throughput_span([_poll(0, False), _poll(1, False)]) is None


def test_standby_lag_is_records_behind_and_the_age_of_its_view() -> None:
    f = load_script("figures")
    S = f.StandbySample
    samples = [S(0.0, 10, 9), S(1.0, 20, 9), S(2.0, 30, 19), S(3.0, 30, 29), S(4.0, 40, 25)]
    assert f.standby_lags(samples) == [
        (0, 0.0),  # caught up
        (10, 1.0),  # holds offset 9: the changelog last ended there at 0 s
        (10, 1.0),  # holds 19: the changelog ended at 19 at 1 s
        (0, 0.0),
        (14, 3.0),  # holds 25: the changelog was past it at 2 and 3 s, at 19 at 1 s
    ]


def test_standby_lag_before_any_caught_up_sample_counts_from_the_first() -> None:
    f = load_script("figures")
    S = f.StandbySample
    assert f.standby_lags([S(5.0, 100, -1), S(7.5, 200, 50)]) == [(100, 0.0), (149, 2.5)]
    with pytest.raises(ValueError, match="time order"):
        f.standby_lags([S(2.0, 1, 0), S(1.0, 1, 0)])


def test_first_stamps_keep_the_earliest_record_per_message() -> None:
    # m1 written again later (a retried batch), m2 once; a line without an id is ignored
    assert fig.first_stamps([("m1", 120), ("m2", 130), ("m1", 110), (None, 5)]) == {
        "m1": 110, "m2": 130}


def test_hop_delays_per_hop_and_over_the_whole_chain() -> None:
    stamps = {
        "input": {"a": 1000, "b": 2000, "c": 3000},
        "identity": {"a": 1010, "b": 2030, "c": 3005},
        "leads": {"a": 1050, "b": 2040},  # c not stitched yet
        "routing": {"b": 2100},  # only b raised an alert
    }
    d = fig.hop_delays(stamps, ["input", "identity", "leads", "routing"])
    assert d["input>identity"] == [10.0, 30.0, 5.0]  # a, b, c (by id)
    assert d["identity>leads"] == [40.0, 10.0]
    assert d["leads>routing"] == [60.0]
    # starred hops and the whole: only b, seen at every stage, and they add up
    assert d["input>identity*"] == [30.0] and d["identity>leads*"] == [10.0]
    assert d["leads>routing*"] == [60.0]
    assert d["input>routing"] == [100.0] == [30.0 + 10.0 + 60.0]


def test_hop_delays_need_two_stages() -> None:
    with pytest.raises(ValueError):
        fig.hop_delays({"input": {"a": 1}}, ["input"])
