"""python -m records compare: is arm B better than arm A in the metric, by how much, and how sure can we be?

An arm is one recipe (one code state, one set of settings) over several seeds: run folders (runs/<id>, with
results.json) or record folders (validated first). When both arms ran the same seeds, each seed's two runs are a
pair and the test is on the per-seed differences: what a seed does to both arms (its data order, its
initialization) cancels. Otherwise Welch's t-test, which must see the difference through that seed-to-seed spread.
The report leads with the metric; training time comes second, since it measures the machine and its load as much
as the recipe. An example and every refusal: records/README.md, "compare".

Nothing from a run is executed: results.json, the logs and git.diff are read as text.
"""

import os
from dataclasses import dataclass

from records import trust
from records.record import RecordError, parse_log, validate
from records.stats import mean_std, paired_t_test, pairs_needed, runs_needed, welch_t_test

# Settings that do not change what is computed, so an arm's runs may differ in them: train_gpt.py's
# RESUMABLE_CHANGES (what a resumed run may change: bookkeeping, logging, evaluation batching, compilation, the
# device, communication buckets, the AdamW kernel), the seed (what an arm varies, and what pairs the arms) and the
# preset (a name for overrides whose values are in the config and compared there). Data paths are compared: other
# paths may be other data.
SAME_MATH = frozenset({"resume", "stop_after", "save_every", "save_final", "log_every", "val_every", "wandb",
                       "run_id", "out_dir", "compile", "warmup_timing_steps", "val_batch", "device", "bucket_mb",
                       "fused_adam", "dry_run", "gpu", "world", "seed", "preset"})
ENVIRONMENT = ("gpu", "device", "world_size", "torch")  # what a training time depends on, as results.json says
LOWER_IS_BETTER = {"val_loss": True, "val_bpb": True, "core": False}
MAX_SEEDS = 1000  # the most seeds "seeds needed" searches


@dataclass
class Run:
    name: str          # the folder (or a record's log) it was read from: what messages name
    seed: int
    config: dict       # train_gpt.py's Config as the run used it
    git: dict          # {"commit", "dirty", "diff_sha256"}
    environment: dict  # {"gpu", "device", "world_size", "torch", ...}
    values: dict       # val_loss, val_bpb, core (None when not evaluated), training_time_s, steps
    diff_path: str     # its `git diff HEAD` when the tree was dirty and the file was kept, else None


# -----------------------------------------------------------------------------
# Reading the arms


def read_json(path):
    return trust.read_json(path)  # a plain file of at most 1 MB, never through a symlink


def existing(path):
    return path if os.path.lexists(path) else None


def run_from_folder(path, results):
    """A run folder's Run, from the results.json that train_gpt.py (and eval_core.py, for core) wrote."""
    try:
        values = {key: results.get(key) for key in ("val_loss", "val_bpb", "training_time_s", "steps")}
        values["core"] = (results.get("core") or {}).get("core")
        return Run(path, results["seed"], dict(results["config"]), dict(results["git"]),
                   dict(results["environment"]), values, existing(os.path.join(path, "git.diff")))
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise RecordError(f"{os.path.join(path, 'results.json')}: not a train_gpt.py run's results "
                          f"({type(e).__name__}: {e})") from None


def runs_from_record(path, record, tracks_file):
    """A record folder's Runs, after validating it (a record that fails is refused): the values from its
    results.json, the config, git and environment from the first start in each run's log."""
    failures, _ = validate(path, tracks_file)
    if failures:
        raise RecordError(f"{path}: not a valid record ({len(failures)} problem(s), first: {failures[0]}); "
                          f"python -m records validate {path} lists them")
    runs = []
    for run in record["runs"]:
        start = parse_log(os.path.join(path, run["log"])).segments[0]
        values = {key: run[key] for key in ("val_loss", "val_bpb", "core", "training_time_s", "steps")}
        runs.append(Run(os.path.join(path, run["log"]), run["seed"], start["config"], start["git"],
                        start["environment"], values, existing(os.path.join(path, "logs", f"{run['run_id']}.diff"))))
    return runs


def load_arm(label, paths, tracks_file):
    """The Runs of one arm; a record folder is validated first, and said so."""
    runs = []
    for path in paths:
        results = read_json(os.path.join(path, "results.json"))
        if isinstance(results, dict) and "runs" in results:
            runs += runs_from_record(path, results, tracks_file)
            print(trust.printable(f"{label}: {path} is a valid record (validated now)"))
        else:
            runs.append(run_from_folder(path, results))
    return runs


def check_distinct(a, b):
    """No run counted twice, in one arm or across both: a run compared with itself shows nothing."""
    seen = {}
    for label, runs in (("A", a), ("B", b)):
        for run in runs:
            key = os.path.realpath(run.name)
            if key in seen:
                raise RecordError(f"{run.name} is given twice (in {seen[key]} and {label}); give each run once")
            seen[key] = label


# -----------------------------------------------------------------------------
# One recipe per arm, and what tells the arms apart


def recipe(run):
    """What must be the same across an arm's runs: the settings that change the math, and the code."""
    settings = {key: value for key, value in run.config.items() if key not in SAME_MATH}
    return {**settings, **{f"git.{key}": run.git.get(key) for key in ("commit", "dirty", "diff_sha256")}}


def differing_keys(first, other):
    return sorted(key for key in first.keys() | other.keys() if first.get(key) != other.get(key))


def check_one_recipe(label, runs):
    """Refuses an arm whose runs differ in more than the seed (and bookkeeping): its spread would not be noise."""
    first = recipe(runs[0])
    for run in runs[1:]:
        differ = differing_keys(first, recipe(run))
        if differ:
            raise RecordError(f"arm {label}: {run.name} differs from {runs[0].name} in {', '.join(differ)}; an arm "
                              "is one recipe over several seeds")


def diff_stats(text):
    """[(file, lines added, lines removed)] of a `git diff` text, parsed (never applied); a binary file counts
    None, None (git shows no lines of it)."""
    files, in_hunk = [], False
    for line in text.splitlines():
        if line.startswith("diff --git "):
            files.append([line.rsplit(" b/", 1)[-1], 0, 0])
            in_hunk = False
        elif line.startswith("@@"):
            in_hunk = True
        elif files and not in_hunk and line.startswith("Binary files "):
            files[-1][1:] = None, None
        elif in_hunk and files and line[:1] in ("+", "-"):
            files[-1][1 if line[0] == "+" else 2] += 1
    return [tuple(f) for f in files]


def diff_summary(path):
    touched = diff_stats(trust.read_bounded(path, trust.DIFF_BYTES).decode("utf-8", errors="replace"))
    return ", ".join(f"{name} binary" if plus is None else f"{name} +{plus} -{minus}"
                     for name, plus, minus in touched) or "empty git.diff"


def code_line(label, runs):
    """One line: how many runs, their seeds, the commit, and what a dirty tree changed (from its git.diff)."""
    git = runs[0].git
    commit = (git.get("commit") or "unknown (not run from a git checkout)")[:12]
    state = "clean" if git.get("dirty") is False else "dirty" if git.get("dirty") else "state unknown"
    diff_path = next((run.diff_path for run in runs if run.diff_path), None)
    if git.get("dirty") and diff_path:
        state += ": " + diff_summary(diff_path)
    elif git.get("dirty"):
        state += " (no git.diff beside the runs)"
    seeds = ", ".join(str(seed) for seed in sorted(run.seed for run in runs))
    return f"{label}: {len(runs)} run{'s' * (len(runs) != 1)} (seeds {seeds}), commit {commit} {state}"


def settings_line(a, b):
    differ = differing_keys(recipe(a[0]), recipe(b[0]))
    if not differ:
        return "settings: the arms ran the same code and settings: any difference between them is noise"
    return f"settings: the arms differ in {', '.join(differ)}"


# -----------------------------------------------------------------------------
# The metric: the test, its verdict, and the seeds a difference would need


@dataclass
class Outcome:
    test: str       # which test, and why that one
    detail: str     # its statistic and df
    runs: tuple     # (runs of A, runs of B) that entered the test, in pair order for the paired test
    diff: float     # mean of B - mean of A
    p: float        # two-sided
    needed: object  # the seeds that would show the difference (int), None beyond MAX_SEEDS or with no difference
    unit: str       # what needed counts


def metric_runs(label, runs, metric):
    """The arm's runs that have the metric; an arm where none has it is refused."""
    having = [run for run in runs if run.values.get(metric) is not None]
    if not having:
        hint = "run eval_core.py on its checkpoints, or compare another --metric" if metric == "core" else \
            "are these finished train_gpt.py runs?"
        raise RecordError(f"arm {label}: no run has {metric}; {hint}")
    if len(having) < len(runs):
        print(trust.printable(f"note: arm {label}: {len(runs) - len(having)} of {len(runs)} runs have no {metric}, "
                              "left out"))
    return having


def pair_by_seed(a, b):
    """([(run of A, run of B)] by seed, why) when both arms ran the same seeds once each; else (None, why not)."""
    seeds = {"A": [run.seed for run in a], "B": [run.seed for run in b]}
    for label, ran in seeds.items():
        twice = sorted({seed for seed in ran if ran.count(seed) > 1})
        if twice:
            return None, f"seed {twice[0]} ran twice in arm {label}, so runs cannot be paired by seed"
    if set(seeds["A"]) != set(seeds["B"]):
        only = [", ".join(map(str, sorted(set(seeds[x]) - set(seeds[y])))) or "none" for x, y in ("AB", "BA")]
        return None, f"the seeds differ (only in A: {only[0]}; only in B: {only[1]})"
    of_b = {run.seed: run for run in b}
    pairs = [(run, of_b[run.seed]) for run in sorted(a, key=lambda run: run.seed)]
    return pairs, f"both arms ran seeds {', '.join(str(run.seed) for run, _ in pairs)}"


def paired_outcome(pairs, why, metric, alpha):
    if len(pairs) < 2:
        raise RecordError(f"{metric}: {len(pairs)} seed pair; a paired t-test needs at least 2: run more seeds in "
                          "both arms")
    xs, ys = [x.values[metric] for x, _ in pairs], [y.values[metric] for _, y in pairs]
    try:
        test = paired_t_test(xs, ys)
    except ValueError:
        raise RecordError(f"{metric}: every seed's B - A is {ys[0] - xs[0]:+.6g}: zero spread is not a measurement "
                          "(are these copies of one run?)") from None
    return Outcome(f"paired t-test, because {why}", f"t(A - B) = {test.t:.3f}, df = {test.df:.0f}",
                   ([x for x, _ in pairs], [y for _, y in pairs]), test.diff, test.p_two_sided,
                   pairs_needed(test.diff, test.std_diff, alpha, MAX_SEEDS), "seed pairs")


def welch_outcome(a, b, why, metric, alpha):
    for label, runs in (("A", a), ("B", b)):
        if len(runs) < 2:
            raise RecordError(f"arm {label} has {len(runs)} run with {metric}; Welch's t-test needs at least 2 per "
                              "arm: run more seeds (the same seeds in both arms allow the paired test)")
        values = {run.values[metric] for run in runs}
        if len(values) == 1:  # identical runs (or one run counted twice): the t-test would claim certainty
            raise RecordError(f"{metric}: every run of arm {label} has {values.pop()}: zero spread is not a "
                              "measurement (are these copies of one run?)")
    xs, ys = [run.values[metric] for run in a], [run.values[metric] for run in b]
    test = welch_t_test(xs, ys)
    (_, std_a), (_, std_b) = mean_std(xs), mean_std(ys)
    return Outcome(f"Welch's t-test, because {why}", f"t(A - B) = {test.t:.3f}, df = {test.df:.1f}", (a, b), test.diff,
                   test.p_two_sided, runs_needed(test.diff, std_a, std_b, alpha, MAX_SEEDS), "runs per arm")


def verdict(outcome, metric, alpha):
    if not outcome.p < alpha:
        return f"no significant difference at alpha {alpha}"
    better = (outcome.diff < 0) == LOWER_IS_BETTER[metric]
    return f"B is {'better' if better else 'worse'} at alpha {alpha}"


def needed_line(outcome, alpha):
    if outcome.p < alpha:
        return f"seeds needed: already significant at alpha {alpha}"
    if outcome.diff == 0:
        return "seeds needed: none would do: the means are equal"
    if outcome.needed is None:
        return f"seeds needed: more than {MAX_SEEDS} {outcome.unit} at this difference and spread"
    return (f"seeds needed: {outcome.needed} {outcome.unit} would reach p < {alpha} if the difference and spread "
            "stayed as observed (a point estimate: about half of such experiments would)")


def metric_lines(outcome, metric, alpha):
    direction = "lower" if LOWER_IS_BETTER[metric] else "higher"
    (mean_a, std_a), (mean_b, std_b) = (mean_std([run.values[metric] for run in runs]) for runs in outcome.runs)
    lines = [f"{metric} ({direction} is better): A {mean_a:.6g} ± {std_a:.2g} (n={len(outcome.runs[0])}), "
             f"B {mean_b:.6g} ± {std_b:.2g} (n={len(outcome.runs[1])}), B - A = {outcome.diff:+.4g}"]
    if outcome.test.startswith("paired"):
        lines.append("per seed, B - A: " + ", ".join(f"seed {x.seed} {y.values[metric] - x.values[metric]:+.4g}"
                                                     for x, y in zip(*outcome.runs)))
    lines.append(f"test: {outcome.test}: {outcome.detail}, p = {outcome.p:.3g} -> {verdict(outcome, metric, alpha)}")
    return lines + [needed_line(outcome, alpha)]


# -----------------------------------------------------------------------------
# Training time: secondary, since it measures the machine and its load as much as the recipe


def step_ms(runs):
    return [1000 * run.values["training_time_s"] / run.values["steps"] for run in runs
            if run.values.get("training_time_s") is not None and run.values.get("steps")]


def time_line(a, b):
    parts, means = [], []
    for label, runs in (("A", a), ("B", b)):
        seconds = [run.values["training_time_s"] for run in runs if run.values.get("training_time_s") is not None]
        if not seconds:
            return f"training time: arm {label}'s results have none"
        (mean, std), ms = mean_std(seconds), step_ms(runs)
        per_step = f" ({mean_std(ms)[0]:.4g} ms/step ± {mean_std(ms)[1]:.3g})" if ms else ""
        parts.append(f"{label} {mean:.4g} s ± {std:.3g}{per_step}")
        means.append(mean)
    return f"training time (secondary): {', '.join(parts)}, B - A = {means[1] - means[0]:+.3g} s"


def time_warning(a, b):
    """One line when the times compare machines rather than recipes: other environments, or a spread of step
    times within an arm as large as the difference between the arms (a loaded machine, or no real difference)."""
    differ = [f"{key}: " + ", ".join(f"{label} {'/'.join(sorted({str(run.environment.get(key)) for run in runs}))}"
                                     for label, runs in (("A", a), ("B", b)))
              for key in ENVIRONMENT if len({str(run.environment.get(key)) for run in a + b}) > 1]
    if differ:
        return f"warning: the runs ran in other environments ({'; '.join(differ)}): their times are not comparable"
    ms_a, ms_b = step_ms(a), step_ms(b)
    if len(ms_a) < 2 or len(ms_b) < 2:
        return None
    spread, gap = max(mean_std(ms_a)[1], mean_std(ms_b)[1]), abs(mean_std(ms_b)[0] - mean_std(ms_a)[0])
    if spread >= gap:
        return (f"warning: step times vary within an arm (std up to {spread:.3g} ms/step) as much as between the "
                f"arms ({gap:.3g} ms/step): the time difference is noise or load, not the recipe")
    return None


# -----------------------------------------------------------------------------
# The command


def compare(a_paths, b_paths, metric, alpha, tracks_file):
    """Prints the comparison of arm B with arm A; returns 0, or raises RecordError (one line: what to do) when
    nothing can be compared honestly."""
    arms = {"A": load_arm("A", a_paths, tracks_file), "B": load_arm("B", b_paths, tracks_file)}
    for label, runs in arms.items():
        check_one_recipe(label, runs)
    a, b = arms["A"], arms["B"]
    check_distinct(a, b)
    print(trust.printable(code_line("A", a)))
    print(trust.printable(code_line("B", b)))
    print(trust.printable(settings_line(a, b)))
    with_metric = metric_runs("A", a, metric), metric_runs("B", b, metric)
    pairs, why = pair_by_seed(*with_metric)
    outcome = paired_outcome(pairs, why, metric, alpha) if pairs else welch_outcome(*with_metric, why, metric, alpha)
    for line in metric_lines(outcome, metric, alpha) + [time_line(a, b), time_warning(a, b)]:
        if line:
            print(trust.printable(line))
    return 0
