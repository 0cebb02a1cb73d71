"""Replays as evidence: what `records reproduce --attest` writes into a record, how validate checks it, and the level
the leaderboard shows.

    replays/<date>_<who>.json        who replayed, when, on what hardware, with which checkout, how many steps, and per
                                     run its replay's log and the largest difference found
    replays/<date>_<who>/<run>.txt   the replay's own train_gpt.py log

validate checks an attestation like a run: every replay log is a log of the record's commit (its source and git
line), of the same recipe (its config but for bookkeeping and where the data lies) on the same data (its data line),
and its losses and bits per byte are compared again here with the record's, with this checkout's tolerances (never
the record's, never the attestation's): the same digits where the replay ran on the record's hardware (a CPU's model,
kernel level and threads; a GPU's name and count) on a CPU, within GPU_TOLERANCE on GPUs, within OTHER_CPU_TOLERANCE
on another CPU, and with no systematic shift (BIAS_TOLERANCE). The largest difference it states must be the one
found. The level shown: "replayed on the same hardware", "replayed elsewhere within tolerance" (either "spot-checked:
N steps" when the replay stopped early), else "consistent, not replayed".
"""

import datetime
import math
import os
import re

from records import trust
from records.trust import RecordError, printable

GPU_TOLERANCE = 0.005  # loss units; a default until the same seed run twice on a GPU measures it
# A CPU run replays to the same digits on the same CPU model and kernel level with the same thread count. Elsewhere
# float sums round differently and training amplifies it: the committed cpu-smoke record (made on a machine the log
# does not name) replayed on this project's 2-core Xeon drifted by up to 0.015 in train loss and 0.004 in the final
# val loss over 150 steps, so the tolerance is wider there.
OTHER_CPU_TOLERANCE = 0.05
# Drift from rounding goes either way; a log whose every loss was lowered does not: the mean signed difference of the
# compared losses must stay within this (a guess: the committed record replays here to the same digits, and on the
# machine of an earlier session drifted by at most 0.015 at a step, either way)
BIAS_TOLERANCE = 0.005
# Validation figures average many tokens, so they drift less than one step's loss (the final val loss: 0.004 on that
# machine): a ranked figure lowered within the step tolerance is still caught
VAL_TOLERANCE = 0.01
SAME_HARDWARE_KEYS = ("device", "world_size", "gpu")
SAME_CPU_KEYS = ("cpu", "cpu_capability", "threads")
LEVELS = ("replayed on the same hardware", "replayed elsewhere within tolerance", "consistent, not replayed")
ATTESTATION = re.compile(rf"replays/({trust.RUN_NAME})\.json", re.ASCII)
SCHEMA = {"schema_version": int, "by": str, "date": str, "checkout": str, "record_commit": str, "steps": (int, None),
          "runs": list}


def same_hardware(record_env, replay_env):
    """Whether a replay ran where the record did: the device, processes and GPU, and on a CPU its model, kernel level
    and threads (what the sums depend on)."""
    if not isinstance(record_env, dict) or not isinstance(replay_env, dict):
        return False
    keys = SAME_HARDWARE_KEYS + (() if record_env.get("gpu") else SAME_CPU_KEYS)
    return all(record_env.get(k) is not None and record_env.get(k) == replay_env.get(k) for k in keys
               if k != "gpu" or record_env.get("gpu"))


def allowed_tolerance(record_env, replay_env):
    """The tolerance this checkout allows a replay: by where the replay ran, never by what the record says of
    itself (naming another CPU buys no slack: the replay's own environment decides)."""
    if isinstance(replay_env, dict) and replay_env.get("gpu"):
        return GPU_TOLERANCE
    return 0.0 if same_hardware(record_env, replay_env) else OTHER_CPU_TOLERANCE


def figures(log, steps=None):
    """{(kind, step): value} of a log's train loss, val loss and val bpb lines, up to `steps`."""
    found = {}
    for _, kind, event in log.events:
        if kind in ("train", "val") and (not steps or event["step"] <= steps):
            keys = ("train_loss",) if kind == "train" else ("val_loss", "val_bpb")
            for key in keys:
                found[(key, event["step"])] = float(event[key])
    return found


def compare_figures(logged, replayed, tolerance):
    """(the largest |difference|, the first disagreement or None) of two {(figure, step): value} maps: every figure of
    the record is replayed, none is missing, each within the tolerance (0: the same six decimals; validation figures
    within VAL_TOLERANCE at most), and the train losses show no systematic shift (BIAS_TOLERANCE) when a tolerance
    is allowed."""
    largest, signed = 0.0, []
    for key in sorted(set(logged) | set(replayed), key=lambda k: (k[1], k[0])):
        a, b = logged.get(key), replayed.get(key)
        if a is None or b is None:
            return math.inf, f"step {key[1]}: {key[0]} {'missing from the log' if a is None else 'not replayed'}"
        difference = abs(a - b) if math.isfinite(b) else math.inf
        largest = max(largest, difference)
        allowed = tolerance if key[0] == "train_loss" else min(tolerance, VAL_TOLERANCE)
        same = f"{a:.6f}" == f"{b:.6f}" if tolerance == 0 else difference <= allowed
        if not same:
            return largest, f"step {key[1]}: {key[0]} {a:.6f} in the log, {b:.6f} replayed"
        if key[0] == "train_loss":
            signed.append(a - b)
    if tolerance and signed and abs(sum(signed) / len(signed)) > BIAS_TOLERANCE:
        return largest, (f"the log's train losses are {sum(signed) / len(signed):+.4f} off the replay's on average "
                         f"over {len(signed)} steps: rounding drifts either way, a shift is not drift")
    return largest, None


# -----------------------------------------------------------------------------
# In a record: validate checks each attestation; the leaderboard shows the best level


def check_attestations(path, record, logs, ctx, fail, parse_log):
    """Every replays/<name>.json of the record, checked like a run (see the module's doc). Returns the best level."""
    folder = os.path.join(path, "replays")
    best = LEVELS[-1]
    if not os.path.isdir(folder):
        return best
    runs = {run["run_id"]: logs[os.path.normpath(run["log"])] for run in record["runs"]}
    names = sorted(os.listdir(folder))
    for name in names:
        full = os.path.join(folder, name)
        if os.path.isdir(full):
            if f"{name}.json" not in names:
                fail(full, "holds replay logs of no attestation (replays/<name>.json): remove it")
            continue
        try:
            level = check_attestation(path, f"replays/{name}", runs, ctx, parse_log)
        except RecordError as e:
            fail(full, e)
            continue
        best = min(best, level, key=level_rank)
    return best


def level_rank(level):
    """Full replays on the same hardware first, then elsewhere, then spot checks, then none."""
    return LEVELS.index(level) if level in LEVELS[:2] else 2 if level.startswith("spot-checked") else 3


def check_attestation(path, rel, runs, ctx, parse_log):
    """One attestation: its fields, then each replay log against the record's; the level it establishes."""
    found = ATTESTATION.fullmatch(rel)
    if not found:
        raise RecordError("is not replays/<name>.json")
    attestation = trust.read_json(os.path.join(path, rel))
    if not isinstance(attestation, dict):
        raise RecordError("is not a JSON object")
    from records.record import schema_problem  # one schema rule for a record and its attestations
    bad = [f"'{key}' {problem}" for key, kind in SCHEMA.items() if (problem := schema_problem(attestation.get(key),
                                                                                               kind))]
    bad += [problem for problem in [trust.text_problem("by", attestation.get("by"), required=True)] if problem]
    if bad:
        raise RecordError("; ".join(bad))
    if attestation["record_commit"] != ctx["record"]["commit"]:
        raise RecordError(f"replays commit {attestation['record_commit'][:12]}, not the record's")
    if trust.date_problem(attestation["date"]) or attestation["date"] < ctx["record"]["date"]:
        raise RecordError(f"date {printable(attestation['date'])} is not a date from the record's on")
    steps, levels = attestation["steps"], []
    if not attestation["runs"]:
        raise RecordError("replays no run")
    for entry in attestation["runs"]:
        levels.append(check_replayed_run(path, found.group(1), entry, runs, steps, ctx, parse_log))
    level = LEVELS[0] if all(lv == LEVELS[0] for lv in levels) else LEVELS[1]
    return level if not steps else f"spot-checked: {steps} steps, {level}"


def check_replayed_run(path, name, entry, runs, steps, ctx, parse_log):
    """One run of an attestation: its replay log is the record's recipe at the record's commit on the same data, and
    its figures agree with the record's log within this checkout's tolerance, as the attestation says."""
    if not isinstance(entry, dict) or entry.get("run_id") not in runs:
        raise RecordError(f"replays a run the record does not hold ({printable(str(entry)[:60])})")
    run_id, record_log = entry["run_id"], runs[entry["run_id"]]
    log_rel = f"replays/{name}/{run_id}.txt"
    if entry.get("log") != log_rel or not os.path.isfile(os.path.join(path, log_rel)):
        raise RecordError(f"run {run_id}: its replay log is not {log_rel}")
    replay_log = parse_log(os.path.join(path, log_rel))
    first, start = record_log.segments[0], replay_log.segments[0]
    if replay_log.source != record_log.source or not isinstance(start.get("git"), dict) or \
            start["git"].get("commit") != ctx["record"]["commit"] or start["git"].get("dirty") is not False:
        raise RecordError(f"run {run_id}: the replay did not run the record's train_gpt.py at its commit, clean")
    from records.record import PER_RUN_SETTINGS
    from records.reproduce import BOOKKEEPING
    ignored = PER_RUN_SETTINGS | BOOKKEEPING
    recipe = lambda config: {k: v for k, v in config.items() if k not in ignored or k == "seed"}
    if not isinstance(start.get("config"), dict) or recipe(start["config"]) != recipe(first["config"]):
        raise RecordError(f"run {run_id}: the replay ran other settings than the record's log")
    ours, theirs = start.get("data") or {}, first.get("data") or {}
    if any(ours.get(key) != theirs.get(key) for key in ("tokenizer_sha256", "train_shards", "val_shards", "val_tokens",
                                                        "val_bytes")):
        raise RecordError(f"run {run_id}: the replay ran on other data than the record's log (its data line)")
    if start.get("model") != first.get("model"):
        raise RecordError(f"run {run_id}: the replay's model line is not the record's")
    tolerance = allowed_tolerance(first["environment"], start["environment"])
    logged = figures(record_log, steps)
    largest, problem = compare_figures(logged, figures(replay_log, steps), tolerance)
    if problem:
        raise RecordError(f"run {run_id}: {problem} (tolerance {tolerance:g} for this replay's hardware)")
    if ctx["track"].get("metric") == "core" and not steps:  # a whole replay of a CORE track evaluated again
        from records.reproduce import check_core_replayed
        check_core_replayed(entry, record_log, replay_log, tolerance)
    stated = entry.get("largest_difference")
    if not isinstance(stated, (int, float)) or isinstance(stated, bool) or abs(stated - largest) > 1e-9:
        raise RecordError(f"run {run_id}: states a largest difference of {printable(stated)}, {largest:.6g} found")
    return LEVELS[0] if same_hardware(first["environment"], start["environment"]) else LEVELS[1]


def attestation_name(by, date=None):
    """replays/<date>_<who>: the replayer's name made a file name (letters and digits, the rest dashes)."""
    who = re.sub(r"[^A-Za-z0-9]+", "-", by).strip("-")[:60] or "someone"
    return f"{(date or datetime.date.today()).isoformat()}_{who}"
