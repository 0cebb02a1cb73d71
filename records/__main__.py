"""python -m records: build, check and compare speedrun records, and render the leaderboard.

    python -m records new --track gpt2-core --slug fp8-head runs/a runs/b runs/c runs/d runs/e
    python -m records validate records/gpt2-core/2026-11-21_fp8-head      # or: validate --all
    python -m records compare --a runs/base_* --b runs/change_*            # paired by seed when it can
    python -m records leaderboard                                          # README table + records/leaderboard.html
    python -m records leaderboard --serve --port 8000                      # ... then show it on http://127.0.0.1:8000/
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from records import trust
from records.compare import compare
from records.record import TRACKS_FILE, RecordError, across_records, load_tracks, new_record, validate

RECORDS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(RECORDS_DIR)


def record_dirs(root=RECORDS_DIR, tracks_file=TRACKS_FILE):
    """The record folders under root: records/<known track>/<date>_<slug>/ (trust.find_records)."""
    return trust.find_records(root, load_tracks(tracks_file))[0]


def git_user_name():
    found = subprocess.run(["git", "config", "user.name"], capture_output=True, text=True)
    return found.stdout.strip() or None if found.returncode == 0 else None


def cmd_new(args):
    """Builds the record in a temporary folder beside its destination and renames it at the end: a failure
    leaves no half-built record that would block the next attempt."""
    problem = trust.name_problem("--track", args.track) or trust.name_problem("--slug", args.slug)
    if problem:
        raise RecordError(problem)
    author = args.author if args.author is not None else git_user_name()
    if args.author is None and author:
        print(trust.printable(f"author: {author} (from git config user.name; --author NAME to name another)"))
    out = args.out or os.path.join(os.path.dirname(args.tracks), args.track,
                                   f"{trust.today().isoformat()}_{args.slug}")
    if os.path.lexists(out):
        raise RecordError(trust.one_line(out, "exists; choose another slug or --out"))
    parent = os.path.dirname(os.path.abspath(out))
    made = [parent]  # the folders this command makes, deepest first: removed again if it fails
    while not os.path.isdir(os.path.dirname(made[-1])):
        made.append(os.path.dirname(made[-1]))
    made = [folder for folder in made if not os.path.isdir(folder)]
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
    try:
        built = new_record(args.track, args.slug, args.runs, os.path.join(staging, "record"), args.description,
                           args.tracks, author=author, affiliation=args.affiliation, url=args.url,
                           run_link=args.run_link, seeds_note=args.seeds_note, ab_dir=args.ab, beats=args.beats)
        os.rename(built, out)
        made = []
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made:
            os.rmdir(folder)
    print(trust.printable(f"wrote {out}"))
    return report_validation(out, *validate(out, args.tracks))


def report_validation(path, failures, notes):
    """Prints a record's notes, its failures (one FAIL line each, printable) and its verdict; returns 1 if any."""
    for note in notes:
        print(trust.printable(f"note: {note}"))
    for failure in failures:
        print(trust.printable(f"FAIL {failure}"))
    print(trust.printable(f"{path}: {'valid' if not failures else f'{len(failures)} problem(s)'}"))
    return 1 if failures else 0


def cmd_validate(args):
    """Each record, then across them: a log (by sha256) in two records fails the one added later
    (record.across_records: by what a run did, not its bytes). With --all, a results.json outside records/<track>/<date>_<slug>/ fails too."""
    paths, refused = (trust.find_records(RECORDS_DIR, load_tracks(args.tracks)) if args.all else (args.paths, []))
    for line in refused:
        print(trust.printable(f"FAIL {line}"))
    if not paths and not refused:
        print("no records to validate" if args.all else "give record folders or --all")
        return 0 if args.all else 2
    results = {path: validate(path, args.tracks) for path in paths}
    valid = {path: trust.read_json(os.path.join(path, "results.json")) for path, (failures, _) in results.items()
             if not failures}
    for path, lines in across_records(valid).items():
        results[path][0].extend(lines)
    codes = [report_validation(path, *results[path]) for path in paths]
    return max(codes + [1 if refused else 0])


def cmd_reproduce(args):
    from records.reproduce import prepare_data, reproduce
    if args.prepare_data:
        track = load_tracks(args.tracks).get(os.path.basename(os.path.dirname(os.path.abspath(args.record))))
        if track is None:
            raise RecordError(f"{args.record}: not in a track folder (records/<track>/<date>_<slug>)")
        prepare_data(track, os.path.abspath(args.data_root or REPO_DIR), REPO_DIR)
    by = (args.by or git_user_name()) if args.attest else None
    if args.attest and not by:
        raise RecordError("--attest needs --by NAME (or git config user.name): an attestation says who replayed")
    problems = reproduce(args.record, args.runs, args.steps, REPO_DIR, args.data_root, args.tolerance,
                         tracks_file=args.tracks, attest_by=by, core_args=["--bundle-dir", args.core_bundle_dir]
                         if args.core_bundle_dir else None)
    for problem in problems:
        print(f"FAIL {problem}")
    print(f"{args.record}: {'replayed' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def cmd_ab(args):
    from records.ab import ab
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    out = args.out or os.path.join(REPO_DIR, "runs", f"ab_{args.base}_{args.idea}".replace("/", "-"))
    summary = ab(args.base, args.idea, train_args, os.path.abspath(out), REPO_DIR, args.metric, args.alpha,
                 args.min_pairs, args.max_pairs, args.nproc)
    print(f"report: {os.path.join(out, 'report.md')}")
    return 0 if summary else 1


def cmd_compare(args):
    return compare(args.a, args.b, args.metric, args.alpha, args.tracks)


def cmd_leaderboard(args):
    from records import leaderboard
    for path in leaderboard.write_leaderboard(RECORDS_DIR, args.readme, args.tracks,
                                              report=lambda line: print(trust.printable(f"left out {line}"))):
        print(trust.printable(f"wrote {path}"))
    if not args.serve:
        return 0
    server = leaderboard.make_server(os.path.join(RECORDS_DIR, "leaderboard.html"), args.port)
    print(f"serving http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m records", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", default=TRACKS_FILE, help="the tracks file")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="build a record folder from run folders, then validate it")
    new.add_argument("--track", required=True)
    new.add_argument("--slug", required=True, help="short name: lowercase letters, digits, dashes")
    new.add_argument("--description", default="", help="one line, at most 1000 characters")
    new.add_argument("--author", help="who made it (required for records dated 2026-12-04 or later; default: git "
                                      "config user.name)")
    new.add_argument("--affiliation", help="optional: a lab, company or team")
    new.add_argument("--url", help="optional: http(s) link to the code or write-up")
    new.add_argument("--run-link", dest="run_link", help="optional: http(s) link to the runs (e.g. wandb)")
    new.add_argument("--seeds-note", dest="seeds_note", help="why the runs are not seeds 0..N-1 (such a record ranks "
                                                             "below those that are)")
    new.add_argument("--ab", help="a `records ab` output folder whose IDEA is these runs' commit: its logs go into the "
                                  "record, its time ratio beside the time on the leaderboard")
    new.add_argument("--beats", help="with --ab: the record its BASE is, as TRACK/DATE_SLUG")
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
    both = commands.add_parser("ab", help="run BASE and IDEA interleaved on this machine, the same seeds, until the "
                               "answer is settled", description=__import__("records.ab").ab.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    both.add_argument("base", help="a commit (or 'worktree': this checkout with its uncommitted change)")
    both.add_argument("idea", help="a commit, or 'worktree'")
    both.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then train_gpt.py's arguments for both arms")
    both.add_argument("--out", help="where the worktrees, runs and report go (default: runs/ab_BASE_IDEA)")
    both.add_argument("--metric", default="val_loss", choices=["val_loss", "val_bpb", "core"])
    both.add_argument("--alpha", type=float, default=0.01)
    both.add_argument("--min-pairs", dest="min_pairs", type=int, default=3)
    both.add_argument("--max-pairs", dest="max_pairs", type=int, default=10)
    both.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun when above 1)")
    both.set_defaults(run=cmd_ab)
    again = commands.add_parser("reproduce", help="re-run a record's runs at its commit and compare their losses",
                                description=__import__("records.reproduce").reproduce.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    again.add_argument("record", help="a record folder")
    again.add_argument("--runs", nargs="+", help="run ids to replay (default: all)")
    again.add_argument("--steps", type=int, default=None, help="replay only the first N steps (a spot check)")
    again.add_argument("--data-root", default=None, help="where the config's data paths are (default: this checkout)")
    again.add_argument("--prepare-data", action="store_true", help="first build the track's data under --data-root "
                       "with this checkout's pipeline (tracks whose tracks.json entry has replay_data)")
    again.add_argument("--tolerance", type=float, default=None, help="allowed difference (default, by where the "
                       "replay runs: the same digits on the log's CPU model and kernel level, else "
                       "records/attest.py's OTHER_CPU_TOLERANCE; GPU_TOLERANCE on a GPU)")
    again.add_argument("--attest", action="store_true", help="write the agreeing replay into the record as evidence "
                       "(replays/<date>_<who>.json and its logs), for validate and the leaderboard")
    again.add_argument("--by", default=None, help="who replays, for --attest (default: git config user.name)")
    again.add_argument("--core-bundle-dir", default=None, help="on a track ranked by CORE: where eval_core.py keeps the "
                       "eval bundle it downloads and checks (default: its own, ~/.cache/speedrun)")
    again.set_defaults(run=cmd_reproduce)
    board = commands.add_parser("leaderboard", help="regenerate the README table and records/leaderboard.html")
    board.add_argument("--readme", default=os.path.join(os.path.dirname(RECORDS_DIR), "README.md"))
    board.add_argument("--serve", action="store_true", help="then serve leaderboard.html on http://127.0.0.1:PORT/")
    board.add_argument("--port", type=int, default=8000, help="the port for --serve (0: any free port)")
    board.set_defaults(run=cmd_leaderboard)
    args = parser.parse_args(argv)
    try:
        load_tracks(args.tracks)
        return args.run(args)
    except (RecordError, OSError, KeyError, ValueError) as e:
        print(trust.printable(f"error: {' '.join(str(e).split())}"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
