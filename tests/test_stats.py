"""records/stats.py against reference numbers.

Every reference value below was computed with scipy 1.17.1 (numpy 2.4.6): scipy.stats.t.sf, scipy.stats.ttest_1samp
and scipy.stats.ttest_ind(equal_var=False), and hard-coded here so the suite does not need scipy.
"""

import math

import pytest

from records.stats import mean_std, one_sample_t_test, student_t_sf, welch_t_test

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
