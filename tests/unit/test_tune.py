"""The tuning search: the user's recipe (-10 % after OOM, +5 % after success), bisection once
bracketed, a stability run at the end — on simulated workloads with a known answer."""

from __future__ import annotations

import pytest

from kstap.tune import Step, tune


def workload(limit_rate: float):  # type: ignore[no-untyped-def]
    """OOM exactly above ``limit_rate``; peak memory proportional to the rate."""
    def trial(rate: float) -> tuple[bool, int]:
        return rate > limit_rate, int(rate * (100 << 20))
    return trial


@pytest.mark.parametrize("answer", [0.05, 0.37, 0.66, 0.93])
def test_converges_below_the_true_limit_within_tolerance(answer: float) -> None:
    result = tune(workload(answer), start=1.0, tolerance=0.02)
    assert result.converged and result.recommended is not None
    assert 0.9 * (answer - 0.025) <= result.recommended <= 0.9 * answer  # one -10 % step of headroom
    assert result.steps[-1].phase == "stability" and not result.steps[-1].oom


def test_follows_the_recipe_before_bracketing() -> None:
    seen: list[Step] = []
    tune(workload(0.5), start=1.0, on_step=seen.append)
    assert [s.phase for s in seen[:3]] == ["baseline", "lower", "lower"]
    assert seen[1].rate == pytest.approx(0.9) and seen[2].rate == pytest.approx(0.9 * 0.81)  # compounding
    raised: list[Step] = []
    tune(workload(0.5), start=0.4, on_step=raised.append)
    assert raised[1].phase == "raise" and raised[1].rate == pytest.approx(0.42)
    assert any(s.phase == "bisect" for s in raised)


def test_full_rate_that_fits_is_recommended_at_once() -> None:
    result = tune(workload(1.0), start=1.0)
    assert result.recommended == 1.0 and len(result.steps) == 2  # baseline + stability


def test_nothing_sustainable_is_reported() -> None:
    result = tune(workload(0.001), start=0.02, min_rate=0.01)
    assert result.recommended is None and not result.converged


def test_flaky_stability_run_steps_down() -> None:
    calls = {"n": 0}

    def trial(rate: float) -> tuple[bool, int]:
        calls["n"] += 1
        if rate > 0.5:
            return True, 0
        # the first stability run at the candidate fails once (a noisy workload)
        return (calls["n"] == 9 and rate > 0.45), 0

    result = tune(trial, start=1.0)
    assert result.converged and result.recommended is not None and result.recommended <= 0.5


@pytest.mark.parametrize(("budget", "message"), [("-5Mi", "bad size '-5Mi': sizes cannot be negative"),
                                                 ("1Ki", "--memory-budget 1 KiB is below the 32 MiB"),
                                                 ("0", "--memory-budget must be positive")])
def test_tune_refuses_absurd_budgets_before_any_trial(cli, tmp_path, budget: str, message: str) -> None:
    from tests.conftest import assert_two_line_error

    res = cli("tune", "--read", str(tmp_path / "x.pcapng"), "--memory-budget", budget)
    assert res.code == 2, res.err
    assert_two_line_error(res.err, message)


@pytest.mark.parametrize("budget", ["1Ki", "31Mi", "-1"])
def test_tap_refuses_a_memory_budget_it_cannot_keep(cli, tmp_path, budget: str) -> None:
    from tests.conftest import assert_two_line_error

    res = cli("tap", "--read", str(tmp_path / "x.pcapng"), "--mode", "auto", "--memory-budget", budget)
    assert res.code == 2
    assert_two_line_error(res.err, "bad size" if budget.startswith("-") else "--memory-budget")
