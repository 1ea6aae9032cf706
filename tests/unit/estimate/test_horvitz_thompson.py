"""The Horvitz-Thompson estimator on hand-computed cases and on exhaustive small designs."""

from __future__ import annotations

import itertools
import math

import pytest

from kstap.estimate.horvitz_thompson import (
    Z95,
    FlowSample,
    HTSum,
    estimate_traffic,
    horvitz_thompson,
)


def test_full_sampling_is_exact_with_zero_variance() -> None:
    e = horvitz_thompson([(10, 1.0), (3, 1.0), (7, 1.0)])
    assert (e.observed, e.total, e.variance, e.std_error) == (20, 20, 0, 0)
    assert (e.low, e.high) == (20, 20)
    assert e.covers(20) and not e.covers(21)


def test_mixed_probabilities_by_hand() -> None:
    # x/p: 10/0.5 + 4/0.25 + 6/1 = 20 + 16 + 6 = 42
    # (1-p)x²/p²: 0.5·100/0.25 + 0.75·16/0.0625 + 0 = 200 + 192 = 392
    e = horvitz_thompson([(10, 0.5), (4, 0.25), (6, 1.0)])
    assert e.observed == 20
    assert e.total == pytest.approx(42)
    assert e.variance == pytest.approx(392)
    assert e.std_error == pytest.approx(math.sqrt(392))
    assert e.high == pytest.approx(42 + Z95 * math.sqrt(392))
    assert e.low == 20  # 42 - 38.8 = 3.2 is below what the capture holds: clipped to the observed total


def test_lower_bound_unclipped_when_above_observed() -> None:
    e = horvitz_thompson([(100, 0.1)] * 50)  # T̂ = 50,000, V̂ = 50·0.9·10⁶ = 4.5·10⁷
    assert e.total == pytest.approx(50_000)
    assert e.variance == pytest.approx(4.5e7)
    assert e.low == pytest.approx(50_000 - Z95 * math.sqrt(4.5e7))
    assert e.low > e.observed


def test_traffic_packets_bytes_and_flows() -> None:
    t = estimate_traffic([FlowSample(10, 1000, 0.5), FlowSample(4, 400, 0.25), FlowSample(6, 600, 1.0),
                          FlowSample(3, 180, 1.0, is_flow=False)])
    assert t.packets.total == pytest.approx(45)
    assert t.bytes.total == pytest.approx(2000 + 1600 + 600 + 180)
    assert t.bytes.variance == pytest.approx(392 * 100**2)
    # flows: Σ 1/p = 2 + 4 + 1 (the non-IP frames are not a flow); V̂ = 0.5/0.25 + 0.75/0.0625 = 14
    assert t.flows.observed == 3
    assert t.flows.total == pytest.approx(7)
    assert t.flows.variance == pytest.approx(14)


def test_empty_sample() -> None:
    t = estimate_traffic([])
    for e in (t.packets, t.bytes, t.flows):
        assert (e.observed, e.total, e.variance, e.low, e.high) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, math.nan])
def test_rejects_impossible_probabilities(p: float) -> None:
    with pytest.raises(ValueError):
        HTSum().add(1, p)


def test_as_dict() -> None:
    d = horvitz_thompson([(10, 0.5)]).as_dict()
    assert d == {"observed": 10, "estimate": 20, "variance": 200, "std_error": math.sqrt(200),
                 "ci95": [10, 20 + Z95 * math.sqrt(200)]}


@pytest.mark.parametrize("population", [
    [(10, 0.5), (4, 0.25), (6, 1.0), (1, 0.9)],
    [(1, 0.1), (1, 0.1), (50, 0.3), (2, 0.7), (9, 0.05)],
])
def test_unbiased_over_every_possible_sample(population: list[tuple[int, float]]) -> None:
    """Enumerate all 2ⁿ samples of a Poisson design: E[T̂] = T and E[V̂] = Var(T̂), exactly."""
    true_total = sum(x for x, _ in population)
    mean = mean_var_hat = second = 0.0
    for kept in itertools.product([False, True], repeat=len(population)):
        prob = math.prod(p if k else 1 - p for (_, p), k in zip(population, kept, strict=True))
        e = horvitz_thompson([fp for fp, k in zip(population, kept, strict=True) if k])
        mean += prob * e.total
        second += prob * e.total**2
        mean_var_hat += prob * e.variance
    assert mean == pytest.approx(true_total)
    assert mean_var_hat == pytest.approx(second - mean**2)
