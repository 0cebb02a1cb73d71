"""A record may carry an A/B against the record it beats (`records new --ab DIR --beats TRACK/DATE_SLUG`, DIR a
`records ab` output): the logs of both arms, `ab/base_s<i>.txt` and `ab/idea_s<i>.txt`, run on the submitter's own
machine, and in results.json {"ab": {"beats": "<track>/<date>_<slug>", "base": commit, "idea": commit}}.

validate checks them like runs: each log consistent in itself (records.record.replay), of its arm's commit from a
clean tree (the source at the top is that commit's train_gpt.py), one recipe per arm, seeds 0..N-1 in both, every log
on one machine (the same environment), no log a copy of another in its arm (across the arms the same losses are
what a change of speed alone gives); BASE is the commit of the record named in `beats`
(in this track), IDEA this record's. The time ratio IDEA / BASE and its interval are recomputed from the logs
(records/ab.py's summary) and shown on the leaderboard beside the time: a claim made on other hardware than the
record it beats, made comparable.
"""

import os
import re

from records import trust
from records.trust import RecordError, printable

AB_LOG = re.compile(r"(base|idea)_s(\d{1,6})\.txt", re.ASCII)
SAME_MACHINE = ("device", "world_size", "gpu", "cpu", "cpu_capability", "threads", "torch", "cuda")


def copy_ab(ab_dir, out):
    """The A/B's logs into the record's ab/ folder; the arms' commits (from the logs' git lines)."""
    os.makedirs(os.path.join(out, "ab"))
    runs = os.path.join(ab_dir, "runs")
    names = sorted(n for n in os.listdir(runs) if re.fullmatch(r"(base|idea)_s\d+", n)) if os.path.isdir(runs) else []
    if not names:
        raise RecordError(f"{printable(ab_dir)}: no runs of a records ab (runs/base_s0 ...)")
    for name in names:
        data = trust.read_bounded(os.path.join(runs, name, "log.txt"), trust.LOG_BYTES)
        with open(os.path.join(out, "ab", f"{name}.txt"), "wb") as f:
            f.write(data)


def check_ab(path, record, ctx, fail, parse_log, replay, source_at_commit):
    """The record's A/B (when it has one): returns the note the leaderboard shows, or None."""
    ab = record.get("ab")
    if ab is None:
        if os.path.isdir(os.path.join(path, "ab")):
            fail(os.path.join(path, "ab"), "holds an A/B that results.json does not describe ('ab')")
        return None
    results_path = ctx["results_path"]
    if not (isinstance(ab, dict) and all(isinstance(ab.get(k), str) for k in ("beats", "base", "idea"))):
        return fail(results_path, "'ab' is not {'beats': 'TRACK/DATE_SLUG', 'base': commit, 'idea': commit}")
    beaten = check_beaten(path, record, ab, results_path, fail)
    if ab["idea"] != record["commit"]:
        fail(results_path, f"the A/B's IDEA {printable(ab['idea'][:12])} is not the record's commit")
    folder = os.path.join(path, "ab")
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    found = {}
    for name in names:
        match = AB_LOG.fullmatch(name)
        if not match:
            fail(os.path.join(folder, name), "is not ab/base_s<seed>.txt or ab/idea_s<seed>.txt")
            continue
        found[(match.group(1), int(match.group(2)))] = os.path.join(folder, name)
    seeds = sorted({seed for _, seed in found})
    if len(seeds) < 2 or seeds != list(range(len(seeds))) or len(found) != 2 * len(seeds):
        return fail(folder, f"holds {len(found)} logs: an A/B is seeds 0..N-1 (N >= 2) in both arms, none dropped")
    pairs, first_env, curves = [], None, {}
    for seed in seeds:
        pair = {}
        for arm, commit in (("base", ab["base"]), ("idea", ab["idea"])):
            log_path = found[(arm, seed)]
            try:
                log = parse_log(log_path)
            except RecordError as e:
                return fail(None, e)
            start = log.segments[0]
            git, env, config = start["git"], start["environment"], start["config"]
            if not isinstance(git, dict) or git.get("commit") != commit or git.get("dirty") is not False:
                return fail(log_path, f"is not a run of the {arm} commit {commit[:12]} from a clean tree")
            if log.source != source_at_commit(commit, ctx["repo"]):
                return fail(log_path, f"its train_gpt.py source is not the one at the {arm} commit")
            if not isinstance(config, dict) or config.get("seed") != seed:
                return fail(log_path, f"seed {config.get('seed') if isinstance(config, dict) else '?'} is not {seed}")
            machine = {k: env.get(k) for k in SAME_MACHINE} if isinstance(env, dict) else None
            first_env = first_env or machine
            if machine != first_env:
                return fail(log_path, "ran on another machine than the A/B's first log: an A/B is one machine")
            replayed = replay(log, fail)
            if replayed is None:
                return None
            curves[f"{arm}_s{seed}"] = replayed["curve"]
            pair[arm] = replayed["step_ms_sum"] / 1000  # its training time
        pairs.append(pair)
    for arm in ("base", "idea"):  # across arms the same losses are fine: a change of speed only keeps the math
        mine = {name: curve for name, curve in curves.items() if name.startswith(arm)}
        for a, b, why in trust.copied_curves(mine):
            fail(folder, f"{a} and {b} are one run: {why}")
    from records.ab import time_ratio
    s = time_ratio([p["idea"] / p["base"] for p in pairs], 0.05)
    return (f"A/B x{s['time_ratio']:.3f} [{s['time_low']:.3f}, {s['time_high']:.3f}] vs "
            f"{ab['beats'] if beaten else '?'}, {len(pairs)} pairs on one machine")


def check_beaten(path, record, ab, results_path, fail):
    """The record named in `beats`: in this track, its commit the A/B's BASE."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    parts = ab["beats"].split("/")
    if len(parts) != 2 or parts[0] != record["track"] or not trust.RECORD_FOLDER.fullmatch(parts[1]):
        fail(results_path, f"'ab.beats' {printable(ab['beats'])} is not {record['track']}/<date>_<slug>")
        return None
    beaten = os.path.join(root, *parts)
    try:
        commit = trust.read_json(os.path.join(beaten, "results.json")).get("commit")
    except (RecordError, AttributeError):
        fail(results_path, f"'ab.beats' names {printable(ab['beats'])}, which is no record here")
        return None
    if commit != ab["base"]:
        fail(results_path, f"the A/B's BASE {printable(ab['base'][:12])} is not the commit of {printable(ab['beats'])}")
        return None
    return beaten

