"""python -m records ab BASE IDEA -- TRAIN ARGS: both arms on this machine, in one sitting, interleaved.

Each arm is a commit (BASE, IDEA), or `worktree` for this checkout's uncommitted change (HEAD with `git diff HEAD`
applied), checked out clean in a worktree of its own under --out. Pair i runs seed i in both arms, in the order
A B, B A, A B, ... (so that drift, warm caches and thermal state fall on both arms alike), each run
`train_gpt.py TRAIN ARGS --seed=i` (torchrun with --nproc > 1). After every pair the report is written: the paired
comparison of the metric by seed (as `records compare` does it) and the training time as a ratio IDEA / BASE with
its confidence interval (the geometric mean of the per-pair ratios, a t-interval on their logarithms). It stops once
both are settled at --alpha (the metric's paired t-test below alpha and the time ratio's interval clear of 1), after
--min-pairs at least, or after --max-pairs. Killed and run again with the same arguments, it keeps every finished run
(its results.json) and goes on. Writes --out/report.md and --out/ab.json (every run's figures); the runs are in
--out/runs/<arm>_s<seed>/.
"""

import json
import math
import os
import shutil
import subprocess

from records.reproduce import clean_copy, run_in_tree
from records.stats import mean_std, paired_t_test, student_t_sf
from records.trust import RecordError

ARMS = ("base", "idea")
LOWER_IS_BETTER = {"val_loss": True, "val_bpb": True, "core": False}


def t_quantile(p, df):
    """The t value with upper tail p at df degrees of freedom (bisection on student_t_sf)."""
    low, high = 0.0, 1e3
    for _ in range(200):
        middle = (low + high) / 2
        if student_t_sf(middle, df) > p:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def order(pair):
    """The arms' order in pair `pair`: A B, then B A, alternately."""
    return ARMS if pair % 2 == 0 else ARMS[::-1]


def tree_for(repo, out, arm, rev):
    """A clean worktree of the arm's commit (`worktree`: HEAD with this checkout's uncommitted diff applied), with the
    checkout's data/ linked in, so that the train args' data paths mean the same in both arms."""
    tree = os.path.join(out, "trees", arm)
    if not os.path.isdir(tree):
        try:
            clean_copy(repo, "HEAD" if rev == "worktree" else rev, tree)
        except subprocess.CalledProcessError as e:
            raise RecordError(f"{arm}: cannot check out {rev} ({e.stderr.decode(errors='replace').strip()[-200:]})")
        if rev == "worktree":
            diff = subprocess.run(["git", "diff", "HEAD", "--binary"], cwd=repo, capture_output=True).stdout
            if diff:
                applied = subprocess.run(["git", "apply", "--whitespace=nowarn"], cwd=tree, input=diff,
                                         capture_output=True)
                if applied.returncode != 0:
                    raise RecordError(f"{arm}: this checkout's diff does not apply to HEAD")
    data = os.path.join(repo, "data")
    for name in os.listdir(data) if os.path.isdir(data) else []:
        link, target = os.path.join(tree, "data", name), os.path.join(data, name)
        if not os.path.exists(link) and not name.endswith(".py"):
            os.symlink(target, link)
    return tree


def run_arm(tree, out, arm, seed, train_args, nproc):
    """One run (skipped when its results.json is there): its results."""
    run_id = f"{arm}_s{seed}"
    run_dir = os.path.join(out, "runs", run_id)
    results = os.path.join(run_dir, "results.json")
    if os.path.exists(results):
        with open(results) as f:
            return json.load(f)
    shutil.rmtree(run_dir, ignore_errors=True)  # a run killed midway: started again
    run_in_tree(tree, "train_gpt.py", [*train_args, f"--seed={seed}", f"--run_id={run_id}",
                                       f"--out_dir={os.path.join(out, 'runs')}"], nproc, what=run_id)
    with open(results) as f:
        return json.load(f)


def time_ratio(ratios, alpha):
    """The geometric mean of per-pair time ratios and its t-interval at 1 - alpha on their logarithms (no interval
    from one pair)."""
    mean, std = mean_std([math.log(r) for r in ratios])
    if len(ratios) < 2:
        return {"time_ratio": math.exp(mean), "time_low": None, "time_high": None}
    half = t_quantile(alpha / 2, len(ratios) - 1) * std / math.sqrt(len(ratios))
    return {"time_ratio": math.exp(mean), "time_low": math.exp(mean - half), "time_high": math.exp(mean + half)}


def summary(pairs, metric, alpha):
    """The metric's paired comparison and the time ratio's interval over the finished pairs (dicts of arm -> results)."""
    a = [p["base"][metric] for p in pairs]
    b = [p["idea"][metric] for p in pairs]
    ratios = [p["idea"]["training_time_s"] / p["base"]["training_time_s"] for p in pairs]
    out = {"pairs": len(pairs), "metric": metric, "base_mean": mean_std(a)[0], "idea_mean": mean_std(b)[0]}
    differences = [y - x for x, y in zip(a, b)]
    if len(pairs) >= 2 and any(d != differences[0] for d in differences):
        test = paired_t_test(a, b)
        better = (test.diff < 0) == LOWER_IS_BETTER[metric]
        out.update(diff=test.diff, p=test.p_two_sided, verdict=(
            f"IDEA is {'better' if better else 'worse'}" if test.p_two_sided < alpha else "no significant difference"))
    else:
        out.update(diff=differences[0] if differences else 0.0, p=1.0 if len(pairs) >= 2 else None,
                   verdict="no difference: every pair the same" if len(pairs) >= 2 and differences[0] == 0 else
                   "not enough pairs")
    out.update(time_ratio(ratios, alpha))
    out["settled"] = (out.get("p") is not None and out["p"] < alpha and out["time_low"] is not None
                      and not out["time_low"] <= 1.0 <= out["time_high"])
    return out


def report_lines(base, idea, s, alpha):
    lines = [f"A/B: BASE {base} against IDEA {idea}, {s['pairs']} seed pairs, interleaved",
             f"{s['metric']}: BASE {s['base_mean']:.6g}, IDEA {s['idea_mean']:.6g}, IDEA - BASE {s['diff']:+.6g}"
             + (f", paired t-test p = {s['p']:.3g}" if s.get("p") is not None else "") + f": {s['verdict']}"]
    if s["time_low"] is not None:
        lines.append(f"training time IDEA / BASE: {s['time_ratio']:.4f} ({100 * (1 - alpha):.0f}% interval "
                     f"{s['time_low']:.4f} to {s['time_high']:.4f}){'' if s['time_low'] <= 1 <= s['time_high'] else ': ' + ('faster' if s['time_high'] < 1 else 'slower')}")
    return lines


def ab(base, idea, train_args, out, repo, metric="val_loss", alpha=0.01, min_pairs=3, max_pairs=10, nproc=1,
       echo=print):
    """Runs the A/B; returns the final summary (also in out/ab.json and out/report.md)."""
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    trees = {arm: tree_for(repo, out, arm, rev) for arm, rev in zip(ARMS, (base, idea))}
    pairs, s = [], None
    total = 2 * max_pairs
    for pair in range(max_pairs):
        results = {}
        for arm in order(pair):
            results[arm] = run_arm(trees[arm], out, arm, pair, train_args, nproc)
            echo(f"[{2 * pair + len(results)}/{total}] {arm} seed {pair}: {metric} {results[arm][metric]:.6f}, "
                 f"training {results[arm]['training_time_s']:.2f} s")
        pairs.append(results)
        s = summary(pairs, metric, alpha)
        write_report(out, base, idea, pairs, s, alpha, metric)
        if pair + 1 >= min_pairs and s["settled"]:
            echo(f"settled after {pair + 1} pairs at alpha {alpha}")
            break
    for line in report_lines(base, idea, s, alpha):
        echo(line)
    return s


def write_report(out, base, idea, pairs, s, alpha, metric):
    raw = [{arm: {k: p[arm].get(k) for k in ("run_id", "seed", metric, "training_time_s", "steps", "tokens")}
            for arm in ARMS} for p in pairs]
    with open(os.path.join(out, "ab.json"), "w") as f:
        json.dump({"base": base, "idea": idea, "summary": s, "runs": raw}, f, indent=2)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n\n".join(report_lines(base, idea, s, alpha)) + "\n")
