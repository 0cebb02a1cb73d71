"""What a record may hold before anything in it is believed: plain files of bounded size, names and text that print
as one line, metadata of known shape, config values in range before any arithmetic, runs whose loss curves differ,
record folders only where the tracks are, and each log in one record only.

Every refusal is one line, `path: reason`; every name or string from a record is shown through printable().
"""

import datetime
import hashlib
import json
import math
import os
import re
import stat
import subprocess
import unicodedata
import urllib.parse


class RecordError(ValueError):
    """A record that cannot be built or read; the message names the file."""


# -----------------------------------------------------------------------------
# Printing: whatever a record holds, a message about it is one line that shows it as it is

BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
HIDDEN_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs")  # controls, format (bidi, zero-width), line breaks, surrogates


def hidden(char):
    return char in BIDI_CONTROLS or unicodedata.category(char) in HIDDEN_CATEGORIES


def printable(text):
    """text with every control, bidi, zero-width or line-break character written as an escape (\\x0a, \\u202e)."""
    return "".join(char if not hidden(char) else f"\\x{ord(char):02x}" if ord(char) < 0x100 else
                   f"\\u{ord(char):04x}" if ord(char) < 0x10000 else f"\\U{ord(char):08x}" for char in str(text))


def one_line(file, reason):
    """A failure line: `file: reason`, the reason's whitespace runs made one space, then both made printable."""
    return f"{printable(file)}: {printable(' '.join(str(reason).split()))}"


# -----------------------------------------------------------------------------
# Reading: plain files only (never through a symlink), never more than a cap

LOG_BYTES = 64 << 20    # a log: the source (~100 kB) and a step line per step
JSON_BYTES = 1 << 20    # results.json, tracks.json, a run's results.json
TEXT_BYTES = 1 << 20    # README.md, statistics.md
DIFF_BYTES = 16 << 20   # logs/<run>.diff
MAX_ENTRIES = 10_000    # files and folders in one record folder


def read_bounded(path, cap):
    """The bytes of a plain file of at most cap bytes; RecordError for a symlink, a device, a pipe or more bytes."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            raise RecordError(one_line(path, "is a symlink; a record holds only plain files"))
        if not stat.S_ISREG(mode):
            raise RecordError(one_line(path, "is not a plain file"))
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise RecordError(one_line(path, "is not a plain file"))
            data = f.read(cap + 1)
    except OSError as e:
        raise RecordError(one_line(path, f"cannot read ({e.strerror or e})")) from None
    if len(data) > cap:
        raise RecordError(one_line(path, f"is larger than {cap:,} bytes, the most read of such a file"))
    return data


def read_text(path, cap):
    try:
        return read_bounded(path, cap).decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(one_line(path, f"is not UTF-8 ({e.reason} at byte {e.start})")) from None


def read_json(path, cap=JSON_BYTES):
    try:
        return json.loads(read_text(path, cap))
    except ValueError as e:  # JSONDecodeError, and an integer of more digits than Python converts
        if isinstance(e, RecordError):
            raise
        raise RecordError(one_line(path, f"is not valid JSON ({e})")) from None


def folder_problems(path):
    """Lines for what a record folder may not hold: a symlink (the folder itself or anything in it), anything but
    plain files and folders, a name with a hidden character, more than MAX_ENTRIES entries."""
    if os.path.islink(os.path.normpath(path)):
        return [one_line(path, "is a symlink; a record is a plain folder")]
    if not os.path.isdir(path):
        return [one_line(path, "is not a folder")]
    problems, count = [], 0
    for root, folders, files in os.walk(path, followlinks=False):
        for name in folders + files:
            count += 1
            full = os.path.join(root, name)
            mode = os.lstat(full).st_mode
            if stat.S_ISLNK(mode):
                problems.append(one_line(full, "is a symlink; a record holds only plain files"))
            elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                problems.append(one_line(full, "is not a plain file"))
            elif any(hidden(char) for char in name):
                problems.append(one_line(full, "has a control, bidi or line-break character in its name"))
        if count > MAX_ENTRIES:
            return problems + [one_line(path, f"holds more than {MAX_ENTRIES:,} files and folders")]
    return problems


# The only files a record folder may hold (relative paths): nothing else (a pickle, a conftest.py, a sitecustomize.py,
# a shell script) lies beside its logs, whatever it would be used for
RUN_NAME = r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}"
KNOWN_FILES = re.compile(rf"README\.md|results\.json|statistics\.md|logs/{RUN_NAME}\.(txt|diff)|"
                         rf"replays/{RUN_NAME}\.json|replays/{RUN_NAME}/{RUN_NAME}\.txt|ab/(base|idea)_s\d{{1,6}}\.txt",
                         re.ASCII)
KNOWN_FOLDERS = re.compile(rf"logs|replays|replays/{RUN_NAME}|ab", re.ASCII)


def unknown_files(path):
    """A line for each file or folder in a record folder that a record does not hold (KNOWN_FILES, KNOWN_FOLDERS)."""
    problems = []
    for root, folders, files in os.walk(path, followlinks=False):
        for name in sorted(folders + files):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path).replace(os.sep, "/")
            known = KNOWN_FOLDERS if os.path.isdir(full) and not os.path.islink(full) else KNOWN_FILES
            if not known.fullmatch(rel):
                problems.append(one_line(full, "is not a file a record holds (README.md, results.json, "
                                               "statistics.md, logs/<run>.txt and .diff, replays/): remove it"))
        folders[:] = [f for f in folders if KNOWN_FOLDERS.fullmatch(
            os.path.relpath(os.path.join(root, f), path).replace(os.sep, "/"))]
    return problems


# -----------------------------------------------------------------------------
# Names, dates and the text a record shows

SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,63}", re.ASCII)  # slugs and track ids: ASCII, so no look-alike letters
DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
RECORD_FOLDER = re.compile(r"(\d{4}-\d{2}-\d{2})_([a-z0-9][a-z0-9-]{0,63})", re.ASCII)
LOG_NAME = re.compile(r"logs/[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}\.txt", re.ASCII)
FIRST_DATE = datetime.date(2024, 1, 1)      # no record is older than the project
AUTHOR_REQUIRED_FROM = datetime.date(2026, 12, 4)  # records dated from here on name their author
TEXT_CAPS = {"description": 1000, "author": 100, "affiliation": 200, "seeds_note": 1000, "by": 100}
URL_CAP = 500


def today():
    return datetime.date.today()


def name_problem(what, value):
    """Why a slug or track id is not one: lowercase ASCII letters, digits and dashes, 1-64 of them."""
    if not isinstance(value, str):
        return f"{what} is not a string"
    if not value.isascii():
        return f"{what} {ascii(value)} is not ASCII (look-alike letters are refused)"
    if not SLUG.fullmatch(value):
        return f"{what} {ascii(value)} is not 1-64 lowercase letters, digits and dashes (the first no dash)"
    return None


def date_problem(value):
    """Why a record's date is not a real ISO date from 2024-01-01 to tomorrow."""
    if not isinstance(value, str) or not DATE.fullmatch(value):
        return f"date {ascii(value)} is not YYYY-MM-DD"
    try:
        date = datetime.date.fromisoformat(value)
    except ValueError:
        return f"date {value} is no real date"
    if not FIRST_DATE <= date <= today() + datetime.timedelta(days=1):
        return f"date {value} is not between {FIRST_DATE} and tomorrow ({today() + datetime.timedelta(days=1)})"
    return None


def text_problem(key, value, required=False):
    """Why a free-text field (description, author, affiliation) cannot be shown: not a string, too long, blank when
    required, or holding a control, bidi, zero-width or line-break character."""
    if value is None:
        return f"'{key}' is missing" if required else None
    if not isinstance(value, str):
        return f"'{key}' is not a string"
    if len(value) > TEXT_CAPS[key]:
        return f"'{key}' is {len(value):,} characters; at most {TEXT_CAPS[key]:,}"
    if required and not value.strip():
        return f"'{key}' is blank"
    bad = next((char for char in value if hidden(char)), None)
    if bad is not None:
        kind = "a bidi control" if bad in BIDI_CONTROLS else "a control or invisible character"
        return f"'{key}' holds {kind} (U+{ord(bad):04X}); write it on one line of visible text"
    return None


def url_problem(key, value):
    """Why an optional link (url, run_link) is not an http(s) URL of visible ASCII without credentials."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > URL_CAP:
        return f"'{key}' is not a string of at most {URL_CAP} characters"
    if not value.isascii() or any(not char.isprintable() or char.isspace() for char in value):
        return f"'{key}' {ascii(value)} has characters other than visible ASCII"
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return f"'{key}' {value} is not an http(s) URL with a host (and no user name)"
    return None


def metadata_problems(record, require_author=True):
    """What is wrong with a record's track, slug, date, description and submission fields (author, affiliation,
    url, run_link); require_author=False skips only the missing-author rule (while a record is built)."""
    problems = [name_problem("track", record.get("track")), name_problem("slug", record.get("slug")),
                date_problem(record.get("date")), text_problem("description", record.get("description"), True)]
    if problems[3] == "'description' is blank":
        problems[3] = None  # an empty description is allowed: the README says what the idea is
    dated = problems[2] is None and datetime.date.fromisoformat(record["date"]) >= AUTHOR_REQUIRED_FROM
    problems.append(text_problem("author", record.get("author"), require_author and dated))
    if problems[-1] == "'author' is missing":
        problems[-1] = (f"'author' is missing: records dated {AUTHOR_REQUIRED_FROM} or later name who made them "
                        "(records new --author NAME)")
    problems.append(text_problem("affiliation", record.get("affiliation")))
    problems += [url_problem(key, record.get(key)) for key in ("url", "run_link")]
    return [p for p in problems if p]


# -----------------------------------------------------------------------------
# Values in range before any arithmetic: a huge depth costs nothing, a negative width is refused

CONFIG_RANGES = {  # key: (least, most, required); ints (bool refused)
    "depth": (1, 1024, True), "model_dim": (0, 65536, False), "head_dim": (1, 65536, False),
    "seq_len": (1, 1 << 20, True), "short_window": (0, 1 << 20, False), "device_batch": (1, 1 << 20, False),
    "total_batch_tokens": (1, 1 << 40, True), "steps": (0, 10 ** 9, False), "val_tokens": (1, 1 << 40, True),
    "val_batch": (0, 1 << 20, False), "loss_chunk": (1, 1 << 24, False), "warmup_steps": (0, 10 ** 9, False)}
RUN_RANGES = {  # a run in results.json: key: (least, most); the most are far beyond any real run
    "seed": (0, 2 ** 63), "steps": (1, 10 ** 9), "tokens": (1, 2 ** 62), "vocab_size": (1, 1 << 24),
    "world_size": (1, 1 << 20), "model_flops_per_token": (1, 2 ** 62), "model_flops": (1, 2 ** 100),
    "training_time_s": (1e-9, 1e9), "val_loss": (1e-9, 1e3), "val_bpb": (1e-9, 1e3)}
MODEL_RANGES = {"vocab_size": (1, 1 << 24), "flops_per_token": (1, 2 ** 62), "num_steps": (1, 10 ** 9),
                "batch_tokens": (1, 1 << 40)}


def out_of_range(values, ranges, required=()):
    """'key=value' for each value that is missing (when required), not a number of the range's kind, or outside it."""
    bad = []
    for key, (least, most, *_) in ranges.items():
        value = values.get(key)
        if value is None and key not in required:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(least, int) and not isinstance(value, int):
            number = False
        if not number or not (least <= value <= most):
            bad.append(f"{key}={printable(repr(value))[:40]} (not in {least:g}..{most:g})")
    return bad


def config_problems(config):
    required = [key for key, (_, _, needed) in CONFIG_RANGES.items() if needed]
    return out_of_range(config, CONFIG_RANGES, required)


def run_problems(run):
    return out_of_range(run, RUN_RANGES, RUN_RANGES)


def model_problems(model):
    return out_of_range(model, MODEL_RANGES, MODEL_RANGES)


# -----------------------------------------------------------------------------
# Runs distinct by their loss curves: a copy nudged in its digits, shifted, scaled a little or noised a little is
# still a copy. A run is identified by what it did, not by the bytes of its log.

COPY_TOLERANCE = 1e-4  # max |loss difference| at every common logged step below which two runs are one. Losses
                       # are printed to 1e-6; runs of different seeds differ by ~1e-2 (tests: more than 100x this)
NEAR_COPY_SPREAD = 0.005  # the median absolute deviation of two curves' per-step difference around its median below
                          # which they are one run moved by a constant, a scale or noise. Two seeds of the committed
                          # cpu-smoke record: 0.059-0.085 (seeds order the data too); a copy times 1.01: 0.0033
NEAR_COPY_MIN_STEPS = 8  # fewer common steps than this (after the first few): only COPY_TOLERANCE tells
NEAR_COPY_FROM_STEP = 6  # every seed starts near log(vocab): the first steps' differences are tiny for any two runs


def curve_gap(a, b):
    """How far apart two train-loss curves ({step: loss}) are over their common steps: (the largest |difference|,
    the median absolute deviation of the difference around its median); None if no step is common. A NaN is no
    match (infinite)."""
    common = sorted(a.keys() & b.keys())
    if not common:
        return None
    differences = [a[step] - b[step] for step in common]
    if not all(math.isfinite(d) for d in differences):
        return math.inf, math.inf
    middle = median(differences)
    return max(abs(d) for d in differences), median([abs(d - middle) for d in differences])


def median(values):
    ordered = sorted(values)
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2


def same_run(a, b):
    """Why two curves are one run ('' when they are two): the same losses at every common step, or, over at least
    NEAR_COPY_MIN_STEPS common steps from NEAR_COPY_FROM_STEP on, a difference that is nearly constant (a shifted,
    scaled or noised copy)."""
    gap = curve_gap(a, b)
    if gap is None:
        return ""
    largest, _ = gap
    if largest < COPY_TOLERANCE:
        return f"the same train losses at every common step (apart by at most {largest:.2g})"
    later = [step for step in a.keys() & b.keys() if step >= NEAR_COPY_FROM_STEP]
    if len(later) < NEAR_COPY_MIN_STEPS:
        return ""
    _, spread = curve_gap({s: a[s] for s in later}, {s: b[s] for s in later})
    if spread < NEAR_COPY_SPREAD:
        return (f"train losses that differ by a nearly constant amount (its median absolute deviation "
                f"{spread:.2g} over {len(later)} steps from step {NEAR_COPY_FROM_STEP}; two seeds deviate by "
                f"{NEAR_COPY_SPREAD:g} or more): one run, moved")
    return ""


def copied_curves(curves):
    """(run a, run b, why) for each pair of runs ({run id: curve}) that are one run (same_run)."""
    ids = list(curves)
    copies = []
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            why = same_run(curves[a], curves[b])
            if why:
                copies.append((a, b, why))
    return copies


# -----------------------------------------------------------------------------
# Where records are: records/<known track>/<date>_<slug>/results.json, nowhere else


def find_records(records_dir, tracks):
    """(record folders, refusals): every results.json under records_dir (symlinks not followed) is either a record
    at <known track>/<date>_<slug>/ or refused with the reason; so is a symlinked folder that could hide one."""
    found, refused = [], []
    for root, folders, files in os.walk(records_dir, followlinks=False):
        folders.sort()
        rel = os.path.relpath(root, records_dir).split(os.sep)
        depth = 0 if rel == ["."] else len(rel)
        for name in folders:
            if depth < 2 and os.path.islink(os.path.join(root, name)):
                refused.append(one_line(os.path.join(root, name), "is a symlink; records/ holds only plain folders"))
        if "results.json" not in files:
            continue
        reason = placement_problem(rel, tracks)
        if reason:
            refused.append(one_line(os.path.join(root, "results.json"), reason))
        else:
            found.append(root)
    return sorted(found), refused


def placement_problem(rel, tracks):
    """Why a results.json at records/<rel parts>/ is not where a record is."""
    if rel == ["."] or len(rel) != 2 or rel[0] not in tracks:
        return (f"a results.json outside records/<track>/<date>_<slug>/ (tracks: {', '.join(sorted(tracks))}) is no "
                "record; move it there or remove it")
    if not RECORD_FOLDER.fullmatch(rel[1]):
        return f"the record folder {printable(rel[1])} is not <YYYY-MM-DD>_<slug>"
    return None


# -----------------------------------------------------------------------------
# One log in one record: by the sha256 of its bytes, across records


def added_generation(path):
    """How far down the git history the commit that added path/results.json is (its count of ancestors): a record
    added later is further down, whatever dates its files claim; infinity when it is not committed."""
    try:
        added = subprocess.run(["git", "-C", path, "log", "--diff-filter=A", "--format=%H", "--", "results.json"],
                               capture_output=True, text=True)
        commits = added.stdout.split()
        if added.returncode != 0 or not commits:
            return math.inf
        count = subprocess.run(["git", "-C", path, "rev-list", "--count", commits[-1]], capture_output=True,
                               text=True)
    except OSError:  # no git: nothing known of the order but the dates
        return math.inf
    return int(count.stdout) if count.returncode == 0 and count.stdout.strip().isdigit() else math.inf


def record_order(records):
    """Record folders, earliest first: added to git first (whatever dates they claim), else dated first, else by path."""
    return sorted(records, key=lambda p: (added_generation(p), str(records[p].get("date")), p))


def duplicate_runs(records, curves):
    """{record folder: [failure lines]} for runs that an earlier record already holds, by what they did: the same
    log bytes, or curves that are one run (same_run), whatever was edited around them. records is {folder: results
    dict} of records that validate, curves {(folder, run id): curve}. The earliest record (record_order) keeps the
    run. One run may be filed in two tracks by the same author at the same commit; otherwise a run counts once."""
    records = {path: record for path, record in records.items() if isinstance(record, dict)}
    owners, flagged = [], {}  # owners: (folder, run id, log path, sha256, curve) of the runs kept so far
    for path in record_order(records):
        record = records[path]
        runs = record.get("runs") if isinstance(record.get("runs"), list) else []
        for run in runs:
            if not isinstance(run, dict) or not LOG_NAME.fullmatch(str(run.get("log"))):
                continue  # validate refuses such a run; nothing here to compare
            log = os.path.join(path, run["log"])
            try:
                digest = hashlib.sha256(read_bounded(log, LOG_BYTES)).hexdigest()
            except RecordError as e:
                flagged.setdefault(path, []).append(str(e))
                continue
            curve = curves.get((path, run.get("run_id"))) or {}
            for owner, _, owner_log, owner_digest, owner_curve in owners:
                if owner == path or same_submission(records[owner], record):
                    continue
                why = "the same log bytes" if digest == owner_digest else same_run(curve, owner_curve)
                if why:
                    flagged.setdefault(path, []).append(one_line(log, (
                        f"is the run of {printable(owner_log)}, a record added before this one ({why}): a run counts "
                        "in one record only")))
                    break
            owners.append((path, run.get("run_id"), log, digest, curve))
    return flagged


def same_submission(first, second):
    return (first.get("track") != second.get("track") and first.get("author") == second.get("author")
            and first.get("commit") == second.get("commit"))
