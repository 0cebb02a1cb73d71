"""python -m records: build, check and compare speedrun records, and render the leaderboard.

    python -m records new --track gpt2-core --slug fp8-head runs/a runs/b runs/c runs/d runs/e
    python -m records validate records/gpt2-core/2026-11-21_fp8-head      # or: validate --all
    python -m records compare --a runs/base_* --b runs/change_*            # paired by seed when it can
    python -m records leaderboard                                          # README table + records/leaderboard.html
"""

import argparse
import datetime
import glob
import os
import shutil
import sys
import tempfile

from records.compare import compare
from records.record import TRACKS_FILE, RecordError, load_tracks, new_record, validate

RECORDS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(RECORDS_DIR)


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


def cmd_reproduce(args):
    from records.reproduce import reproduce
    problems = reproduce(args.record, args.runs, args.steps, REPO_DIR, args.data_root, args.tolerance)
    for problem in problems:
        print(f"FAIL {problem}")
    print(f"{args.record}: {'replayed' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def cmd_compare(args):
    return compare(args.a, args.b, args.metric, args.alpha, args.tracks)


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
    versus = commands.add_parser(
        "compare", help="is B better than A in the metric? paired t-test by seed, else Welch; time second",
        description="Compares the metric of two arms of runs, each one recipe over several seeds. When both arms "
                    "ran the same seeds the test is a paired t-test on the per-seed differences, else Welch's t-test; "
                    "the report says which and why, gives the verdict at --alpha and the seeds the difference would "
                    "need, then the training time (secondary; with a warning when it compares machines). Refuses "
                    "(exit 1, one line) an arm whose runs differ in more than the seed and bookkeeping "
                    "(records/compare.py SAME_MATH) or in code, a record that does not validate, and anything "
                    "that leaves nothing to compare.")
    versus.add_argument("--a", nargs="+", required=True, help="baseline: run folders (results.json) or record folders")
    versus.add_argument("--b", nargs="+", required=True, help="change: run folders (results.json) or record folders")
    versus.add_argument("--metric", default="val_loss", choices=["val_loss", "val_bpb", "core"],
                     help="what is compared (core: higher is better; the others: lower)")
    versus.add_argument("--alpha", type=float, default=0.01, help="significance level of the two-sided test")
    versus.set_defaults(run=cmd_compare)
    again = commands.add_parser("reproduce", help="re-run a record's runs at its commit and compare their losses",
                                description=__import__("records.reproduce").reproduce.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    again.add_argument("record", help="a record folder")
    again.add_argument("--runs", nargs="+", help="run ids to replay (default: all)")
    again.add_argument("--steps", type=int, default=None, help="replay only the first N steps (a spot check)")
    again.add_argument("--data-root", default=None, help="where the config's data paths are (default: this checkout)")
    again.add_argument("--tolerance", type=float, default=None, help="allowed loss difference (default: 0 for CPU "
                       "runs, records/reproduce.py's GPU_TOLERANCE for GPU runs)")
    again.set_defaults(run=cmd_reproduce)
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
