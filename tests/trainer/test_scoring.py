"""Each metric against values computed by hand, and the bootstrap against a distribution with a known answer."""
import numpy as np
import pytest

from kubetune.trainer import scoring

# 3 classes; by hand: class 0 tp=2 fp=1 fn=1, class 1 tp=1 fp=1 fn=1, class 2 tp=1 fp=0 fn=0.
Y = np.array([0, 0, 0, 1, 1, 2])
P = np.array([0, 0, 1, 1, 0, 2])


def test_confusion_matrix():
    assert scoring.confusion_matrix(Y, P, 3).tolist() == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]


def test_accuracy():
    assert scoring.accuracy(Y, P) == pytest.approx(4 / 6)


def test_per_class_and_macro():
    pc = scoring.per_class(Y, P, 3)
    assert pc["precision"].tolist() == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert pc["recall"].tolist() == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert pc["f1"].tolist() == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert pc["support"].tolist() == [3, 2, 1]
    assert scoring.macro("f1", 3)(Y, P) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_class_never_predicted_counts_as_zero_not_nan():
    pc = scoring.per_class(np.array([0, 1, 2]), np.array([0, 0, 0]), 3)
    assert pc["precision"].tolist() == pytest.approx([1 / 3, 0.0, 0.0])
    assert pc["f1"].tolist() == pytest.approx([0.5, 0.0, 0.0])


def test_regression_metrics():
    y, p = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 2.0, 5.0])
    assert scoring.mse(y, p) == pytest.approx((0.25 + 0 + 1 + 1) / 4)
    assert scoring.mae(y, p) == pytest.approx((0.5 + 0 + 1 + 1) / 4)
    assert scoring.r2(y, p) == pytest.approx(1 - 2.25 / 5.0)
    assert scoring.r2(y, y) == 1.0


def test_token_weighted_loss_weights_by_tokens():
    # Two examples: 10 tokens summing to 20 (mean 2), 30 tokens summing to 30 (mean 1) -> 50/40.
    assert scoring.token_weighted_loss(np.array([20.0, 30.0]), np.array([10, 30])) == pytest.approx(1.25)


def test_majority_class():
    assert scoring.majority_class(np.array([2, 1, 2, 0, 2, 1])) == 2
    assert scoring.majority_class(np.array([1, 0])) == 0  # ties go to the lowest id


def test_bootstrap_of_a_mean_matches_the_normal_interval():
    rng = np.random.default_rng(1)
    x = rng.normal(10.0, 2.0, size=2000)
    ci = scoring.bootstrap(lambda a: float(a.mean()), x, resamples=2000, seed=3)
    half_width = 1.96 * 2.0 / np.sqrt(2000)  # ~0.0877
    assert ci.value == pytest.approx(x.mean())
    assert ci.high - ci.low == pytest.approx(2 * half_width, rel=0.15)
    assert ci.low < 10.0 < ci.high


def test_bootstrap_coverage_is_near_nominal():
    rng = np.random.default_rng(7)
    covered = sum(scoring.bootstrap(lambda a: float(a.mean()), rng.exponential(1.0, 200), resamples=300,
                                    seed=i).excludes(1.0) is False for i in range(200))
    assert 0.88 <= covered / 200 <= 0.99


def test_paired_difference_detects_a_real_improvement_and_not_a_fake_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 1000)
    base = np.zeros_like(y)                          # majority-ish baseline
    better = np.where(rng.random(1000) < 0.8, y, 0)  # right 80% of the time
    diff = scoring.paired_difference(scoring.accuracy, y, better, base)
    assert diff.value > 0 and diff.excludes(0.0)
    same = scoring.paired_difference(scoring.accuracy, y, base, base)
    assert same.value == 0 and not same.excludes(0.0)
