"""python -m records compare: pairs runs by seed, leads with the metric, refuses arms that mix recipes and
comparisons that compare nothing. The run folders here are written as train_gpt.py's train() writes results.json
(its real Config, git and environment keys); record folders are tested in test_records.py, on real runs."""

import dataclasses
import json

import pytest

import train_gpt
from harness.checkpoint import RESUMABLE_CHANGES
from harness.runlog import RESULTS_SCHEMA
from records.__main__ import main as records_main
from records.compare import SAME_MATH, diff_stats
from records.stats import paired_t_test, welch_t_test

COMMIT = "0d92c369e35a27b9a511be9ce111fef94435256f"
CLEAN = {"commit": COMMIT, "dirty": False,
         "diff_sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}  # of an empty diff
CPU = {"python": "3.12.3", "torch": "2.9.1+cu128", "cuda": "12.8", "device": "cpu", "world_size": 1, "gpu": None,
       "driver": None}
# The cosine-schedule report: A's seeds spread by ~0.004, but each seed's B is 0.0071 to 0.0082 lower.
BASES = [3.2812, 3.2851, 3.2885]
COSINE = [3.2735, 3.2780, 3.2803]  # BASES + (-0.0077, -0.0071, -0.0082)


def write_run(folder, seed, val_loss, time_s=20.0, git=CLEAN, env=CPU, diff=None, **settings):
    """A run folder holding a results.json shaped like train_gpt.py's (tiny preset, 150 steps)."""
    config = train_gpt.Config(**{**train_gpt.PRESETS["tiny"], "preset": "tiny", "seed": seed,
                                 "run_id": folder.name, "out_dir": str(folder.parent), **settings})
    results = {
        "schema_version": RESULTS_SCHEMA, "run_id": folder.name, "status": "done", "preset": "tiny",
        "seed": seed, "config": dataclasses.asdict(config), "params": 1_188_992, "vocab_size": 4096,
        "total_batch_tokens": 2048, "steps": 150, "tokens": 307_200, "model_flops_per_token": 2_285_568,
        "model_flops": 702_126_489_600, "hardware_flops": None, "mfu": None, "training_time_s": time_s,
        "warmup_time_s": 3.1, "eval_time_s": 1.2, "wall_time_s": time_s + 6.0, "val_loss": val_loss,
        "val_bpb": val_loss / 2.3, "val_tokens": 65_536, "git": git, "environment": env,
        "data": {"train_files": ["train_000000.bin"], "val_files": config.val_files, "tokenizer": config.tokenizer,
                 "tokenizer_sha256": "ab" * 32}}
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    if diff is not None:
        (folder / "git.diff").write_text(diff)
    return str(folder)


def arm(tmp_path, name, losses, seeds=(0, 1, 2), times=(20.0, 20.4, 19.8), **kwargs):
    return [write_run(tmp_path / f"{name}{i}", seed, loss, time_s, **kwargs)
            for i, (seed, loss, time_s) in enumerate(zip(seeds, losses, times))]


def compare(capsys, a, b, *options):
    """(exit status, stdout, stderr) of python -m records compare."""
    status = records_main(["compare", "--a", *a, "--b", *b, *options])
    out, err = capsys.readouterr()
    return status, out, err


DIFF = """diff --git a/train_gpt.py b/train_gpt.py
index 1111111..2222222 100644
--- a/train_gpt.py
+++ b/train_gpt.py
@@ -80,3 +80,4 @@ class Config:
     warmup_steps: int = 40
-    warmdown_frac: float = 0.65
+    warmdown_frac: float = 0.0
+    schedule: str = "cosine"
--- a/this line was removed and only looks like a header
@@ -300,2 +301,2 @@ def lr_at(step):
-    return 1.0
+    return 0.5 * (1 + math.cos(math.pi * progress))
diff --git a/data/logo.png b/data/logo.png
Binary files a/data/logo.png and b/data/logo.png differ
"""


# -----------------------------------------------------------------------------
# The test: paired by seed when it can, Welch when it cannot, and why


def test_a_consistent_small_difference_over_noisy_seeds_is_significant_by_the_paired_test(tmp_path, capsys):
    assert welch_t_test(BASES, COSINE).p_two_sided > 0.05  # what compare said before: "no significant difference"
    status, out, _ = compare(capsys, arm(tmp_path, "main", BASES), arm(tmp_path, "cosine", COSINE))
    assert status == 0
    lines = out.splitlines()
    assert lines[3].startswith("val_loss (lower is better): A 3.28493 ± 0.0037 (n=3), B 3.27727")
    assert "per seed, B - A: seed 0 -0.0077, seed 1 -0.0071, seed 2 -0.0082" in out
    assert ("test: paired t-test, because both arms ran seeds 0, 1, 2: t(A - B) = 24.111, df = 2, p = 0.00172 -> B is "
            "better at alpha 0.01") in out
    assert "seeds needed: already significant at alpha 0.01" in out
    assert out.index("val_loss") < out.index("training time (secondary): A 20.07 s ± 0.306 (133.8 ms/step ± 2.04)")


def test_welch_is_used_when_the_seeds_differ_and_the_report_says_why(tmp_path, capsys):
    status, out, _ = compare(capsys, arm(tmp_path, "main", BASES), arm(tmp_path, "cosine", COSINE, seeds=(0, 1, 5)))
    assert status == 0
    welch = welch_t_test(BASES, COSINE)
    assert (f"test: Welch's t-test, because the seeds differ (only in A: 2; only in B: 5): t(A - B) = {welch.t:.3f}, "
            f"df = {welch.df:.1f}, p = {welch.p_two_sided:.3g} -> no significant difference at alpha 0.01") in out
    assert "per seed" not in out


def test_a_seed_run_twice_in_an_arm_is_not_paired(tmp_path, capsys):
    _, out, _ = compare(capsys, arm(tmp_path, "main", BASES, seeds=(0, 1, 1)), arm(tmp_path, "cosine", COSINE))
    assert "Welch's t-test, because seed 1 ran twice in arm A, so runs cannot be paired by seed" in out


def test_seeds_needed_matches_the_hand_computed_count(tmp_path, capsys):
    # Per-seed differences -0.010 and -0.006 (test_stats.test_pairs_needed_by_hand): with 2 pairs p = 0.156; with 3
    # pairs and the same mean and spread p = 0.0392 < 0.05.
    a = arm(tmp_path, "main", [3.2800, 3.2900], seeds=(0, 1))
    b = arm(tmp_path, "change", [3.2700, 3.2840], seeds=(0, 1))
    status, out, _ = compare(capsys, a, b, "--alpha", "0.05")
    assert status == 0
    assert f"p = {paired_t_test([3.28, 3.29], [3.27, 3.284]).p_two_sided:.3g} -> no significant difference" in out
    assert ("seeds needed: 3 seed pairs would reach p < 0.05 if the difference and spread stayed as observed "
            "(a point estimate: about half of such experiments would)") in out


def test_seeds_needed_for_welch_counts_runs_per_arm(tmp_path, capsys):
    # A 1, 3 and B 5, 7 on other seeds: both stds sqrt(2), the difference d = 2 sqrt(2) stds; with n runs per arm
    # t = d sqrt(n / 2), df = 2 (n - 1) (test_stats.test_runs_needed_by_hand).  n = 2: t = sqrt(8), df 2,
    # p = 2 / (sqrt(10) (sqrt(10) + sqrt(8))) = 0.106.  n = 3: t = sqrt(12), df 4, x = t / 4, p = 1 - x (3 - x^2) / 2
    # = 0.0257 < 0.05.
    _, out, _ = compare(capsys, arm(tmp_path, "main", [1.0, 3.0], seeds=(0, 1)),
                        arm(tmp_path, "change", [5.0, 7.0], seeds=(2, 3)), "--alpha", "0.05")
    assert "t(A - B) = -2.828, df = 2.0, p = 0.106 -> no significant difference at alpha 0.05" in out
    assert "seeds needed: 3 runs per arm would reach p < 0.05" in out


def test_core_counts_higher_as_better(tmp_path, capsys):
    a, b = arm(tmp_path, "main", BASES), arm(tmp_path, "cosine", COSINE)
    for path, core in zip(a + b, [0.20, 0.21, 0.22, 0.25, 0.27, 0.26]):
        results = json.loads((tmp_path / path / "results.json").read_text())
        results["core"] = {"core": core, "tasks": {}}
        (tmp_path / path / "results.json").write_text(json.dumps(results))
    _, out, _ = compare(capsys, a, b, "--metric", "core", "--alpha", "0.05")
    assert "core (higher is better)" in out and "-> B is better at alpha 0.05" in out


# -----------------------------------------------------------------------------
# What the arms ran, and their times


def test_each_arm_shows_its_commit_and_the_files_its_diff_touches(tmp_path, capsys):
    dirty = {**CLEAN, "dirty": True, "diff_sha256": "5" * 64}
    _, out, _ = compare(capsys, arm(tmp_path, "main", BASES), arm(tmp_path, "cosine", COSINE, git=dirty, diff=DIFF))
    assert out.splitlines()[:3] == [
        "A: 3 runs (seeds 0, 1, 2), commit 0d92c369e35a clean",
        "B: 3 runs (seeds 0, 1, 2), commit 0d92c369e35a dirty: train_gpt.py +3 -3, data/logo.png binary",
        "settings: the arms differ in git.diff_sha256, git.dirty"]


def test_diff_stats_counts_the_lines_of_hunks_not_the_headers():
    # the "--- a/this line..." inside the first hunk is a removed line; the file headers before "@@" are not
    assert diff_stats(DIFF) == [("train_gpt.py", 3, 3), ("data/logo.png", None, None)]
    assert diff_stats("") == []


def test_a_dirty_tree_without_its_diff_says_so(tmp_path, capsys):
    dirty = {**CLEAN, "dirty": True, "diff_sha256": "5" * 64}
    _, out, _ = compare(capsys, arm(tmp_path, "main", BASES), arm(tmp_path, "cosine", COSINE, git=dirty))
    assert "B: 3 runs (seeds 0, 1, 2), commit 0d92c369e35a dirty (no git.diff beside the runs)" in out


def test_times_from_other_machines_are_flagged(tmp_path, capsys):
    h100 = {**CPU, "device": "cuda:0", "gpu": "NVIDIA H100 80GB HBM3"}
    _, out, _ = compare(capsys, arm(tmp_path, "main", BASES), arm(tmp_path, "cosine", COSINE, env=h100))
    assert out.splitlines()[-1] == ("warning: the runs ran in other environments (gpu: A None, B NVIDIA H100 80GB "
                                    "HBM3; device: A cpu, B cuda:0): their times are not comparable")


def test_a_time_difference_larger_than_the_spread_gets_no_warning(tmp_path, capsys):
    _, out, _ = compare(capsys, arm(tmp_path, "main", BASES), arm(tmp_path, "cosine", COSINE, times=(25, 25.2, 25.1)))
    assert out.splitlines()[-1].startswith("training time (secondary): A 20.07 s ± 0.306 (133.8 ms/step ± 2.04), "
                                           "B 25.1 s ± 0.1 (167.3 ms/step ± 0.667), B - A = +5.03 s")


# -----------------------------------------------------------------------------
# Refusals: one line, non-zero


def test_an_arm_whose_runs_differ_in_more_than_the_seed_is_refused(tmp_path, capsys):
    a = arm(tmp_path, "main", BASES)
    a.append(write_run(tmp_path / "main3", 3, 3.2840, warmdown_frac=0.5, matrix_lr=0.04))
    status, out, err = compare(capsys, a, arm(tmp_path, "cosine", COSINE))
    assert status == 1 and out == ""
    assert err == (f"error: arm A: {a[3]} differs from {a[0]} in matrix_lr, warmdown_frac; an arm is one recipe "
                   "over several seeds\n")


def test_an_arm_whose_runs_ran_other_code_is_refused(tmp_path, capsys):
    b = arm(tmp_path, "cosine", COSINE[:2], seeds=(0, 1), git={**CLEAN, "dirty": True, "diff_sha256": "1" * 64})
    b.append(write_run(tmp_path / "cosine2", 2, COSINE[2], git={**CLEAN, "dirty": True, "diff_sha256": "2" * 64}))
    status, _, err = compare(capsys, arm(tmp_path, "main", BASES), b)
    assert status == 1 and f"arm B: {b[2]} differs from {b[0]} in git.diff_sha256;" in err


def test_runs_may_differ_in_bookkeeping(tmp_path, capsys):
    a = arm(tmp_path, "main", BASES[:2], seeds=(0, 1))
    a.append(write_run(tmp_path / "main2", 2, BASES[2], val_every=25, compile="false", save_final=False,
                       log_every=10, warmup_timing_steps=5, val_batch=4, device="cpu", bucket_mb=64, preset=""))
    status, out, _ = compare(capsys, a, arm(tmp_path, "cosine", COSINE))
    assert status == 0 and "settings: the arms ran the same code and settings" in out


def test_the_same_keys_as_a_resumes_changes_are_ignored():
    # the options a resumed run may change are those that do not change the math; the seed and the preset's name
    assert SAME_MATH == RESUMABLE_CHANGES | {"seed", "preset"}
    assert SAME_MATH <= {field.name for field in dataclasses.fields(train_gpt.Config)}


def nothing_to_compare(tmp_path, case):
    """(arm A, arm B, options) of each way a comparison can leave nothing to compare."""
    main = arm(tmp_path, "main", BASES)
    if case == "no metric":
        return main, arm(tmp_path, "cosine", COSINE), ["--metric", "core"]
    if case == "one pair":
        return main[:1], [write_run(tmp_path / "x", 0, 3.27)], []
    if case == "one run":
        return main, [write_run(tmp_path / "x", 7, 3.27)], []
    if case == "same run twice":
        return main, [main[0], *arm(tmp_path, "cosine", COSINE[1:], seeds=(1, 2))], []
    if case == "copies":
        return arm(tmp_path, "copy", [3.28] * 3), arm(tmp_path, "cosine", COSINE, seeds=(3, 4, 5)), []
    if case == "constant differences":  # binary fractions: the differences are exactly equal
        return arm(tmp_path, "a", [3.25, 3.5, 3.75]), arm(tmp_path, "b", [3.234375, 3.484375, 3.734375]), []
    (tmp_path / "record").mkdir()  # a record folder without runs: it fails validation before anything else
    (tmp_path / "record" / "results.json").write_text(json.dumps({"runs": []}))
    return main, [str(tmp_path / "record")], []


@pytest.mark.parametrize("case, message", [
    ("no metric", "error: arm A: no run has core; run eval_core.py on its checkpoints, or compare another --metric"),
    ("one pair", "error: val_loss: 1 seed pair; a paired t-test needs at least 2: run more seeds in both arms"),
    ("one run", "error: arm B has 1 run with val_loss; Welch's t-test needs at least 2 per arm: run more seeds"),
    ("same run twice", "is given twice (in A and B); give each run once"),
    ("copies", "error: val_loss: every run of arm A has 3.28: zero spread is not a measurement"),
    ("constant differences", "error: val_loss: every seed's B - A is -0.015625: zero spread is not a measurement"),
    ("empty record", "record: not a valid record ("),
])
def test_nothing_to_compare_exits_non_zero_with_one_line(tmp_path, capsys, case, message):
    a, b, options = nothing_to_compare(tmp_path, case)
    status, _, err = compare(capsys, a, b, *options)
    assert status == 1 and err.count("\n") == 1 and message in err
