"""Dependency-free statistics for speedrun records: Student's t tail; one-sample, Welch and paired t-tests (pinned to
scipy); how many runs a difference would need."""

import math
import statistics
from dataclasses import dataclass


def _betacf(a, b, x):
    """Continued fraction of the incomplete beta function (Numerical Recipes betacf, modified Lentz)."""
    tiny, eps = 1e-300, 1e-16
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    h = d = 1.0 / (d if abs(d) > tiny else tiny)
    for m in range(1, 100_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def _log_gamma_ratio(a):
    """log(Gamma(a + 1/2) / Gamma(a)), asymptotic series for large a (where lgamma differences cancel)."""
    if a < 20:
        return math.lgamma(a + 0.5) - math.lgamma(a)
    u = 1.0 / a
    # Bernoulli-polynomial Stirling series: sum over k of (2^(1-2k) - 2) B_2k / (2k (2k-1) a^(2k-1)).
    return 0.5 * math.log(a) - u / 8 + u ** 3 / 192 - u ** 5 / 640 + 17 * u ** 7 / 14336 - 31 * u ** 9 / 18432


def student_t_sf(t, df):
    """P(T > t) for Student's t with df > 0 degrees of freedom (df may be non-integer)."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isnan(t):
        return math.nan
    if t < 0:
        return 1.0 - student_t_sf(-t, df)
    if t == 0:
        return 0.5
    if math.isinf(t):
        return 0.0
    # P(T > t) = I_x(df/2, 1/2) / 2 with x = df / (df + t^2); 1 - x = t^2 / (df + t^2) is computed directly.
    a, b = 0.5 * df, 0.5
    x, one_minus_x = df / (df + t * t), t * t / (df + t * t)
    log_front = _log_gamma_ratio(a) - math.lgamma(b) - a * math.log1p(t * t / df) + b * math.log(one_minus_x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        incomplete = front * _betacf(a, b, x) / a
    else:
        incomplete = 1.0 - front * _betacf(b, a, one_minus_x) / b
    return 0.5 * incomplete


def mean_std(values):
    """(mean, sample standard deviation with ddof=1) of 1 or more values; the std is 0.0 for a single value."""
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


@dataclass(frozen=True)
class OneSampleResult:
    """A one-sample t-test: n runs, their mean and sample std, the t statistic, df = n - 1, and the p-value."""
    n: int
    mean: float
    std: float
    t: float
    df: float
    p_value: float


def one_sample_t_test(values, target, alternative):
    """OneSampleResult testing mean(values) against target; alternative "less" (H1: mean < target) or "greater".

    With zero std, p is 0.0 if the mean is strictly on the H1 side, else 1.0 (t: +-inf, or 0.0 if mean == target).
    """
    if alternative not in ("less", "greater"):
        raise ValueError(f'alternative must be "less" or "greater", got {alternative!r}')
    if len(values) < 2:
        raise ValueError(f"a t-test needs at least 2 runs, got {len(values)}")
    n, (mean, std) = len(values), mean_std(values)
    if std == 0.0:
        t = 0.0 if mean == target else math.copysign(math.inf, mean - target)
        on_h1_side = mean < target if alternative == "less" else mean > target
        return OneSampleResult(n, mean, std, t, n - 1.0, 0.0 if on_h1_side else 1.0)
    t = (mean - target) / (std / math.sqrt(n))
    p_value = student_t_sf(-t, n - 1) if alternative == "less" else student_t_sf(t, n - 1)
    return OneSampleResult(n, mean, std, t, n - 1.0, p_value)


@dataclass(frozen=True)
class WelchResult:
    """Welch's t-test of a vs b: t = (mean_a - mean_b) / se, Welch-Satterthwaite df, diff = mean_b - mean_a,
    p_two_sided, p_less (H1: mean_a < mean_b) and p_greater (H1: mean_a > mean_b)."""
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    diff: float
    t: float
    df: float
    p_two_sided: float
    p_less: float
    p_greater: float


def welch_t_test(a, b):
    """WelchResult of Welch's unequal-variance t-test of mean(a) vs mean(b). Both samples constant raise
    ValueError: with no spread there is no standard error, and t = +-inf would claim certainty from no evidence."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a t-test needs at least 2 runs in each sample, got {len(a)} and {len(b)}")
    (mean_a, std_a), (mean_b, std_b) = mean_std(a), mean_std(b)
    n_a, n_b, diff = len(a), len(b), mean_b - mean_a
    var_a, var_b = std_a ** 2 / n_a, std_b ** 2 / n_b
    if var_a + var_b == 0.0:
        raise ValueError("both samples are constant (zero variance): the t-test is undefined")
    t = (mean_a - mean_b) / math.sqrt(var_a + var_b)
    df = (var_a + var_b) ** 2 / (var_a ** 2 / (n_a - 1) + var_b ** 2 / (n_b - 1))
    p_two_sided = min(1.0, 2.0 * student_t_sf(abs(t), df))
    return WelchResult(n_a, n_b, mean_a, mean_b, diff, t, df, p_two_sided, student_t_sf(-t, df), student_t_sf(t, df))


@dataclass(frozen=True)
class PairedResult:
    """A paired t-test of a vs b over n pairs (one per seed): the differences b - a have mean diff and sample std
    std_diff; t = mean(a - b) / (std_diff / sqrt(n)) (scipy.stats.ttest_rel(a, b)'s sign), df = n - 1."""
    n: int
    diff: float
    std_diff: float
    t: float
    df: float
    p_two_sided: float


def paired_t_test(a, b):
    """PairedResult of the two-sided paired t-test: a[i] and b[i] are one pair (the same seed in both arms). It is
    the one-sample t-test of the differences against 0, so the seed-to-seed spread that both arms share cancels.
    Constant differences raise ValueError, as constant samples do in welch_t_test."""
    if len(a) != len(b):
        raise ValueError(f"a paired t-test needs pairs, got {len(a)} and {len(b)} values")
    if len(a) < 2:
        raise ValueError(f"a paired t-test needs at least 2 pairs, got {len(a)}")
    n = len(a)
    diff, std_diff = mean_std([y - x for x, y in zip(a, b)])
    if std_diff == 0.0:
        raise ValueError("every difference is the same (zero variance): the t-test is undefined")
    t = -diff / (std_diff / math.sqrt(n))
    return PairedResult(n, diff, std_diff, t, n - 1.0, min(1.0, 2.0 * student_t_sf(abs(t), n - 1)))


def smallest_n(p_value_at, alpha, cap=1000):
    """The smallest n in 2..cap with p_value_at(n) < alpha, or None when even cap is not enough."""
    return next((n for n in range(2, cap + 1) if p_value_at(n) < alpha), None)


def pairs_needed(diff, std_diff, alpha, cap=1000):
    """Pairs a paired t-test needs to reach two-sided p < alpha if its differences kept this mean and std (a
    point estimate: at that n about half of such experiments would reach it); None beyond cap or with no diff."""
    if std_diff == 0.0:
        raise ValueError("no spread in the differences: any n would do, which says nothing")
    if diff == 0.0:
        return None
    effect = abs(diff) / std_diff
    return smallest_n(lambda n: 2.0 * student_t_sf(effect * math.sqrt(n), n - 1), alpha, cap)


def runs_needed(diff, std_a, std_b, alpha, cap=1000):
    """Runs per arm Welch's t-test needs to reach two-sided p < alpha if the means and stds stayed as observed
    (same caveat as pairs_needed); None beyond cap or with no diff."""
    var = std_a ** 2 + std_b ** 2  # n x the squared standard error, with n runs in each arm
    if var == 0.0:
        raise ValueError("no spread in either arm: any n would do, which says nothing")
    if diff == 0.0:
        return None
    df_per_run = var ** 2 / (std_a ** 4 + std_b ** 4)  # Welch-Satterthwaite df = (n - 1) x this
    return smallest_n(lambda n: 2.0 * student_t_sf(abs(diff) / math.sqrt(var / n), (n - 1) * df_per_run), alpha, cap)
