"""python -m records: build, check and compare speedrun records, and render the leaderboard.

    python -m records new --track gpt2-core --slug fp8-head runs/a runs/b runs/c runs/d runs/e
    python -m records validate records/gpt2-core/2026-11-21_fp8-head      # or: validate --all
    python -m records compare --a runs/base_* --b runs/change_*            # run folders or record folders
    python -m records leaderboard                                          # README table + records/leaderboard.html
"""

import argparse
import datetime
import glob
import json
import os
import shutil
import sys
import tempfile

from records.record import TRACKS_FILE, RecordError, load_tracks, new_record, run_values, validate
from records.stats import mean_std, welch_t_test

RECORDS_DIR = os.path.dirname(os.path.abspath(__file__))


def record_dirs(root=RECORDS_DIR):
    return sorted(os.path.dirname(p) for p in glob.glob(os.path.join(root, "*", "*", "results.json")))


def cmd_new(args):
    """Builds the record in a temporary folder beside its destination and renames it at the end: a failure
    leaves no half-built record that would block the next attempt."""
    out = args.out or os.path.join(os.path.dirname(args.tracks), args.track,
                                   f"{datetime.date.today().isoformat()}_{args.slug}")
    if os.path.exists(out):
        raise RecordError(f"{out} exists; choose another slug or --out")
    parent = os.path.dirname(os.path.abspath(out))
    made = [parent]  # the folders this command makes, deepest first: removed again if it fails
    while not os.path.isdir(os.path.dirname(made[-1])):
        made.append(os.path.dirname(made[-1]))
    made = [folder for folder in made if not os.path.isdir(folder)]
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
    try:
        built = new_record(args.track, args.slug, args.runs, os.path.join(staging, "record"), args.description,
                           args.tracks)
        os.rename(built, out)
        made = []
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made:
            os.rmdir(folder)
    print(f"wrote {out}")
    return report_validation(out, args.tracks)


def report_validation(path, tracks_file):
    failures, notes = validate(path, tracks_file)
    for note in notes:
        print(f"note: {note}")
    for failure in failures:
        print(f"FAIL {failure}")
    print(f"{path}: {'valid' if not failures else f'{len(failures)} problem(s)'}")
    return 1 if failures else 0


def cmd_validate(args):
    paths = record_dirs(RECORDS_DIR) if args.all else args.paths
    if not paths:
        print("no records to validate" if args.all else "give record folders or --all")
        return 0 if args.all else 2
    return max(report_validation(p, args.tracks) for p in paths)


def load_runs(paths):
    """Per-run values from run folders (results.json of a run) or record folders (their runs)."""
    runs = []
    for path in paths:
        results_path = os.path.join(path, "results.json")
        try:
            with open(results_path) as f:
                results = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise RecordError(f"{results_path}: cannot read ({e})") from None
        if isinstance(results, dict) and "runs" in results:
            if not isinstance(results["runs"], list) or not all(isinstance(run, dict) for run in results["runs"]):
                raise RecordError(f"{results_path}: 'runs' is not a list of runs")
            runs += results["runs"]
        else:
            runs.append(run_values(path))
    return runs


def cmd_compare(args):
    a, b = load_runs(args.a), load_runs(args.b)
    verdicts = refused = 0
    for key, lower_is_better in (("training_time_s", True), (args.metric, args.metric != "core")):
        xs, ys = [r[key] for r in a if r.get(key) is not None], [r[key] for r in b if r.get(key) is not None]
        if len(xs) < 2 or len(ys) < 2:
            print(f"{key}: needs at least 2 runs on each side (have {len(xs)} and {len(ys)})")
            continue
        constant = [f"{side} ({values[0]})" for side, values in (("A", xs), ("B", ys)) if len(set(values)) == 1]
        if constant:  # identical runs (or one run counted twice): the t-test would claim certainty, t = +-inf
            print(f"{key}: refused: every run of {' and '.join(constant)} has the same value; zero variance is "
                  "not a measurement (are these copies of one run?)")
            refused += 1
            continue
        test = welch_t_test(xs, ys)
        (ma, sa), (mb, sb) = mean_std(xs), mean_std(ys)
        better = test.p_less if not lower_is_better else test.p_greater  # H1: B better than A
        verdict = ("B is better" if better < args.alpha else
                   "B is worse" if (test.p_greater if not lower_is_better else test.p_less) < args.alpha else
                   "no significant difference")
        verdicts += verdict == "B is better"
        print(f"{key}: A {ma:.6g} ± {sa:.3g} (n={len(xs)}), B {mb:.6g} ± {sb:.3g} (n={len(ys)}), B - A = "
              f"{mb - ma:+.6g}; Welch t = {test.t:.3f}, df = {test.df:.1f}, p(two-sided) = {test.p_two_sided:.3g}, "
              f"p(B better) = {better:.3g} -> {verdict} at p < {args.alpha}")
    return 1 if refused else 0


def cmd_leaderboard(args):
    from records.leaderboard import write_leaderboard
    for path in write_leaderboard(RECORDS_DIR, args.readme, args.tracks, report=lambda line: print(f"left out {line}")):
        print(f"wrote {path}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m records", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", default=TRACKS_FILE, help="the tracks file")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="build a record folder from run folders, then validate it")
    new.add_argument("--track", required=True)
    new.add_argument("--slug", required=True, help="short name: lowercase letters, digits, dashes")
    new.add_argument("--description", default="")
    new.add_argument("--out", help="default: records/<track>/<date>_<slug>")
    new.add_argument("runs", nargs="+", help="run folders (runs/<run_id>) with log.txt and results.json")
    new.set_defaults(run=cmd_new)
    check = commands.add_parser("validate", help="check record folders")
    check.add_argument("paths", nargs="*")
    check.add_argument("--all", action="store_true", help="every record under records/")
    check.set_defaults(run=cmd_validate)
    compare = commands.add_parser("compare", help="Welch's t-test between two sets of runs")
    compare.add_argument("--a", nargs="+", required=True, help="baseline: run or record folders")
    compare.add_argument("--b", nargs="+", required=True, help="change: run or record folders")
    compare.add_argument("--metric", default="val_loss", choices=["val_loss", "val_bpb", "core"])
    compare.add_argument("--alpha", type=float, default=0.01)
    compare.set_defaults(run=cmd_compare)
    board = commands.add_parser("leaderboard", help="regenerate the README table and records/leaderboard.html")
    board.add_argument("--readme", default=os.path.join(os.path.dirname(RECORDS_DIR), "README.md"))
    board.set_defaults(run=cmd_leaderboard)
    args = parser.parse_args(argv)
    try:
        load_tracks(args.tracks)
        return args.run(args)
    except (RecordError, OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
