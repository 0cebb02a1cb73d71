"""A record: the runs behind a claim, and the checks that make the claim trustworthy without trusting anyone.

records/<track>/<YYYY-MM-DD>_<slug>/
    README.md        the idea and the command
    logs/<run>.txt   each run's log.txt as train_gpt.py (and eval_core.py) wrote it
    results.json     per-run values, their mean and standard deviation, the commit, the track, the test
    statistics.md    the same numbers for people

    logs/<run>.diff  only for a run made from a modified tree: its `git diff HEAD` (the log names its sha256)

Nothing from a record is executed: logs and JSON are parsed as text, and the training script's source in a log
is only compared with train_gpt.py at the record's commit. Every figure that decides a rank is re-derived from
the logs' lines (which must agree with each other) and from that commit's own code (its FLOPs formula).
"""

import dataclasses
import datetime
import hashlib
import json
import math
import os
import re
import subprocess
import tempfile

from records import abrecord, attest, instruments, trust
from records.stats import mean_std, one_sample_t_test
from records.trust import RecordError, one_line, printable

SCHEMA_VERSION = 1
TRACKS_FILE = os.path.join(os.path.dirname(__file__), "tracks.json")
SOURCE_END = "=" * 100  # train_gpt.py writes this line after its source


def load_tracks(path=TRACKS_FILE):
    return {track["id"]: track for track in trust.read_json(path)["tracks"]}


# -----------------------------------------------------------------------------
# Reading a run's log: strict about the lines a record is checked against, blind to any other line


@dataclasses.dataclass
class Log:
    path: str
    sha256: str        # of the whole file: the same log twice is one run
    source: str        # train_gpt.py as the run read it
    segments: list     # per start of the script (a resumed run appends one): {"git", "config", "environment", ...}
    events: list       # (line number, kind, fields) in order: "resume", "train", "val", "target", "done", "core"


HEADER_KEYS = ("git", "config", "environment", "data")  # JSON after "key: "
MODEL_LINE = re.compile(r"vocab (\d+); ([\d,]+) FLOPs/token; (\d+) steps of ([\d,]+)"
                        r"(?: to ([\d,]+) tokens, ([\d,]+) in all| tokens)")  # a batch schedule: first, last, total
STEP_HEAD = re.compile(r"step:(\d+)/(\d+)( |$)")
DONE_LINE = re.compile(r"done: (\w+), val_loss:(\S+) val_bpb:(\S+) training_time:(\S+)s( |$)")
CORE_LINE = re.compile(r"core:(\S+) tasks:(\{.*\}) max_per_task:(\S+) bundle_zip_sha256:(\S+)$")
RESUME_LINE = re.compile(r"resumed from .* at step (\d+)$")


def number(text, where):
    try:
        value = float(text)
    except ValueError:
        raise RecordError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise RecordError(f"{where}: {text!r} is not a finite number")
    return value


def parse_step_line(line, where):
    """A step line's step, its total and its fields (key:value words) as strings; a key given twice is refused."""
    head = STEP_HEAD.match(line)
    pairs = [word.split(":", 1) for word in line.split() if ":" in word]
    fields = dict(pairs)
    if len(fields) != len(pairs):
        raise RecordError(f"{where}: a step line with a field given twice")
    return int(head.group(1)), int(head.group(2)), fields


def parse_log(path):
    """The parts of a train_gpt.py log that a record is checked against; RecordError names the file and line."""
    raw, source, lines, first = split_log(path)
    segments, events = [], []
    for number_, line in enumerate(lines, first):
        where = f"{printable(path)}:{number_}"
        key, _, value = line.partition(": ")
        if key in HEADER_KEYS:
            add_header(segments, key, value, number_, where)
        elif line.startswith("model: ") and segments:
            segments[-1]["model"] = model_fields(line, where)
        else:
            event = log_event(line, where)
            if event is not None:
                events.append((number_, *event))
    if not segments:
        raise RecordError(one_line(path, "no git line after the source"))
    for segment in segments:
        missing = [key for key in ("git", "config", "environment", "model") if key not in segment]
        if missing:
            raise RecordError(one_line(f"{path}:{segment['line']}", f"the start of the script wrote no "
                                                                     f"{', '.join(missing)} line"))
    return Log(path, hashlib.sha256(raw).hexdigest(), source, segments, events)


def split_log(path):
    """(the bytes, the train_gpt.py source at the top, the lines after it, the line number of the first of them)."""
    raw = trust.read_bounded(path, trust.LOG_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(one_line(path, f"cannot read ({e})")) from None
    source, sep, rest = text.partition("\n" + SOURCE_END + "\n")
    if not sep:
        raise RecordError(one_line(path, "no train_gpt.py source at the top (no line of 100 '='); is this a "
                                         "train_gpt.py log?"))
    return raw, source, rest.splitlines(), source.count("\n") + 3


def add_header(segments, key, value, line_number, where):
    """A git, config, environment or data line: JSON, once per start of the script (a git line starts one)."""
    if key == "git":
        segments.append({"line": line_number})
    if not segments or key in segments[-1]:
        raise RecordError(f"{where}: a {key} line out of place (each start of the script writes one, after git)")
    try:
        segments[-1][key] = json.loads(value)
    except ValueError:  # not JSON, or an integer of more digits than Python converts
        raise RecordError(f"{where}: the {key} line is not valid JSON") from None


def model_fields(line, where):
    found = MODEL_LINE.search(line)
    if not found:
        raise RecordError(f"{where}: the model line has no 'vocab V; F FLOPs/token; S steps of B tokens'")
    fields = {"vocab_size": int(found.group(1)), "flops_per_token": int(found.group(2).replace(",", "")),
              "num_steps": int(found.group(3)), "batch_tokens": int(found.group(4).replace(",", ""))}
    if found.group(6):  # a batch schedule: the first step's batch, and the tokens of all steps
        fields["total_tokens"] = int(found.group(6).replace(",", ""))
    return fields


def numbers(fields, keys, where, what, hint=""):
    """{key: the field as a finite number} (a key that names a field differently: "tok/s" -> "tok_s")."""
    missing = [k for k in keys if k not in fields]
    if missing:
        raise RecordError(f"{where}: {what} without {', '.join(missing)}{hint}")
    return {k.replace("/", "_"): number(fields[k], where) for k in keys}


def log_event(line, where):
    """(kind, fields) of a resume, step, validation, target, done or core line; None for any other line."""
    if RESUME_LINE.match(line):
        return "resume", {"step": int(RESUME_LINE.match(line).group(1))}
    if STEP_HEAD.match(line):
        step, total, fields = parse_step_line(line, where)
        if "train_loss" in fields:
            keys = ("train_loss", "step_ms", "tok/s", "train_time_ms") + (("tokens",) if "tokens" in fields else ())
            return "train", {"step": step, "total": total,
                             **numbers(fields, keys, where, "a step line", " (a failed or cut step?)")}
        if "val_loss" in fields:
            keys = ("val_loss", "val_bpb", "train_time_ms")
            return "val", {"step": step, "total": total, **numbers(fields, keys, where, "a validation line")}
        return ("target", {"step": step}) if " reached the target val loss " in line else None
    if line.startswith("done: "):
        found = DONE_LINE.match(line)
        if not found:
            raise RecordError(f"{where}: the done line is not 'done: STATUS, val_loss:L val_bpb:B training_time:Ts'")
        return "done", {"status": found.group(1), "val_loss": number(found.group(2), where),
                        "val_bpb": number(found.group(3), where), "training_time": number(found.group(4), where)}
    if line.startswith("core:"):
        return "core", core_fields(line, where)
    if line.startswith("resources: "):
        try:
            return "resources", json.loads(line[len("resources: "):])
        except ValueError:
            raise RecordError(f"{where}: the resources line is not valid JSON") from None
    return None


def core_fields(line, where):
    found = CORE_LINE.match(line)
    if not found:
        raise RecordError(f"{where}: the core line is not 'core:C tasks:{{...}} max_per_task:M bundle_zip_sha256:S'")
    try:
        tasks = json.loads(found.group(2))
    except ValueError:
        raise RecordError(f"{where}: the core line's tasks are not valid JSON") from None
    return {"core": number(found.group(1), where), "tasks": tasks, "max_per_task": found.group(3),
            "bundle_zip_sha256": found.group(4)}


def run_values(run_dir):
    """The values a record keeps for one run, from its results.json (as train_gpt.py and eval_core.py wrote it)."""
    path = os.path.join(run_dir, "results.json")
    if not os.path.lexists(path):
        raise RecordError(one_line(path, f"missing; is {run_dir} a finished train_gpt.py run?"))
    results = trust.read_json(path)
    try:
        core = results.get("core") or {}
        return {"run_id": results["run_id"], "log": f"logs/{results['run_id']}.txt", "seed": results["seed"],
                "steps": results["steps"], "tokens": results["tokens"], "vocab_size": results["vocab_size"],
                "training_time_s": results["training_time_s"], "val_loss": results["val_loss"],
                "val_bpb": results["val_bpb"], "core": core.get("core"), "model_flops": results["model_flops"],
                "model_flops_per_token": results["model_flops_per_token"], "mfu": results["mfu"],
                "world_size": results["environment"]["world_size"], "gpu": results["environment"]["gpu"],
                "commit": results["git"]["commit"]}
    except (KeyError, TypeError, AttributeError) as e:
        raise RecordError(one_line(path, f"not a finished train_gpt.py run's results ({type(e).__name__}: "
                                         f"{e})")) from None


# -----------------------------------------------------------------------------
# Building a record


def target_test(track, values):
    """The one-sided t-test of a target track, as a dict; None for a budget track."""
    if "target" not in track:
        return None
    alternative = "less" if track["direction"] == "below" else "greater"
    result = one_sample_t_test(values, track["target"], alternative)
    return {"test": "one-sample t-test", "alternative": alternative, "target": track["target"],
            "n": result.n, "t": result.t, "df": result.df, "p_value": result.p_value, "alpha": track["alpha"]}


def summarize(track, runs):
    summary = {}
    for key in ("training_time_s", "val_loss", "val_bpb", "core", "model_flops"):
        values = [run[key] for run in runs if run[key] is not None]
        if values:
            mean, std = mean_std(values)
            summary[key] = {"mean": mean, "std": std, "n": len(values)}
    return summary


SUBMISSION = ("author", "affiliation", "url", "run_link")  # who made a record and where to read more: shown as given


def new_record(track_id, slug, run_dirs, out=None, description="", tracks_file=TRACKS_FILE, date=None, author=None,
               affiliation=None, url=None, run_link=None, seeds_note=None, repo=None, ab_dir=None, beats=None):
    """Builds a record folder from finished runs; returns its path (then validate it). A missing author is left to
    validate to report (it is required of records dated from trust.AUTHOR_REQUIRED_FROM); any other bad field is
    refused here."""
    tracks = load_tracks(tracks_file)
    if track_id not in tracks:
        raise RecordError(f"unknown track {ascii(track_id)}; tracks: {', '.join(tracks)} ({printable(tracks_file)})")
    track = tracks[track_id]
    runs = [run_values(d) for d in run_dirs]
    commits = {run["commit"] for run in runs}
    if len(commits) != 1 or None in commits:
        raise RecordError(f"the runs come from {len(commits)} commits ({printable(sorted(map(str, commits)))}); a "
                          "record is one commit's runs")
    metric = track["metric"]
    repo = repo or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    given = {"author": author, "affiliation": affiliation, "url": url, "run_link": run_link,
             "seeds_note": seeds_note, "modified": modified_files(run_dirs, next(iter(commits)), repo) or None,
             "ab": ab_claim(ab_dir, beats, next(iter(commits)))}
    record = {"schema_version": SCHEMA_VERSION, "track": track_id, "slug": slug,
              "date": date or trust.today().isoformat(), "description": description,
              **{key: value for key, value in given.items() if value is not None}, "commit": commits.pop(),
              "runs": runs, "summary": summarize(track, runs),
              "test": target_test(track, [run[metric] for run in runs])}
    problems = trust.metadata_problems(record, require_author=False)
    problems += [f"run {printable(run['run_id'])}: its log name {printable(run['log'])} is not logs/<letters, digits, "
                 "._+=->.txt" for run in runs
                 if not isinstance(run["run_id"], str) or not trust.LOG_NAME.fullmatch(run["log"])]
    if problems:
        raise RecordError(problems[0])
    out = out or os.path.join(os.path.dirname(tracks_file), track_id, f"{record['date']}_{slug}")
    if os.path.lexists(out):
        raise RecordError(one_line(out, "exists; choose another slug or --out"))
    write_record(out, track, record, run_dirs)
    if ab_dir:
        abrecord.copy_ab(ab_dir, out)
    return out


def ab_claim(ab_dir, beats, commit):
    """results.json's 'ab' for a record made with --ab DIR --beats TRACK/DATE_SLUG: the arms' commits, read from the
    A/B's first base log."""
    if not ab_dir:
        return None
    if not beats:
        raise RecordError("--ab needs --beats TRACK/DATE_SLUG: the record the A/B's BASE is")
    base = parse_log(os.path.join(ab_dir, "runs", "base_s0", "log.txt")).segments[0]["git"].get("commit")
    return {"beats": beats, "base": base, "idea": commit}


def modified_files(run_dirs, commit, repo):
    """The files the runs' trees changed (their git.diff applied to the commit), for results.json's 'modified'."""
    changed = set()
    for run_dir in run_dirs:
        path = os.path.join(run_dir, "git.diff")
        if os.path.lexists(path):
            try:
                changed.update(applied_diff(commit, repo, trust.read_bounded(path, trust.DIFF_BYTES))[0])
            except DiffError as e:
                raise RecordError(one_line(path, e)) from None
    return sorted(changed)


def write_record(out, track, record, run_dirs):
    """The record's folder: its runs' logs (and diffs), results.json, statistics.md and README.md."""
    os.makedirs(os.path.join(out, "logs"))
    for run_dir, run in zip(run_dirs, record["runs"]):
        copy_bounded(os.path.join(run_dir, "log.txt"), os.path.join(out, run["log"]), trust.LOG_BYTES)
        if os.path.lexists(os.path.join(run_dir, "git.diff")):  # a run from a modified tree: its `git diff HEAD`
            copy_bounded(os.path.join(run_dir, "git.diff"), os.path.join(out, f"logs/{run['run_id']}.diff"),
                         trust.DIFF_BYTES)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(record, f, indent=2)
    with open(os.path.join(out, "statistics.md"), "w") as f:
        f.write(statistics_markdown(track, record))
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(f"# {record['track']}: {record['slug']}\n\n{record['description'] or '(describe the idea here)'}\n\n"
                f"Commit `{record['commit']}`, {len(record['runs'])} runs. Command (from the first log):\n\n```\n"
                f"{first_command(out, record['runs'][0])}\n```\n")


def copy_bounded(source, destination, cap):
    """A copy of a plain file of at most cap bytes (a symlink or a device is refused, not followed)."""
    data = trust.read_bounded(source, cap)
    with open(destination, "wb") as f:
        f.write(data)


def first_command(out, run):
    text = trust.read_bounded(os.path.join(out, run["log"]), trust.LOG_BYTES).decode("utf-8", errors="replace")
    return next((line[len("command: "):] for line in text.splitlines() if line.startswith("command: ")), "?")


def statistics_markdown(track, record):
    lines = [f"# Statistics: {record['track']} / {record['slug']}", "", "| value | mean | std | n |", "|---|---|---|---|"]
    for key, s in record["summary"].items():
        lines.append(f"| {key} | {s['mean']:.6g} | {s['std']:.3g} | {s['n']} |")
    test = record["test"]
    if test:
        lines += ["", f"One-sided one-sample t-test of {track['metric']} ({test['alternative']} than {test['target']}): "
                  f"t = {test['t']:.4f}, df = {test['df']}, p = {test['p_value']:.3g} (needs p < {test['alpha']})."]
    else:
        lines += ["", f"Budget: {track['budget_flops']:.3g} model FLOPs per run."]
    return "\n".join(lines) + "\n"


# -----------------------------------------------------------------------------
# Validating a record: everything that decides a rank is re-derived from the logs and the commit; every failure
# is one line that names the file and the reason


def close(a, b, rel=1e-9, abs_tol=0.0):
    return a is not None and b is not None and math.isclose(a, b, rel_tol=rel, abs_tol=abs_tol)


# A track's default limit on the val tokens that lie in long n-grams the train shards also hold (data/overlap.py):
# copies of boilerplate stay well below it on real corpora (the embedded sample: 0.04%), a copied val set is near 1.
MAX_VAL_OVERLAP = 0.01
SIX_DECIMALS = 5e-7 + 1e-12  # a value the log prints with 6 decimals
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()  # the diff of a clean tree
RESUMABLE = "RESUMABLE_CHANGES"  # train_gpt.py's set of options a resumed run may change


def source_at_commit(commit, repo):
    """train_gpt.py at a commit, or None when the commit is not in this repository."""
    if not re.fullmatch(r"[0-9a-f]{40}", commit or ""):
        return None
    shown = subprocess.run(["git", "show", f"{commit}:train_gpt.py"], capture_output=True, cwd=repo)
    return shown.stdout.decode("utf-8") if shown.returncode == 0 else None


def file_at_commit(commit, repo, path):
    """Whether the commit's tree holds the file (what the code at that commit logs: newer checks apply to it)."""
    return subprocess.run(["git", "cat-file", "-e", f"{commit}:{path}"], capture_output=True, cwd=repo).returncode == 0


def resumable_at_commit(source, commit, repo):
    """The options a resumed run may change at a commit (RESUMABLE_CHANGES, in its train_gpt.py or, later, in
    harness/checkpoint.py), read as a literal: nothing of the commit runs."""
    found = instruments.literal(source, RESUMABLE)
    if found is None:
        shown = subprocess.run(["git", "show", f"{commit}:harness/checkpoint.py"], capture_output=True, cwd=repo)
        found = instruments.literal(shown.stdout.decode("utf-8", errors="replace"), RESUMABLE) \
            if shown.returncode == 0 else None
    return set(found or ())


def commit_time(commit, repo):
    """The earliest calendar date of a commit: its committer date in the committer's time zone or in UTC."""
    shown = subprocess.run(["git", "show", "-s", "--format=%cs %ct", commit], capture_output=True, text=True, cwd=repo)
    if shown.returncode != 0 or len(shown.stdout.split()) != 2:
        return None
    local, stamp = shown.stdout.split()
    utc = datetime.datetime.fromtimestamp(int(stamp), datetime.timezone.utc).date()
    return min(datetime.date.fromisoformat(local), utc)


def is_merged(commit, repo):
    """Whether a commit is an ancestor of the checkout's HEAD: code already reviewed and merged, the only code from a
    record's commit that validate runs."""
    return subprocess.run(["git", "merge-base", "--is-ancestor", commit, "HEAD"], capture_output=True,
                          cwd=repo).returncode == 0


# The files a record's tree may have changed: prose, which nothing runs or reads while training (anything else, a
# shell script, a JSON of tracks, a wheel, pyproject.toml, may change what runs or what is checked)
PROSE_FILE = re.compile(r"(.*/)?([^/]+\.(md|rst)|(README|LICENSE|NOTICE|CHANGELOG|AUTHORS)(\.(md|rst|txt))?)",
                        re.IGNORECASE)


PLAIN_FILE_MODE = "100644"  # what a prose file of a modified tree may be: not a symlink, an executable, a submodule


class DiffError(RecordError):
    """A run's diff that does not apply to the record's commit."""


def applied_diff(commit, repo, diff):
    """What a `git diff HEAD` (its bytes) does to the commit's tree, read off the result of applying it with git (never
    parsed as text: a hunk under a crafted header, or with no `diff --git` header at all, is applied as git applies
    it): ({path: its mode after, None when deleted}, train_gpt.py after). The objects go to a scratch repository that
    borrows this one's (alternates), so nothing is written here. DiffError when it does not apply."""
    objects = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], capture_output=True,
                             text=True, cwd=repo, check=True).stdout.strip() + "/objects"
    with tempfile.TemporaryDirectory() as tmp:
        scratch = os.path.join(tmp, "scratch.git")
        subprocess.run(["git", "init", "-q", "--bare", scratch], capture_output=True, check=True)
        with open(os.path.join(scratch, "objects", "info", "alternates"), "w") as f:
            f.write(objects + "\n")
        with open(os.path.join(tmp, "run.diff"), "wb") as f:
            f.write(diff)
        env = {**os.environ, "GIT_DIR": scratch, "GIT_INDEX_FILE": os.path.join(tmp, "index")}
        git = lambda *args: subprocess.run(["git", *args], capture_output=True, env=env, cwd=tmp)
        if git("read-tree", commit).returncode != 0:
            raise DiffError(f"commit {commit[:12]} cannot be read")
        applied = git("apply", "--cached", "--whitespace=nowarn", "run.diff")
        if applied.returncode != 0:
            reason = applied.stderr.decode("utf-8", errors="replace").strip().splitlines() or ["no reason given"]
            raise DiffError(f"does not apply to commit {commit[:12]} with git apply ({reason[0]})")
        tree = git("write-tree").stdout.decode().strip()
        raw = git("diff-tree", "-r", "--no-renames", "-z", commit, tree).stdout.decode("utf-8", errors="replace")
        source = git("show", f"{tree}:train_gpt.py")
    fields, changes = raw.split("\0"), {}
    for meta, path in zip(fields[0::2], fields[1::2]):  # ":old_mode new_mode old_sha new_sha status", then the path
        if meta.startswith(":"):
            mode = meta[1:].split()[1]
            changes[path] = None if set(mode) == {"0"} else mode
    return changes, (source.stdout.decode("utf-8", errors="replace") if source.returncode == 0 else None)


def code_changes(changes):
    """The changes of applied_diff that are not prose in a plain file: what could change what runs or is read."""
    return sorted(path for path, mode in changes.items()
                  if not PROSE_FILE.fullmatch(path) or mode not in (None, PLAIN_FILE_MODE))


RUN_SCHEMA = {"run_id": str, "log": str, "seed": int, "steps": int, "tokens": int, "vocab_size": int,
              "training_time_s": float, "val_loss": float, "val_bpb": float, "core": (float, None),
              "model_flops": int, "model_flops_per_token": int, "mfu": (float, None), "world_size": int,
              "gpu": (str, None), "commit": str}


def schema_problem(value, kind):
    """Why value is not of the kind (float accepts int; int and float refuse bool; None allowed when listed)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if value is None:
        return None if None in kinds else "is missing"
    for k in kinds:
        if k is float and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return None
        if k in (int, str, list, dict) and isinstance(value, k) and not isinstance(value, bool):
            return None
    return f"is not {' or '.join('null' if k is None else k.__name__ for k in kinds)}"


def pin_source(track, key):
    """Which pin and where its value came from (tracks.json's pin_sources), for every refusal on a pin."""
    source = (track.get("pin_sources") or {}).get(key) or "no source noted"
    return f"pin {track['id']}: {key} in tracks.json; source: {source}"


def pin_note(track, key, shown=None):
    pins, _ = track_pins(track)
    return f"the track's {pins[key] if shown is None else shown} ({pin_source(track, key)})"


def track_pins(track):
    """(pins, unpinned): what the track fixes of the data and the CORE bundle; the keys that tracks.json lists
    without a value yet (no record of the track can be accepted until a maintainer pins them)."""
    pins = {**track.get("data", {}), **{f"core.{k}": v for k, v in (track.get("core") or {}).items()}}
    return pins, sorted(key for key, value in pins.items() if value is None)


STEP_COUNTS = {"log_every": 1, "val_every": 0, "save_every": 0, "stop_after": 0}  # and the least value of each


def next_logged_step(last, start, config, num_steps):
    """The step after `last` at which train_gpt.py's loop (train()) reads the loss and writes a step line: a
    multiple of log_every, a validation (a multiple of val_every, the last step), a checkpoint (a multiple of
    save_every), or the stop of a time-sliced job (stop_after steps after the step its process started from)."""
    due = [num_steps]
    for every in (config.get("log_every", 1), config.get("val_every", 0), config.get("save_every", 0)):
        if every:
            due.append((last // every + 1) * every)
    stop = start + config.get("stop_after", 0)
    if config.get("stop_after") and last < stop < num_steps:
        due.append(stop)
    return min(due)


def replay(log, fail):
    """The step, validation and done lines replayed in order (a resume goes back to its step); returns what they
    establish, or None after the first inconsistency (reported)."""
    state = Replay(log)
    for line, kind, event in log.events:
        problem = state.read(line, kind, event)
        if problem:
            fail(log.path, f"line {line}: {problem}")
            return None
    problem = state.ending_problem()
    if problem:
        fail(log.path, problem)
        return None
    return state.result()


class Replay:
    """The running state of a log's replay. A step line's step_ms is the mean over the steps since the previous step
    line (every step with log_every 1), so the running time grows by step_ms x those steps."""

    def __init__(self, log):
        self.log = log
        self.total_ms = {0: 0.0}  # logged step -> sum of the step times up to it, on the path that survived
        self.tokens = {0: 0}      # logged step -> tokens trained on up to it (a batch schedule's step lines say)
        self.losses, self.times, self.last, self.num_steps = {}, {}, 0, None
        self.val = self.done = self.target = None
        self.segment, self.start = 0, 0  # the start of the script that wrote the line, the step it started from

    def read(self, line, kind, e):
        """One event; the problem with it, or None."""
        while self.segment + 1 < len(self.log.segments) and self.log.segments[self.segment + 1]["line"] < line:
            self.segment += 1
        if self.done is not None and kind in ("resume", "train", "val", "target", "done"):
            return f"a {kind} line after the done line"
        if kind in ("train", "val") and self.num_steps not in (None, e["total"]):
            return f"step {e['step']}/{e['total']}, but earlier lines count {self.num_steps} steps"
        handler = {"resume": self.resume, "train": self.train, "val": self.validation, "target": self.reached,
                   "done": self.finished}.get(kind)
        return handler(e) if handler else None

    def resume(self, e):
        if e["step"] not in self.total_ms:
            return f"resumes at step {e['step']}, which the log never reached"
        self.last = self.start = e["step"]
        for step in [s for s in self.total_ms if s > self.last]:
            del self.total_ms[step], self.losses[step], self.times[step]
            self.tokens.pop(step, None)
        self.val = self.target = None
        return None

    def train(self, e):
        config, self.num_steps, prev = self.log.segments[self.segment]["config"], e["total"], self.last
        expected = next_logged_step(prev, self.start, config, self.num_steps)
        if e["step"] != expected:
            return f"step {e['step']} follows step {prev}; " + (
                "the step lines must be consecutive" if expected == prev + 1 else
                f"train_gpt.py writes step {expected} next (log_every {config.get('log_every')})")
        step = self.last = e["step"]
        self.total_ms[step] = self.total_ms[prev] + e["step_ms"] * (step - prev)
        self.losses[step], self.times[step] = e["train_loss"], e["step_ms"]
        # train_time_ms is the exact running total rounded to 1 ms; each step_ms is rounded to 0.01 ms
        if abs(e["train_time_ms"] - self.total_ms[step]) > 0.5 + 0.005 * step + 1e-6:
            return (f"the step times sum to {self.total_ms[step]:.2f} ms at step {step}, but the line says "
                    f"train_time_ms:{e['train_time_ms']:.0f}")
        model = self.log.segments[0]["model"]
        if ("total_tokens" in model) != ("tokens" in e):
            return "the step lines say the tokens so far when the model line has a batch schedule, and only then"
        if "tokens" in e:  # a batch schedule: the window's tokens from the running count
            if e["tokens"] != int(e["tokens"]) or e["tokens"] <= self.tokens[prev]:
                return f"tokens:{e['tokens']:.0f} does not grow from the step line before"
            self.tokens[step] = int(e["tokens"])
        else:
            self.tokens[step] = self.tokens[prev] + model["batch_tokens"] * (step - prev)
        batch = (self.tokens[step] - self.tokens[prev]) / (step - prev)  # a step's tokens, on average in the window
        low, high = batch * 1000 / (e["step_ms"] + 0.005) - 0.5, batch * 1000 / max(e["step_ms"] - 0.005, 1e-9) + 0.5
        if not low <= e["tok_s"] <= high:
            return f"tok/s:{e['tok_s']:.0f} is not {batch:,.0f} tokens a step in step_ms:{e['step_ms']}"
        return None

    def validation(self, e):
        self.num_steps, last = e["total"], self.last
        if e["step"] != last or abs(e["train_time_ms"] - self.total_ms[last]) > 0.5 + 0.005 * last + 1e-6:
            return (f"the validation at step {e['step']} (train_time_ms:{e['train_time_ms']:.0f}) does not follow "
                    f"the step lines (step {last}, {self.total_ms[last]:.2f} ms)")
        self.val = e
        return None

    def reached(self, e):
        if self.val is None or e["step"] != self.val["step"]:
            return f"reaching the target is claimed without a validation at step {e['step']}"
        self.target = e
        return None

    def finished(self, e):
        self.done = e
        return None

    def ending_problem(self):
        """What is wrong with how the log ends (the done line against the last validation and the steps), or None."""
        done, val, last, total_ms = self.done, self.val, self.last, self.total_ms
        if done is None:
            return "no done line: the run did not finish"
        if val is None or val["step"] != last:
            return f"the last validation line is not at the last step ({last}): the final val loss is not logged"
        expected = "target_reached" if self.target else "finished"
        if done["status"] != expected or (expected == "finished" and last != self.num_steps):
            return (f"the done line says {done['status']} after step {last} of {self.num_steps}"
                    f"{' and a reached target' if self.target else ''}")
        if (done["val_loss"], done["val_bpb"]) != (round(val["val_loss"], 6), round(val["val_bpb"], 6)):
            return (f"the done line's val_loss:{done['val_loss']} val_bpb:{done['val_bpb']} are not the last "
                    f"validation's {val['val_loss']} and {val['val_bpb']}")
        if abs(done["training_time"] * 1000 - total_ms[last]) > 5 + 0.005 * last + 1e-6:
            return (f"the done line's training_time:{done['training_time']}s is not the sum of the step times "
                    f"({total_ms[last] / 1000:.3f} s)")
        return None

    def result(self):
        val, last = self.val, self.last
        return {"steps": last, "num_steps": self.num_steps, "step_ms_sum": self.total_ms[last],
                "tokens": self.tokens[last],
                "status": self.done["status"], "val_loss": val["val_loss"], "val_bpb": val["val_bpb"],
                "train_time_ms": val["train_time_ms"], "done_training_time": self.done["training_time"],
                "curve": {s: self.losses[s] for s in sorted(self.losses)},
                "step_times": tuple(self.times[s] for s in sorted(self.times))}


def check_data(log, config, track, fail):
    """The data line: tokenizer, train and val files and the scored val text, against each other and the track."""
    data = log.segments[0].get("data")
    if data is None:
        fail(log.path, "no data line (tokenizer, train and val identity, val tokens and bytes): the data the run "
                       "trained and evaluated on cannot be checked; re-run with a train_gpt.py that logs it")
        return
    schema = {"tokenizer_sha256": str, "train_shards": list, "val_shards": list, "train_source": (list, None),
              "val_source": (list, None), "val_tokens": int, "val_bytes": int}
    bad = [f"{key} {problem}" for key, kind in schema.items() if (problem := schema_problem(data.get(key), kind))]
    files = [f for key in ("train_shards", "val_shards", "train_source", "val_source") for f in data.get(key) or []]
    if not bad and not all(isinstance(f, dict) and isinstance(f.get("sha256"), str) for f in files):
        bad.append("a file entry without a sha256")
    if bad:
        fail(log.path, f"the data line: {'; '.join(bad)}")
        return
    shas = {key: [f["sha256"] for f in data[key] or []] for key in ("train_shards", "val_shards", "train_source",
                                                                   "val_source")}
    shared = set(shas["train_shards"] + shas["train_source"]) & set(shas["val_shards"] + shas["val_source"])
    if shared:
        fail(log.path, f"the run trained on its validation data (sha256 {sorted(shared)[0][:12]} is in both)")
    scored = config["val_tokens"] // config["seq_len"] * config["seq_len"]
    if data["val_tokens"] != scored:
        fail(log.path, f"the data line scores {data['val_tokens']:,} val tokens; the config's val_tokens "
                       f"{config['val_tokens']:,} at seq_len {config['seq_len']} scores {scored:,}")
    pins, _ = track_pins(track)
    for key in ("tokenizer_sha256", "val_tokens"):
        if pins.get(key) is not None and data[key] != pins[key]:
            fail(log.path, f"{key} {data[key]} is not {pin_note(track, key)}")
    for key in ("val_shards", "val_source", "train_source"):
        if pins.get(f"{key}_sha256") is not None and shas[key] != pins[f"{key}_sha256"]:
            fail(log.path, f"the {key.replace('_', ' ')} (sha256 {[s[:12] for s in shas[key]]}) are not "
                           f"{pin_note(track, f'{key}_sha256', [s[:12] for s in pins[f'{key}_sha256']])}")
    if pins.get("val_bytes") is not None:
        tolerance = pins.get("val_bytes_rel_tol", 0.0) * pins["val_bytes"]
        if abs(data["val_bytes"] - pins["val_bytes"]) > tolerance:
            fail(log.path, f"{data['val_bytes']:,} val bytes scored; the track compares bits per byte on "
                           f"{pins['val_bytes']:,} (± {tolerance:,.0f}) bytes of its val text "
                           f"({pin_source(track, 'val_bytes')})")


def check_val_overlap(log, track, required, fail):
    """The data line's val/train overlap (data/overlap.py: val tokens in long n-grams the train shards also hold)
    within the track's limit; required of runs made at a commit that measures it."""
    data = log.segments[0].get("data")
    if not isinstance(data, dict):
        return  # check_data said so
    measured = data.get("val_overlap")
    if measured is None:
        if required:
            fail(log.path, "no val/train overlap in the data line: the val text was not checked against the train "
                           "shards; run python -m data.overlap on the shards (data.tokenize does) and train again")
        return
    fraction = measured.get("fraction") if isinstance(measured, dict) else None
    if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 <= fraction <= 1):
        fail(log.path, "the data line's val_overlap has no fraction in [0, 1]")
        return
    limit = track_pins(track)[0].get("max_val_overlap") or MAX_VAL_OVERLAP
    if fraction > limit:
        fail(log.path, f"{fraction:.2%} of the val tokens lie in {measured.get('ngram')}-token n-grams that the "
                       f"train shards also hold (the limit is {limit:.2%}): the run trained on its validation text")


# A track's rules on what a run may use besides its timed work (tracks.json "rules"), each a figure of the log's
# resources line (harness/resources.py) and its most
RULES = {
    "max_params": ("parameters", lambda r: sum(r["params"][k] for k in ("embedding", "matrices", "other"))),
    "max_embedding_rows": ("embedding-table rows", lambda r: r["params"]["embedding_rows"]),
    "max_buffer_elements": ("model buffer elements", lambda r: r["params"]["buffers"]),
    "max_host_bytes": ("peak host memory of a process (bytes)", lambda r: max(r["host_peak_bytes"])),
    "max_gpu_bytes": ("peak GPU memory (bytes)", lambda r: r["gpu_peak_bytes"]),
    "max_untimed_s": ("untimed set-up and warm-up (s)", lambda r: r["untimed_s"].get("setup", 0)
                      + r["untimed_s"].get("warm-up", 0)),
    "max_loop_cpu_s": ("CPU time of a process inside the timed loop (s)", lambda r: max(r["loop_cpu_s"])),
    "max_read_bytes": ("bytes read outside the memory-mapped shards", lambda r: r["read_setup_bytes"]
                       + r["read_loop_bytes"]),
}


def check_resources(log, track, required, fail):
    """The log's last resources line against the track's rules: a broken rule is refused naming it and the figure.
    Returns what the leaderboard shows: "kept: ..." (the rules), "no limit", or "not measured" (a run at a commit
    before harness/resources.py; one at a later commit must have the line)."""
    found = [e for _, kind, e in log.events if kind == "resources"]
    rules = track.get("rules") or {}
    if not found:
        if required:
            fail(log.path, "no resources line: the run's commit measures what it used (harness/resources.py), and a "
                           "finished run logs it; is the log cut short?")
        return "not measured"
    figures = found[-1]
    for rule, most in sorted(rules.items()):
        if rule not in RULES:
            fail(TRACKS_FILE, f"track {track['id']}: unknown rule {rule!r} (records/record.py RULES)")
            continue
        what, figure = RULES[rule]
        try:
            value = figure(figures)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise TypeError
        except (KeyError, TypeError, ValueError, AttributeError):
            fail(log.path, f"the resources line has no {what} for the track's rule {rule}")
            continue
        if value > most:
            fail(log.path, f"{what} {value:,.6g} breaks the track's rule {rule} = {most:,.6g}")
    return f"kept: {', '.join(sorted(rules))}" if rules else "no limit"


def check_core(log, run, track, fail):
    """The last core line (eval_core.py's) against results.json and, on a CORE track, the track's bundle."""
    lines = [e for _, kind, e in log.events if kind == "core"]
    core = lines[-1] if lines else None
    if run["core"] is not None and (core is None or not close(core["core"], run["core"], abs_tol=SIX_DECIMALS)):
        fail(log.path, f"CORE {core and core['core']} in the log, {run['core']} in results.json")
        return
    pins = track.get("core")
    if not pins:
        return
    if core is None or run["core"] is None:
        fail(log.path, "no CORE: the track ranks by CORE (python eval_core.py --run-dir RUN before the record)")
        return
    baselines = pins.get("baselines") or {}
    if set(core["tasks"]) != set(baselines):
        fail(log.path, f"CORE over {len(core['tasks'])} tasks; the track's bundle has {len(baselines)} "
                       f"(missing: {', '.join(sorted(set(baselines) - set(core['tasks']))) or 'none'}; extra: "
                       f"{', '.join(sorted(set(core['tasks']) - set(baselines))) or 'none'})")
        return
    if core["max_per_task"] != "None":
        fail(log.path, f"CORE on at most {core['max_per_task']} rows per task; the track needs every row")
    if pins.get("bundle_zip_sha256") is not None and core["bundle_zip_sha256"] != pins["bundle_zip_sha256"]:
        fail(log.path, f"CORE from bundle {core['bundle_zip_sha256']}, not "
                       f"{pin_note(track, 'core.bundle_zip_sha256', pins['bundle_zip_sha256'])}")
    centered = [(core["tasks"][t] - b / 100) / (1 - b / 100) for t, b in baselines.items()]
    if not all(isinstance(a, (int, float)) for a in core["tasks"].values()) or not close(
            sum(centered) / len(centered), core["core"], abs_tol=SIX_DECIMALS):
        fail(log.path, f"CORE {core['core']} is not the mean centered accuracy of its tasks "
                       f"({sum(centered) / len(centered):.6f} with the track's baselines)")


def check_run(run, log, ctx, fail):
    """One run of a record against its log, the commit's source and the track; returns what the replay found."""
    if not check_start(run, log, ctx, fail) or not check_source(log, ctx, fail):
        return None
    config = log.segments[0]["config"]
    if config.get("seed") != run["seed"]:
        fail(log.path, f"seed {config.get('seed')} in the config, {run['seed']} in results.json")
    replayed = replay(log, fail)
    if replayed is None:
        return None
    check_figures(run, log, replayed, fail)
    check_place(run, log, ctx, fail)
    return replayed


def check_start(run, log, ctx, fail):
    """Every start of the script: numbers in range before any arithmetic (trust.CONFIG_RANGES, the model line), the
    same commit, settings (but for what a resume may change), model and data as the first, step counts that
    train_gpt.py runs with; and the record's commit."""
    first, record = log.segments[0], ctx["record"]
    git, config, model = first["git"], first["config"], first["model"]
    for segment in log.segments:
        if not isinstance(segment["config"], dict):
            fail(log.path, f"line {segment['line']}: the config line is not a JSON object")
            return False
        bad = trust.config_problems(segment["config"]) + trust.model_problems(segment["model"])
        counts = {key: segment["config"].get(key, least) for key, least in STEP_COUNTS.items()}
        bad += [f"{key}={value!r} (no step count train_gpt.py runs with)" for key, value in counts.items()
                if type(value) is not int or value < STEP_COUNTS[key]]  # next_logged_step follows from these
        if bad:
            fail(log.path, f"line {segment['line']}: out of range in the config or model line: {', '.join(bad)}")
            return False
        changed = sorted(k for k in set(config) | set(segment["config"])
                         if config.get(k) != segment["config"].get(k) and k not in ctx["resumable"])
        changed += [f"{key} (environment)" for key in moved_environment(first, segment)]
        if segment["git"] != git or changed or segment["model"] != model or segment.get("data") != first.get("data"):
            fail(log.path, f"line {segment['line']}: the run was resumed with another "
                           f"{'commit' if segment['git'] != git else ', '.join(changed) or 'model or data'}")
            return False
    if not isinstance(git, dict) or git.get("commit") != record["commit"] or run["commit"] != record["commit"]:
        fail(log.path, f"commit {git.get('commit') if isinstance(git, dict) else git} (results.json: "
                       f"{run['commit']}) is not the record's {record['commit']}")
        return False
    return True


# What a resume must keep of the first start's environment: the hardware and the software that do the math (a CPU
# run's sums also depend on the CPU model and the thread count; a GPU run's host CPU does not matter)
SAME_ENVIRONMENT = ("device", "world_size", "gpu", "torch", "cuda")
SAME_CPU_ENVIRONMENT = ("cpu", "threads", "cpu_capability")


def moved_environment(first, segment):
    """The environment keys in which a later start differs from the first."""
    before, after = first["environment"], segment["environment"]
    if not isinstance(before, dict) or not isinstance(after, dict):
        return ["the environment line"] if before != after else []
    keys = SAME_ENVIRONMENT + (SAME_CPU_ENVIRONMENT if not before.get("gpu") else ())
    return [key for key in keys if before.get(key) != after.get(key)]


def check_source(log, ctx, fail):
    """The source at the top of the log is train_gpt.py at the record's commit (with the run's logs/<run>.diff
    applied when the tree was dirty; a diff that changes code is refused, validate never runs it)."""
    committed, git, commit = ctx["source"], log.segments[0]["git"], ctx["record"]["commit"]
    if committed is None:
        return True
    diff_path = os.path.splitext(log.path)[0] + ".diff"
    if git.get("dirty") is not False or git.get("diff_sha256") != EMPTY_SHA256:
        if not os.path.lexists(diff_path):
            fail(log.path, f"written from a modified tree (git diff sha256 {str(git.get('diff_sha256'))[:12]}): "
                           f"put that diff (`git diff HEAD`) in {os.path.basename(diff_path)}, or commit and re-run")
            return False
        diff = trust.read_bounded(diff_path, trust.DIFF_BYTES)
        diff_sha = hashlib.sha256(diff).hexdigest()
        if diff_sha != git.get("diff_sha256"):
            fail(diff_path, f"sha256 {diff_sha[:12]} is not the log's diff_sha256 {str(git.get('diff_sha256'))[:12]}")
            return False
        try:
            changes, committed = applied_diff(commit, ctx["repo"], diff)
        except DiffError as e:
            fail(diff_path, e)
            return False
        code = code_changes(changes)
        if code:  # validate never runs a diff's code, and a record's figures are those of committed code
            fail(diff_path, f"changes more than prose in plain files ({', '.join(code)}, as git applies it): "
                            "commit the change, run again and make the record from that commit")
            return False
        ctx["modified"].update(changes)
    if log.source != committed:
        fail(log.path, f"the train_gpt.py source in the log does not match train_gpt.py at commit {commit[:12]}"
                       f"{' with the diff' if git.get('dirty') else ''} (sha256 "
                       f"{hashlib.sha256(log.source.encode()).hexdigest()[:12]} vs "
                       f"{hashlib.sha256(committed.encode()).hexdigest()[:12]})")
        return False
    return True


def check_figures(run, log, replayed, fail):
    """results.json's steps, time, val loss and bpb are the replayed log's; the model line and config agree."""
    config, model = log.segments[0]["config"], log.segments[0]["model"]
    if replayed["steps"] != run["steps"]:
        fail(log.path, f"the step lines cover steps 1..{replayed['steps']}, results.json says {run['steps']} steps")
    time_ms = run["training_time_s"] * 1000
    if abs(time_ms - replayed["step_ms_sum"]) > 0.005 * replayed["steps"] + 1e-6:
        fail(log.path, f"the step times sum to {replayed['step_ms_sum'] / 1000:.5f} s, but results.json says "
                       f"{run['training_time_s']:.5f} s")
    elif abs(time_ms - replayed["train_time_ms"]) > 0.5 + 1e-6 or abs(
            run["training_time_s"] - replayed["done_training_time"]) > 0.005 + 1e-9:
        fail(log.path, f"training time {run['training_time_s']:.5f} s in results.json; the last lines say "
                       f"train_time_ms:{replayed['train_time_ms']:.0f} and training_time:{replayed['done_training_time']}s")
    for key in ("val_loss", "val_bpb"):
        if not close(replayed[key], run[key], abs_tol=SIX_DECIMALS):
            fail(log.path, f"final {key} {replayed[key]} in the log, {run[key]} in results.json")
    if (model["vocab_size"], model["num_steps"]) != (run["vocab_size"], replayed["num_steps"]) or (
            "total_tokens" not in model and model["batch_tokens"] != config.get("total_batch_tokens")):
        fail(log.path, f"the model line (vocab {model['vocab_size']}, {model['num_steps']} steps of "
                       f"{model['batch_tokens']:,} tokens) disagrees with results.json's vocab {run['vocab_size']}, "
                       f"the step lines' {replayed['num_steps']} steps or the config's total_batch_tokens")
    if config.get("steps") and replayed["num_steps"] != config["steps"]:
        fail(log.path, f"{replayed['num_steps']} steps, but the config says steps={config['steps']}")
    target = config.get("target_val_loss", 0)
    reached = isinstance(target, (int, float)) and replayed["val_loss"] <= target
    if replayed["status"] == "target_reached" and not reached:
        fail(log.path, f"stopped at the target val loss {target!r}, but its val loss is {replayed['val_loss']}")


def check_flops(runs, logs, replays, ctx, fail):
    """FLOPs per token counted by this checkout's harness (records/instruments.py) for the recipe of the record's
    commit, one count per config (one child process for the record), against the log's model line and results.json;
    tokens and model FLOPs from steps x batch; MFU with the track's peak. A commit whose own harness counted
    otherwise is refused here, with both figures."""
    if not ctx["merged"]:
        return
    starts = [logs[os.path.normpath(run["log"])].segments[0] for run in runs]
    requests = [({k: v for k, v in start["config"].items() if k not in PER_RUN_SETTINGS},
                 start["model"]["vocab_size"], replays[run["run_id"]]["steps"]) for run, start in zip(runs, starts)]
    try:
        counts = instruments.count_flops(ctx["record"]["commit"], requests, ctx["repo"])
        all_tokens = instruments.count_tokens(ctx["record"]["commit"], requests, ctx["repo"])
        all_flops = instruments.count_model_flops(ctx["record"]["commit"], requests, ctx["repo"])
    except Exception as e:  # the recipe on the logged config: any failure is the record's problem
        return fail(ctx["results_path"], f"this checkout's FLOPs count fails on the recipe of commit "
                                         f"{ctx['record']['commit'][:12]} ({type(e).__name__}: {e})")
    for run, start, per_token, tokens, model_flops in zip(runs, starts, counts, all_tokens, all_flops):
        config, model, results_path = start["config"], start["model"], ctx["results_path"]
        if per_token != run["model_flops_per_token"] or per_token != model["flops_per_token"]:
            fail(results_path, f"run {run['run_id']}: {run['model_flops_per_token']:,} FLOPs per token claimed "
                               f"({model['flops_per_token']:,} in the log's model line, counted at its commit), "
                               f"{per_token:,} counted by this checkout's harness for the same recipe: the record's "
                               "commit counts otherwise, and records are counted with one instrument")
        logged = replays[run["run_id"]]["tokens"]
        if run["tokens"] != tokens or run["model_flops"] != model_flops or logged != tokens:
            fail(results_path, f"run {run['run_id']}: tokens or model FLOPs do not follow from the steps and their "
                               f"batches ({tokens:,} tokens by the recipe's batches, counted here; {logged:,} in the "
                               f"log's step lines; {model_flops:,} model FLOPs, each stage at its own count)")
        check_mfu(run, config, start["environment"], model_flops, ctx["track"], results_path, fail)


def check_place(run, log, ctx, fail):
    """Where and on what the run ran: its hardware, the track's pins, its data line and its CORE line."""
    track = ctx["track"]
    config, env, model = log.segments[0]["config"], log.segments[0]["environment"], log.segments[0]["model"]
    if not isinstance(env, dict):
        return fail(log.path, "the environment line is not a JSON object")
    if (env.get("world_size"), env.get("gpu")) != (run["world_size"], run["gpu"]):
        fail(log.path, f"ran on {env.get('world_size')}x {env.get('gpu')}, results.json says "
                       f"{run['world_size']}x {run['gpu']}")
    hardware = track.get("hardware")
    if hardware and (env.get("world_size") != hardware["count"] or hardware["gpu"] not in str(env.get("gpu") or "")):
        fail(log.path, f"ran on {env.get('world_size')}x {env.get('gpu')}, the track is "
                       f"{hardware['count']}x {hardware['gpu']}")
    pins, _ = track_pins(track)
    if pins.get("val_tokens") is not None and config.get("val_tokens") != pins["val_tokens"]:
        fail(log.path, f"val_tokens {config.get('val_tokens')} is not {pin_note(track, 'val_tokens')}")
    if pins.get("vocab_size") is not None and model["vocab_size"] != pins["vocab_size"]:
        fail(log.path, f"vocab {model['vocab_size']} is not {pin_note(track, 'vocab_size')}")
    check_data(log, config, track, fail)
    check_val_overlap(log, track, ctx["overlap_required"], fail)
    check_core(log, run, track, fail)
    ctx.setdefault("resources", {})[run["run_id"]] = check_resources(log, track, ctx["resources_required"], fail)


def check_mfu(run, config, env, model_flops, track, results_path, fail):
    """MFU = model FLOPs / (training time x processes x peak FLOP/s per device), the peak the track's (or this
    checkout's table by GPU name: records/instruments.track_peak), never the run's --peak_flops: a claimed MFU must be
    that figure (a run that set its own peak says so), and the figure at most 1."""
    peak = instruments.track_peak(track, env.get("gpu") if isinstance(env, dict) else None)
    expected = model_flops / (run["training_time_s"] * run["world_size"] * peak) if peak else None
    if expected is not None and not 0 < expected <= 1:
        return fail(results_path, f"run {run['run_id']}: MFU {expected:.3f} with the track's peak of {peak:.4g} "
                                  "FLOP/s per device is above 1: the time or the FLOPs are wrong")
    if config.get("peak_flops") or run["mfu"] is None or expected is None:
        return None  # its own peak (an unlisted GPU), or none: the figure shown is the one computed here
    if not close(expected, run["mfu"], 1e-6):
        fail(results_path, f"run {run['run_id']}: MFU {run['mfu']} claimed, {expected} with the track's peak")


def validate(path, tracks_file=TRACKS_FILE, repo=None):
    """Returns (failures, notes): failures are 'file: reason' lines (none when the record is valid). Never raises:
    a record that cannot be checked fails with the reason."""
    failures, notes = [], []
    try:
        check_record(path, tracks_file, repo, failures, notes)
    except Exception as e:  # a validator reports, it does not crash: the next record is still checked
        failures.append(one_line(os.path.join(path, "results.json"), f"cannot be checked ({type(e).__name__}: {e})"))
    return failures, notes


RECORD_SCHEMA = {"schema_version": int, "track": str, "slug": str, "date": str, "commit": str, "runs": list,
                 "summary": dict}


def check_record(path, tracks_file, repo, failures, notes):
    """The folder (plain files only), results.json's fields, every run against its log, then what the runs claim
    together; stops after a stage that failed (the next would check what is already known to be wrong)."""
    repo = repo or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results_path = os.path.join(path, "results.json")

    def fail(file, reason):  # one line, whatever a record holds (file None: a line that already names its file)
        failures.append(one_line(file, reason) if file is not None else printable(" ".join(str(reason).split())))

    failures += trust.folder_problems(path)
    failures += trust.unknown_files(path) if not failures else []
    if failures:
        return
    try:
        record = trust.read_json(results_path)
    except RecordError as e:
        return failures.append(str(e))
    track = check_header(path, record, tracks_file, fail)
    if failures:
        return
    ctx = commit_context(record, track, results_path, repo, fail)
    check_date(record, ctx, fail)
    check_tracks_file(path, tracks_file, repo, fail)
    runs, logs, replays = record["runs"], {}, {}
    for i, run in enumerate(runs):
        log = check_entry(i, run, path, logs, replays, fail)
        if log is not None:
            logs[os.path.normpath(run["log"])] = log
            replays[run["run_id"]] = check_run(run, log, ctx, fail)
    if failures:
        return
    check_orphans(path, runs, fail)
    check_flops(runs, logs, replays, ctx, fail)
    check_modified(record, ctx["modified"], results_path, fail)
    check_seeds(record, results_path, fail)
    check_distinct(runs, logs, replays, results_path, fail)
    check_one_recipe(runs, logs, results_path, fail)
    check_claims(path, record, track, fail)
    if not failures:
        check_statistics(path, record, track, fail)
    if not failures:
        notes.append(f"replay: {attest.check_attestations(path, record, logs, ctx, fail, parse_log)}")
        ab = abrecord.check_ab(path, record, ctx, fail, parse_log, replay, source_at_commit)
        if ab:
            notes.append(f"ab: {ab}")
        notes.append(f"resources: {resources_summary(ctx.get('resources', {}))}")


def check_date(record, ctx, fail):
    """A record is not dated before its own commit existed (the commit's earliest calendar date: its committer's
    time zone or UTC)."""
    if ctx["source"] is None:
        return
    made = commit_time(record["commit"], ctx["repo"])
    if made is not None and datetime.date.fromisoformat(record["date"]) < made:
        fail(ctx["results_path"], f"dated {record['date']}, before its commit {record['commit'][:12]} existed "
                                  f"({made}): a record is dated when it was made")


def check_tracks_file(path, tracks_file, repo, fail):
    """The track's rules are this checkout's, set before the record: the change that brought a record in does not
    also change tracks.json. That change is the commit on HEAD's first-parent line that first holds the commit which
    added the record's results.json: the commit itself (committed to main, or squashed), or the merge of the branch it
    came on (so a pull request of several commits counts as one change); an uncommitted record: the working tree."""
    if os.path.abspath(tracks_file) != os.path.abspath(TRACKS_FILE):
        return  # a tracks file of the caller's own (tests, a private board): not this repository's rules
    rel = os.path.relpath(TRACKS_FILE, repo)
    added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "results.json"], cwd=path,
                           capture_output=True, text=True)
    commits = added.stdout.split() if added.returncode == 0 else []
    if not commits:
        if subprocess.run(["git", "diff", "--quiet", "HEAD", "--", rel], cwd=repo).returncode == 1:
            fail(TRACKS_FILE, f"is modified in this checkout beside the uncommitted record {printable(path)}: a "
                              "track's rules change in a change of their own; commit or restore tracks.json first")
        return
    change = bringing_change(commits[-1], repo)
    if change is None:
        return  # not on HEAD's line (another branch checked out): the record's own commit is checked below
    parent = subprocess.run(["git", "rev-parse", "--verify", "-q", f"{change}^1"], cwd=repo, capture_output=True,
                            text=True).stdout.strip()
    diff = ["git", "diff", "--quiet", parent, change, "--", rel] if parent else \
        ["git", "diff-tree", "--quiet", "--root", change, "--", rel]
    if subprocess.run(diff, cwd=repo, capture_output=True).returncode == 1:
        what = "which adds the record" if change == commits[-1] else f"the merge that brought in commit " \
                                                                    f"{commits[-1][:12]}, which adds the record"
        fail(TRACKS_FILE, f"changed by commit {change[:12]}, {what} {printable(path)}: a track's rules change in a "
                          "change of their own, before any record is judged by them")


def bringing_change(commit, repo):
    """The oldest commit on HEAD's first-parent line that holds `commit` (a binary search: holding it is monotone
    along that line), or None when HEAD does not hold it."""
    line = subprocess.run(["git", "rev-list", "--first-parent", "HEAD"], cwd=repo, capture_output=True,
                          text=True).stdout.split()[::-1]  # oldest first
    holds = lambda c: subprocess.run(["git", "merge-base", "--is-ancestor", commit, c], cwd=repo,
                                     capture_output=True).returncode == 0
    if not line or not holds(line[-1]):
        return None
    low, high = 0, len(line) - 1
    while low < high:
        middle = (low + high) // 2
        if holds(line[middle]):
            high = middle
        else:
            low = middle + 1
    return line[low]


def train_curve(log_path):
    """{step: train loss} of a log's step lines (the last line of a step wins, as after a resume)."""
    return {e["step"]: e["train_loss"] for _, kind, e in parse_log(log_path).events if kind == "train"}


def across_records(records):
    """{record folder: [failure lines]} of the checks across records that validate (records: {folder: results}): a
    run counts in one record only, by what it did (trust.duplicate_runs)."""
    curves = {}
    for path, record in records.items():
        for run in record.get("runs", []) if isinstance(record, dict) else []:
            try:
                curves[(path, run["run_id"])] = train_curve(os.path.join(path, run["log"]))
            except (RecordError, KeyError, TypeError):
                pass  # validate passed it: a run it cannot read again is left to duplicate_runs's own read
    return trust.duplicate_runs(records, curves)


def check_orphans(path, runs, fail):
    """Every logs/ file belongs to a run of results.json: its log or, beside it, its diff."""
    stems = {os.path.splitext(os.path.basename(run["log"]))[0] for run in runs}
    for name in sorted(os.listdir(os.path.join(path, "logs"))) if os.path.isdir(os.path.join(path, "logs")) else []:
        if os.path.splitext(name)[0] not in stems:
            fail(os.path.join(path, "logs", name), "belongs to no run of results.json: remove it")


def check_seeds(record, results_path, fail):
    """No selection: a record's runs are seeds 0..N-1 of one command. Other seeds need 'seeds_note' (why: one
    line, shown on the leaderboard, which ranks such a record below those that ran seeds 0..N-1)."""
    seeds = sorted(run["seed"] for run in record["runs"])
    note = record.get("seeds_note")
    if seeds == list(range(len(seeds))):
        if note is not None:
            fail(results_path, "'seeds_note' is for records whose seeds are not 0..N-1; remove it")
        return
    problem = trust.text_problem("seeds_note", note, required=True)
    if problem:
        fail(results_path, f"seeds {', '.join(map(str, seeds))} are not 0..{len(seeds) - 1}: a record holds every run "
                           "of seeds 0..N-1 (none dropped), or says why in 'seeds_note' and ranks below those that do "
                           f"({problem})")


def resources_summary(by_run):
    """One word for the record: every run's rules kept, "no limit", or "not measured" when a run has no figures."""
    states = set(by_run.values())
    return "not measured" if "not measured" in states or not states else states.pop() if len(states) == 1 else \
        "kept"


def check_modified(record, changed, results_path, fail):
    """A record from a modified tree says so: results.json's 'modified' lists exactly the files its runs' diffs
    change (the leaderboard shows it); a clean record lists none."""
    said = record.get("modified", [])
    if not (isinstance(said, list) and all(isinstance(f, str) and 0 < len(f) <= 300 for f in said)):
        return fail(results_path, "'modified' is not a list of file names")
    if set(said) != changed:
        fail(results_path, f"'modified' lists {sorted(said) or 'no file'}, the runs' diffs change "
                           f"{sorted(changed) or 'no file'}: a record says what its tree changed, and only that")


def check_header(path, record, tracks_file, fail):
    """results.json's own fields: their types, the track, slug, date and submission fields (trust.metadata_problems),
    the folder it sits in, the schema and the track's pins. Returns the track (None after a failure)."""
    results_path = os.path.join(path, "results.json")
    if not isinstance(record, dict):
        return fail(results_path, "is not a JSON object")
    problems = [f"'{key}' {problem}" for key, kind in RECORD_SCHEMA.items()
                if (problem := schema_problem(record.get(key), kind))]
    for problem in problems or trust.metadata_problems(record):
        fail(results_path, problem)
    if problems:
        return None
    tracks = load_tracks(tracks_file)
    track = tracks.get(record["track"])
    if track is None:
        return fail(results_path, f"unknown track {ascii(record['track'])}")
    parent, name = os.path.basename(os.path.dirname(os.path.abspath(path))), os.path.basename(os.path.abspath(path))
    if parent in tracks and (parent != record["track"] or name != f"{record['date']}_{record['slug']}"):
        fail(results_path, f"a record of track {record['track']} dated {record['date']} with slug {record['slug']} "
                           f"belongs in {record['track']}/{record['date']}_{record['slug']}, not {parent}/{name}")
    if record["schema_version"] != SCHEMA_VERSION:
        fail(results_path, f"schema_version {record['schema_version']} is not {SCHEMA_VERSION}")
    _, unpinned = track_pins(track)
    if unpinned:
        fail(tracks_file, f"track {record['track']} does not pin {', '.join(unpinned)} yet: its records cannot be "
                          "checked until a maintainer pins them")
    return track


def commit_context(record, track, results_path, repo, fail):
    """What the runs are checked against: the commit's train_gpt.py (if the commit is in the repository), whether it
    is merged into HEAD (only then does its recipe run, in the FLOPs count's child process) and the options a resume
    may change (read as a literal)."""
    source = source_at_commit(record["commit"], repo)
    if source is None:
        fail(results_path, f"commit {record['commit']} is not in this repository ({repo}): the logs' source and "
                           "FLOPs cannot be checked; records are made from pushed commits")
    merged = source is not None and is_merged(record["commit"], repo)
    if source is not None and not merged:
        fail(results_path, f"commit {record['commit'][:12]} is not merged into this checkout's HEAD: validate runs "
                           "no recipe of a commit before it is reviewed and merged (its FLOPs count); merge it, or "
                           "check out the branch that holds it, and validate again")
    return {"record": record, "track": track, "results_path": results_path, "source": source, "merged": merged,
            "repo": repo, "resumable": resumable_at_commit(source, record["commit"], repo) if source else set(),
            "overlap_required": source is not None and file_at_commit(record["commit"], repo, "data/overlap.py"),
            "resources_required": source is not None and file_at_commit(record["commit"], repo,
                                                                         "harness/resources.py"),
            "modified": set()}  # the files the runs' diffs change (check_source fills it)


def check_entry(i, run, path, logs, replays, fail):
    """A run's entry in results.json: its fields' types and ranges (trust.RUN_RANGES), its log a plain file
    logs/<name>.txt that no other run uses; returns the parsed log, or None after a failure."""
    results_path = os.path.join(path, "results.json")
    if not isinstance(run, dict):
        return fail(results_path, f"run {i + 1} is not a JSON object")
    bad = [f"'{key}' {problem}" for key, kind in RUN_SCHEMA.items() if (problem := schema_problem(run.get(key), kind))]
    bad = bad or trust.run_problems(run)
    if bad:
        return fail(results_path, f"run {i + 1}: {'; '.join(bad)}")
    if not trust.LOG_NAME.fullmatch(f"logs/{run['run_id']}.txt"):
        return fail(results_path, f"run {i + 1}: run id {printable(run['run_id'])} is not 1-128 letters, digits and "
                                  "._+=- (the first a letter or digit)")
    log_path = os.path.join(path, run["log"])
    if not trust.LOG_NAME.fullmatch(run["log"]) or not os.path.lexists(log_path):
        return fail(results_path, f"run {run['run_id']}: its log {printable(run['log'])} is not in logs/ "
                                  "(logs/<letters, digits, ._+=->.txt, a plain file)")
    if os.path.normpath(run["log"]) in logs or run["run_id"] in replays:
        return fail(results_path, f"run {run['run_id']}: its run id or its log {run['log']} is another run's too")
    try:
        return parse_log(log_path)
    except RecordError as e:
        return fail(None, e)


def check_claims(path, record, track, fail):
    """What the runs claim together: the summary, the number of runs, the budget or the target's t-test."""
    results_path, runs = os.path.join(path, "results.json"), record["runs"]
    for key, s in summarize(track, runs).items():
        claimed = record["summary"].get(key)
        claimed = claimed if isinstance(claimed, dict) else {}
        if not (close(claimed.get("mean"), s["mean"]) and close(claimed.get("std"), s["std"], abs_tol=1e-12)
                and claimed.get("n") == s["n"]):
            fail(results_path, f"summary of {key} does not match its runs (mean {s['mean']:.6g}, std {s['std']:.3g})")
    if len(runs) < track["min_runs"]:
        fail(results_path, f"{len(runs)} runs; the track needs at least {track['min_runs']}")
    metric = [run[track["metric"]] for run in runs]
    if None in metric:
        return fail(results_path, f"a run has no {track['metric']}")
    if "budget_flops" in track:
        over = [run["run_id"] for run in runs if run["model_flops"] > track["budget_flops"]]
        if over:
            fail(results_path, f"runs over the budget of {track['budget_flops']:.3g} model FLOPs: {', '.join(over)}")
        if record.get("test") is not None:
            fail(results_path, "a budget track has no t-test: 'test' must be null")
    elif len(runs) >= 2:
        if len(set(metric)) == 1:
            return fail(results_path, f"every run has {track['metric']} {metric[0]}: zero variance, so no t-test; "
                                      "are these the same run?")
        test = target_test(track, metric)
        if test["p_value"] >= track["alpha"]:
            fail(results_path, f"{track['metric']} mean {sum(metric) / len(metric):.6g} is not {track['direction']} "
                               f"{track['target']} at p < {track['alpha']}: p = {test['p_value']:.3g}")
        claimed = record.get("test") if isinstance(record.get("test"), dict) else {}
        if not all(close(claimed.get(k), test[k], rel=1e-6) for k in ("t", "df", "p_value", "target")):
            fail(results_path, f"the stated t-test does not match the runs (t = {test['t']:.4f}, "
                               f"p = {test['p_value']:.3g})")


def check_statistics(path, record, track, fail):
    stats_path = os.path.join(path, "statistics.md")
    try:
        written = trust.read_text(stats_path, trust.TEXT_BYTES) if os.path.lexists(stats_path) else None
    except RecordError as e:
        return fail(None, e)
    if written != statistics_markdown(track, record):
        fail(stats_path, "is not the statistics of results.json (regenerate it: records.record.statistics_markdown)")


def check_distinct(runs, logs, replays, results_path, fail):
    """Runs are distinct: different seeds, different logs, train-loss curves that are not one run (trust.same_run: a
    copy nudged in its digits, shifted, scaled or noised a little is still a copy), other step times."""
    seeds = [run["seed"] for run in runs]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        fail(results_path, f"seed {repeated[0]} is used by more than one run; runs must differ in seed")
    seen = {}
    for log in logs.values():
        if log.sha256 in seen:
            fail(log.path, f"is the same file as {seen[log.sha256]}: one run counted twice")
        seen.setdefault(log.sha256, log.path)
    curves = {run["run_id"]: replays[run["run_id"]]["curve"] for run in runs}
    for a, b, why in trust.copied_curves(curves):
        fail(results_path, f"runs {a} and {b} are one run counted twice: {why}")
    seen = {}
    for run in runs:
        found = replays[run["run_id"]]["step_times"]
        if found in seen:
            fail(results_path, f"runs {seen[found]} and {run['run_id']} log the same step times at every step: "
                               "one run counted twice")
        seen.setdefault(found, run["run_id"])


# settings a record's runs may differ in: bookkeeping that does not touch training, and where the data lies (what
# it is, by sha256, is the data line's, compared on its own)
PER_RUN_SETTINGS = {"seed", "run_id", "out_dir", "resume", "stop_after", "save_every", "save_final", "wandb",
                    "train_files", "val_files", "tokenizer"}


def check_one_recipe(runs, logs, results_path, fail):
    """A record's runs are one command over several seeds: the same settings (but for PER_RUN_SETTINGS) and the same
    data, so that its mean time and its t-test describe one recipe."""
    first = None
    for run in runs:
        start = logs[os.path.normpath(run["log"])].segments[0]
        recipe = ({k: v for k, v in start["config"].items() if k not in PER_RUN_SETTINGS}, start.get("data"))
        if first is None:
            first = run["run_id"], recipe
            continue
        (name, (config, data)) = first
        differ = sorted(k for k in config.keys() | recipe[0].keys() if config.get(k) != recipe[0].get(k))
        if differ:
            fail(results_path, f"runs {name} and {run['run_id']} were made with other settings ({', '.join(differ)}): "
                               "a record's runs differ only in seed")
        if data != recipe[1]:
            fail(results_path, f"runs {name} and {run['run_id']} trained on other data (their data lines differ)")
