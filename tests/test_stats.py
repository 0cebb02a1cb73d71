"""records/stats.py against reference numbers.

Every reference value below was computed with scipy 1.17.1 (numpy 2.4.6): scipy.stats.t.sf, scipy.stats.ttest_1samp
and scipy.stats.ttest_ind(equal_var=False), and hard-coded here so the suite does not need scipy. The paired t-test's
references (what scipy.stats.ttest_rel(a, b) returns) were derived by hand: t from the exact differences (fractions),
p from the closed forms of Student's t for df 1 to 4 (PAIRED_REFERENCE), since scipy was not at hand.
"""

import math

import pytest

from records.stats import (mean_std, one_sample_t_test, paired_t_test, pairs_needed, runs_needed, student_t_sf,
                           welch_t_test)

REL = 1e-9

# (t, df, scipy.stats.t.sf(t, df))
T_SF_REFERENCE = [
    (0.7, 1, 0.30559988778578523),
    (-2.5, 1, 0.8788810584091566),
    (1.3, 2, 0.16162351590802015),
    (-0.4, 2, 0.6360827634879543),
    (1.7, 5.3, 0.07327593248215972),
    (2.1, 1000, 0.017989437155390985),
    (0.0, 7, 0.5),
    (-1.8, 12, 0.9514836610274355),
    (0.001, 4, 0.499625000078125),
    (40, 3, 1.7190340394579253e-05),
    (-40, 3, 0.9999828096596054),
    (40, 30, 6.863022597203209e-28),
    (200, 2, 1.2499531269530394e-05),
    (2.5, 1e6, 0.006209744751081627),
    (10, 1e6, 7.63930538408909e-24),
]

# Ten validation losses around 3.2775 (std ~0.0012) and five just under the 3.28 target.
VAL_LOSSES = [3.2777, 3.2773, 3.2785, 3.2777, 3.2767, 3.278, 3.2795, 3.2789, 3.2764, 3.2756]
VAL_LOSSES_CLOSE = [3.2801, 3.2789, 3.2796, 3.2779, 3.2804]
CORE_SCORES = [0.2616, 0.2642, 0.2595, 0.2655, 0.2573, 0.2614]
BASELINE_LOSSES = [3.2802, 3.2811, 3.2795, 3.2808, 3.2799]


@pytest.mark.parametrize("t, df, expected", T_SF_REFERENCE)
def test_student_t_sf_matches_scipy(t, df, expected):
    assert student_t_sf(t, df) == pytest.approx(expected, rel=REL, abs=0)


@pytest.mark.parametrize("t", [-30.0, -2.5, -0.3, 0.0, 1e-4, 0.7, 3.0, 12.0, 1e4])
def test_student_t_sf_closed_forms(t):
    # df=1 (Cauchy): 0.5 - atan(t)/pi = atan2(1, t)/pi.  df=2: 0.5 - t/(2 sqrt(t^2+2)) = 1/(s (s + t)), s = sqrt(t^2+2)
    # for t >= 0.  The rewritten forms avoid cancellation at large t.
    assert student_t_sf(t, 1) == pytest.approx(math.atan2(1.0, t) / math.pi, rel=REL, abs=0)
    assert student_t_sf(t, 1) == pytest.approx(0.5 - math.atan(t) / math.pi, rel=1e-6, abs=0)
    s = math.sqrt(t * t + 2)
    upper = 1 / (s * (s + abs(t)))
    assert student_t_sf(t, 2) == pytest.approx(upper if t >= 0 else 1 - upper, rel=REL, abs=0)
    assert student_t_sf(t, 2) == pytest.approx(0.5 - t / (2 * s), rel=1e-6, abs=0)


def test_student_t_sf_symmetry_and_limits():
    for df in (1, 3.7, 50, 1e6):
        assert student_t_sf(0.0, df) == 0.5
        assert student_t_sf(-1.3, df) == pytest.approx(1 - student_t_sf(1.3, df), rel=1e-12)
        assert student_t_sf(math.inf, df) == 0.0 and student_t_sf(-math.inf, df) == 1.0
    with pytest.raises(ValueError):
        student_t_sf(1.0, 0)


def test_mean_std():
    assert mean_std([2.0]) == (2.0, 0.0)
    mean, std = mean_std(VAL_LOSSES)
    assert mean == pytest.approx(3.27763, rel=1e-12)
    assert std == pytest.approx(0.0011842015594203032, rel=1e-12)  # numpy.std(ddof=1)


def test_one_sample_loss_clearly_below_target():
    result = one_sample_t_test(VAL_LOSSES, 3.28, "less")
    assert (result.n, result.df) == (10, 9)
    assert result.mean == pytest.approx(3.27763, rel=1e-12)
    assert result.std == pytest.approx(0.0011842015594203032, rel=1e-12)
    assert result.t == pytest.approx(-6.328819612657665, rel=REL)
    assert result.p_value == pytest.approx(6.812333019126468e-05, rel=REL)
    assert result.p_value < 0.01


def test_one_sample_loss_not_significantly_below_target():
    result = one_sample_t_test(VAL_LOSSES_CLOSE, 3.28, "less")
    assert result.t == pytest.approx(-1.3815352052469283, rel=REL)
    assert result.p_value == pytest.approx(0.11963329119274982, rel=REL)
    assert result.p_value > 0.01


def test_one_sample_core_above_target():
    greater = one_sample_t_test(CORE_SCORES, 0.256525, "greater")
    assert greater.t == pytest.approx(4.13432490495653, rel=REL)
    assert greater.p_value == pytest.approx(0.004523412668983367, rel=REL)
    less = one_sample_t_test(CORE_SCORES, 0.256525, "less")
    assert less.p_value == pytest.approx(0.9954765873310166, rel=REL)


def test_one_sample_edge_cases():
    with pytest.raises(ValueError, match="a t-test needs at least 2 runs"):
        one_sample_t_test([3.27], 3.28, "less")
    with pytest.raises(ValueError, match="alternative"):
        one_sample_t_test(VAL_LOSSES, 3.28, "two-sided")
    assert one_sample_t_test([3.27, 3.27, 3.27], 3.28, "less").p_value == 0.0
    assert one_sample_t_test([3.27, 3.27, 3.27], 3.28, "greater").p_value == 1.0
    assert one_sample_t_test([3.29, 3.29], 3.28, "less").p_value == 1.0
    same = one_sample_t_test([3.28, 3.28], 3.28, "less")
    assert (same.t, same.p_value) == (0.0, 1.0)


def test_welch_matches_scipy():
    result = welch_t_test(VAL_LOSSES, BASELINE_LOSSES)
    assert (result.n_a, result.n_b) == (10, 5)
    assert result.diff == pytest.approx(sum(BASELINE_LOSSES) / 5 - 3.27763, rel=1e-12)
    assert result.t == pytest.approx(-5.625937838054849, rel=REL)
    assert result.df == pytest.approx(12.710180221305498, rel=REL)
    assert result.p_two_sided == pytest.approx(8.985286770154796e-05, rel=REL)
    assert result.p_less == pytest.approx(4.492643385077398e-05, rel=REL)
    assert result.p_greater == pytest.approx(0.9999550735661492, rel=REL)


def test_welch_not_significant_matches_scipy():
    b = [3.2813, 3.2792, 3.2771, 3.2767, 3.2779, 3.2796]
    result = welch_t_test(VAL_LOSSES, b)
    assert result.t == pytest.approx(-1.2541557799448786, rel=REL)
    assert result.df == pytest.approx(7.855954005604207, rel=REL)
    assert result.p_two_sided == pytest.approx(0.24581504702170184, rel=REL)
    assert result.p_less == pytest.approx(0.12290752351085092, rel=REL)
    assert result.p_greater == pytest.approx(0.8770924764891491, rel=REL)


def test_welch_zero_variance():
    one_constant = welch_t_test(VAL_LOSSES, [3.28] * 4)  # reduces to the one-sample test, df = n_a - 1
    assert one_constant.df == pytest.approx(9.0, rel=1e-12)
    assert one_constant.p_two_sided == pytest.approx(0.00013624666038252936, rel=REL)
    assert one_constant.p_less == pytest.approx(6.812333019126468e-05, rel=REL)
    with pytest.raises(ValueError, match="both samples are constant"):  # no spread: no t, not t = -inf
        welch_t_test([3.27, 3.27], [3.28, 3.28, 3.28])
    with pytest.raises(ValueError, match="constant"):
        welch_t_test([3.28, 3.28], [3.28, 3.28])
    with pytest.raises(ValueError, match="a t-test needs at least 2 runs"):
        welch_t_test([3.28], VAL_LOSSES)


# (a, b, t, two-sided p) of scipy.stats.ttest_rel(a, b): t = mean(a - b) / (std(a - b, ddof=1) / sqrt(n)), and
# p = 2 P(T_{n-1} > |t|) by the closed forms, u = |t|:  df 1: 2 atan2(1, u) / pi;  df 2: 2 / (s (s + u)) with
# s = sqrt(u^2 + 2);  df 3: (2 / pi) (atan2(1, v) - v / (1 + v^2)) with v = u / sqrt(3);  df 4: 1 - x (3 - x^2) / 2
# with x = u / sqrt(u^2 + 4).
PAIRED_REFERENCE = [
    ([3.2811, 3.2795], [3.2764, 3.2769], 3.4761904761904763, 0.17832227547259108),
    # the cosine schedule: B - A = -0.0077, -0.0071, -0.0082 per seed over bases that spread more than that
    ([3.2851, 3.2790, 3.2905], [3.2774, 3.2719, 3.2823], 24.11055124460412, 0.0017158007604739416),
    ([3.2802, 3.2811, 3.2795, 3.2808], [3.2777, 3.2773, 3.2785, 3.2777], 4.363743063142783, 0.022249916853357858),
    ([3.2802, 3.2811, 3.2795, 3.2808, 3.2799], VAL_LOSSES_CLOSE, 1.3500247230326232, 0.24834372858223464),
    ([3.2764, 3.2756, 3.2780], [3.2791, 3.2770, 3.2795], -4.4692865530186845, 0.04659268555020157),
]


@pytest.mark.parametrize("a, b, t, p", PAIRED_REFERENCE)
def test_paired_t_test_matches_the_closed_forms_of_scipy_ttest_rel(a, b, t, p):
    result = paired_t_test(a, b)
    assert (result.n, result.df) == (len(a), len(a) - 1)
    assert result.diff == pytest.approx(sum(b) / len(b) - sum(a) / len(a), rel=1e-9)
    assert result.t == pytest.approx(t, rel=1e-9)
    assert result.p_two_sided == pytest.approx(p, rel=1e-9)


def test_paired_t_test_is_the_one_sample_test_of_the_differences():
    b = [x - 0.0004 + 0.0003 * math.sin(i) for i, x in enumerate(VAL_LOSSES)]
    paired = paired_t_test(VAL_LOSSES, b)
    differences = [y - x for x, y in zip(VAL_LOSSES, b)]
    one_sided = one_sample_t_test(differences, 0.0, "less")
    assert paired.t == pytest.approx(-one_sided.t, rel=1e-12) and paired.std_diff == pytest.approx(one_sided.std)
    assert paired.p_two_sided == pytest.approx(2 * one_sided.p_value, rel=1e-12)


def test_paired_finds_the_consistent_difference_that_welch_misses():
    a, b = PAIRED_REFERENCE[1][:2]  # the same seeds in both arms: each seed's base cancels in its difference
    assert paired_t_test(a, b).p_two_sided < 0.01 < welch_t_test(a, b).p_two_sided


def test_paired_t_test_refuses_unpaired_too_few_and_constant_differences():
    with pytest.raises(ValueError, match="needs pairs"):
        paired_t_test([3.28, 3.27], [3.28])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        paired_t_test([3.28], [3.27])
    with pytest.raises(ValueError, match="zero variance"):
        paired_t_test([3.0, 4.0, 5.0], [3.5, 4.5, 5.5])


def test_pairs_needed_by_hand():
    # differences -0.010 and -0.006: mean -0.008, std 0.002 sqrt(2), so t = 2 sqrt(2) sqrt(n).  n = 2: t = 4, df 1,
    # p = 2 atan2(1, 4) / pi = 0.156.  n = 3: t = sqrt(24), df 2, p = 2 / (sqrt(26) (sqrt(26) + sqrt(24))) = 0.0392.
    diff, std = mean_std([-0.010, -0.006])
    assert pairs_needed(diff, std, alpha=0.2) == 2
    assert pairs_needed(diff, std, alpha=0.05) == 3
    assert pairs_needed(diff, std, alpha=0.039) == 4
    assert pairs_needed(0.0, std, alpha=0.05) is None  # no difference: no number of seeds shows one
    assert pairs_needed(1e-9, 1.0, alpha=0.01, cap=50) is None
    with pytest.raises(ValueError, match="no spread"):
        pairs_needed(diff, 0.0, alpha=0.05)


def test_runs_needed_by_hand():
    # equal stds s and a difference 3 s: t = 3 sqrt(n / 2), df = 2 (n - 1).  n = 2: t = 3, df 2,
    # p = 1 - 3 / sqrt(11) = 0.0955.  n = 3: t = sqrt(13.5), df 4, x = t / sqrt(t^2 + 4),
    # p = 1 - x (3 - x^2) / 2 = 0.0214.
    assert runs_needed(3.0, 1.0, 1.0, alpha=0.1) == 2
    assert runs_needed(-3.0, 1.0, 1.0, alpha=0.05) == 3
    assert runs_needed(3.0, 1.0, 1.0, alpha=0.02) == 4
    assert runs_needed(0.0, 1.0, 1.0, alpha=0.05) is None
    with pytest.raises(ValueError, match="no spread"):
        runs_needed(1.0, 0.0, 0.0, alpha=0.05)
