"""Confidence intervals and paired tests against hand-computed values."""

from __future__ import annotations

import math

import pytest

from orchestrator.report.stats import config_label, mean_ci, paired_test, shared_seeds, varying_columns


def test_mean_ci_hand_computed() -> None:
    # sd([1, 2, 3]) = 1; t(0.975, 2) = 4.302653; half-width = 4.302653 / sqrt(3) = 2.484138
    mean, half, n = mean_ci([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(2.4841377, abs=1e-6)


def test_mean_ci_two_values_and_confidence() -> None:
    # [1, 3]: sd = sqrt(2); t(0.975, 1) = 12.706205; half = 12.706205 * sqrt(2) / sqrt(2)
    assert mean_ci([1.0, 3.0])[1] == pytest.approx(12.7062047, abs=1e-6)
    # 90%: t(0.95, 2) = 2.919986
    assert mean_ci([1.0, 2.0, 3.0], confidence=0.90)[1] == pytest.approx(2.919986 / math.sqrt(3), abs=1e-6)


def test_mean_ci_small_and_non_finite() -> None:
    assert mean_ci([4.5])[0] == 4.5 and math.isnan(mean_ci([4.5])[1]) and mean_ci([4.5])[2] == 1
    mean, half, n = mean_ci([])
    assert n == 0 and math.isnan(mean) and math.isnan(half)
    # NaN (a diverged run) and None are dropped, not propagated
    assert mean_ci([1.0, float("nan"), None, 2.0, 3.0, float("inf")])[:1] == (2.0,)
    assert mean_ci([1.0, float("nan"), None, 2.0, 3.0])[2] == 3


def test_paired_test_hand_computed() -> None:
    a = {0: 2.0, 1: 3.0, 2: 5.0, 3: 9.9}  # seed 3 has no partner and is ignored
    b = {0: 1.0, 1: 2.0, 2: 3.0, 4: 0.0}
    res = paired_test(a, b)
    assert res is not None
    # differences 1, 1, 2: mean 4/3, sd 0.57735, t = (4/3) / (0.57735 / sqrt 3) = 4.0, p = 0.057191
    assert res.n == 3 and res.seeds == (0, 1, 2)
    assert res.mean_diff == pytest.approx(4 / 3)
    assert res.t == pytest.approx(4.0)
    assert res.p == pytest.approx(0.0571910, abs=1e-6)
    assert res.ci_half_width == pytest.approx(4.302653 * 0.5773503 / math.sqrt(3), abs=1e-5)
    assert res.note is None


def test_paired_test_needs_two_shared_finite_seeds() -> None:
    assert paired_test({0: 1.0, 1: 2.0}, {0: 1.5, 2: 3.0}) is None
    assert paired_test({0: 1.0, 1: float("nan")}, {0: 1.5, 1: 2.0}) is None
    assert shared_seeds({0: 1.0, 1: float("nan"), 2: 3.0}, {0: 1.0, 1: 1.0, 2: 2.0}) == [0, 2]


def test_paired_test_identical_differences_is_undefined_not_infinite() -> None:
    res = paired_test({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0})
    assert res is not None and res.mean_diff == pytest.approx(1.0)
    assert math.isnan(res.t) and math.isnan(res.p) and "same difference" in res.note


def test_varying_columns_and_labels() -> None:
    rows = [
        {"model.cell": "gru", "train.lr": 0.002, "train.x": float("nan")},
        {"model.cell": "lstm", "train.lr": 0.002, "train.x": float("nan")},
    ]
    varying = varying_columns(rows, ["model.cell", "train.lr", "train.x"])
    assert varying == ["model.cell"]  # NaN == NaN for this purpose
    assert config_label(rows[0], varying) == "model.cell=gru"
    assert config_label(rows[0], []) == "all trials"
