"""leaderboards.stats against cases computed by hand: pairing by seed, mean ± std, the paired t-test, verdicts."""

import math

import pytest

from leaderboards.stats import format_delta, format_p, mean_std, paired, paired_ttest, verdict


def test_pairs_by_seed_not_by_position():
    a = {2: 90.0, 0: 80.0, 1: 85.0, 7: 50.0}
    b = {0: 79.0, 1: 86.0, 2: 88.0, 3: 70.0}
    p = paired(a, b)
    assert p.seeds == [0, 1, 2] and p.diffs == [1.0, -1.0, 2.0]
    assert p.unpaired == [3, 7]
    assert paired({0: 1.0, 1: float("nan")}, {0: 0.5, 1: 2.0}).seeds == [0]  # a NaN metric pairs with nothing


def test_mean_std_is_the_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    m, s = mean_std([5.0])
    assert m == 5.0 and math.isnan(s)
    assert all(math.isnan(v) for v in mean_std([]))


def test_t_statistic_and_p_value_match_the_closed_forms():
    # d = 1, 2, 3: mean 2, std 1, t = 2 / (1 / sqrt 3) = sqrt 12; with 2 degrees of freedom the t CDF is
    # 1/2 + t / (2 sqrt(2 + t²)), so the two-sided p is 1 - t / sqrt(2 + t²) = 1 - sqrt(6/7)
    t = paired_ttest([1.0, 2.0, 3.0])
    assert t.n == 3 and t.mean == 2.0 and t.std == 1.0
    assert t.t == pytest.approx(math.sqrt(12))
    assert t.p == pytest.approx(1 - math.sqrt(6 / 7), rel=1e-9)
    # n = 2 (1 degree of freedom, Cauchy): p = 1 - (2/π) atan|t|; d = 1, 3 gives t = 2 / (sqrt 2 / sqrt 2) = 2
    t2 = paired_ttest([1.0, 3.0])
    assert t2.t == pytest.approx(2.0) and t2.p == pytest.approx(1 - 2 / math.pi * math.atan(2.0), rel=1e-9)
    # the sign follows a - b, the p value does not
    neg = paired_ttest([-1.0, -2.0, -3.0])
    assert neg.t == pytest.approx(-math.sqrt(12)) and neg.p == pytest.approx(t.p)


def test_paired_test_from_maps_equals_test_on_differences():
    a, b = {0: 91.0, 1: 92.5, 2: 90.0}, {0: 90.0, 1: 90.5, 2: 87.0}
    assert paired_ttest(paired(a, b)) == paired_ttest([1.0, 2.0, 3.0])


def test_degenerate_cases_are_explicit():
    one = paired_ttest([0.4])
    assert one.n == 1 and one.mean == 0.4 and math.isnan(one.t) and math.isnan(one.p)
    assert paired_ttest([]).n == 0
    zero = paired_ttest([0.0, 0.0, 0.0])
    assert (zero.t, zero.p) == (0.0, 1.0)
    const = paired_ttest([0.5, 0.5, 0.5])
    assert const.t == math.inf and const.p == 0.0 and const.std == 0.0
    assert paired_ttest([-0.5, -0.5]).t == -math.inf


def test_verdict_only_below_alpha():
    strong = paired_ttest([1.0, 1.1, 0.9, 1.05, 0.95])  # p far below 0.05
    assert strong.p < 0.001
    assert verdict(strong, comparisons=36).word == "beats"
    assert verdict(strong, comparisons=36, higher_is_better=False).word == "loses"
    assert verdict(paired_ttest([-1.0, -1.1, -0.9]), 1).word == "loses"
    weak = paired_ttest([1.0, 2.0, 3.0])  # p = 0.074: a 2-std "win" of the old tables, not significant
    v = verdict(weak, comparisons=36)
    assert v.word == "no significant difference" and v.comparisons == 36
    assert v.expected_by_chance == pytest.approx(1.8)
    assert "one of 36 comparisons" in str(v) and "p = 0.074" in str(v)
    assert verdict(paired_ttest([3.0]), 4).word == "not tested"
    assert verdict(paired_ttest([0.0, 0.0, 0.0]), 4).word == "no significant difference"
    # the threshold itself: p just under alpha beats, p at alpha does not
    assert verdict(weak, 1, alpha=0.075).word == "beats" and verdict(weak, 1, alpha=weak.p).word != "beats"


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, None])
def test_verdict_needs_the_number_of_comparisons(bad):
    with pytest.raises(ValueError, match="comparisons"):
        verdict(paired_ttest([1.0, 2.0]), bad)


def test_formatting():
    assert format_p(0.0742) == "p = 0.074" and format_p(0.0001) == "p < 0.001" and format_p(math.nan) == "p n/a"
    assert format_delta(paired_ttest([1.0, 2.0, 3.0])) == "+2.00 ± 1.00 (p = 0.074)"
    assert format_delta(paired_ttest([0.25])) == "+0.25 ± n/a (p n/a)"
