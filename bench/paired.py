"""bench/paired.py: the step time of two commits, measured in turns on this machine.

    python -m bench.paired BASE IDEA [--rounds 8] -- --preset=tiny --synthetic --vocab=4096 --steps=60

Each arm is a commit (or `worktree`: this checkout's uncommitted change), checked out clean in a worktree of its own
(records/ab.py's); each round runs `python -m bench.train ARGS` once in each arm, A B then B A alternately, so that
the machine's drift falls on both alike. A run's figure is its median timed step; the answer is the ratio IDEA / BASE
of the rounds' figures (their geometric mean) with a t-interval at --alpha. For whole runs, seeds and a metric
besides the time, `python -m records ab`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from records.ab import order, time_ratio, tree_for
from records.reproduce import run_in_tree


def step_ms(tree, arm, args, scratch):
    out = os.path.join(scratch, f"{arm}.json")
    run_in_tree(tree, "-m", ["bench.train", *args, "--no-record", f"--json={out}"], what=f"{arm}'s bench.train")
    with open(out) as f:
        return json.load(f)["step_ms"]


def paired(base, idea, args, rounds, alpha, repo=".", echo=print):
    """{arm: [median step ms of each round]} and the ratio's summary."""
    repo = os.path.abspath(repo)
    out = tempfile.mkdtemp(prefix="paired_")
    trees = {arm: tree_for(repo, out, arm, rev) for arm, rev in (("base", base), ("idea", idea))}
    times = {"base": [], "idea": []}
    try:
        for round_ in range(rounds):
            for arm in order(round_):
                times[arm].append(step_ms(trees[arm], arm, args, out))
                echo(f"round {round_ + 1}/{rounds}, {arm}: step {times[arm][-1]:.2f} ms")
    finally:
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=repo, capture_output=True)
    ratios = [i / b for b, i in zip(times["base"], times["idea"])]
    return times, time_ratio(ratios, alpha)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="python -m bench.paired", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base")
    parser.add_argument("idea")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv[:split])
    train_args = argv[split + 1:]
    lines = []

    def echo(line):
        print(line, flush=True)
        lines.append(line)
    times, ratio = paired(args.base, args.idea, train_args, args.rounds, args.alpha, echo=echo)
    interval = (f"{100 * (1 - args.alpha):g}% interval {ratio['time_low']:.4f} to {ratio['time_high']:.4f}"
                if ratio["time_low"] else "no interval from one round")
    verdict = ("IDEA slower" if ratio["time_low"] and ratio["time_low"] > 1 else
               "IDEA faster" if ratio["time_high"] and ratio["time_high"] < 1 else "no difference settled")
    echo(f"step ms, median of the rounds: BASE {statistics.median(times['base']):.2f}, IDEA "
         f"{statistics.median(times['idea']):.2f}")
    echo(f"step time IDEA / BASE: {ratio['time_ratio']:.4f} ({interval}): {verdict}")
    if not args.no_record:
        from bench.record import record
        figure = (f"step time {args.idea} / {args.base}: {ratio['time_ratio']:.4f} ({interval}; {verdict}), "
                  f"{args.rounds} rounds, `bench.train {' '.join(train_args)}`")
        import torch
        record("paired-step-time", figure, f"torch {torch.__version__}", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
