"""A record: the runs behind a claim, and the checks that make the claim trustworthy without trusting anyone.

records/<track>/<YYYY-MM-DD>_<slug>/
    README.md        the idea and the command
    logs/<run>.txt   each run's log.txt as train_gpt.py (and eval_core.py) wrote it
    results.json     per-run values, their mean and standard deviation, the commit, the track, the test
    statistics.md    the same numbers for people

Nothing from a record is executed: logs and JSON are parsed as text, and the training script's source in a log
is only hashed and compared with the commit's.
"""

import dataclasses
import datetime
import hashlib
import json
import math
import os
import re
import shutil
import subprocess

from records.stats import mean_std, one_sample_t_test

SCHEMA_VERSION = 1
TRACKS_FILE = os.path.join(os.path.dirname(__file__), "tracks.json")
SOURCE_END = "=" * 100  # train_gpt.py writes this line after its source


class RecordError(ValueError):
    """A record that cannot be built or read; the message names the file."""


def load_tracks(path=TRACKS_FILE):
    with open(path) as f:
        return {track["id"]: track for track in json.load(f)["tracks"]}


# -----------------------------------------------------------------------------
# Reading a run's log


@dataclasses.dataclass
class Log:
    source: str
    git: dict
    config: dict
    environment: dict
    steps: dict        # step -> step_ms (the last line for a step wins: a resumed run repeats the lost steps)
    val: list          # (step, val_loss, val_bpb), in order
    core: float | None


def parse_log(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    source, sep, rest = text.partition("\n" + SOURCE_END + "\n")
    if not sep:
        raise RecordError(f"{path}: no train_gpt.py source at the top (no line of 100 '='); is this a train_gpt.py log?")
    found = {"git": None, "config": None, "environment": None}
    steps, val, core = {}, [], None
    for number, line in enumerate(rest.splitlines(), 1):
        key = line.split(":", 1)[0]
        if key in found and found[key] is None:
            try:
                found[key] = json.loads(line.split(":", 1)[1])
            except json.JSONDecodeError:
                raise RecordError(f"{path}: the {key} line is not valid JSON") from None
        elif line.startswith("step:"):
            fields = dict(field.split(":", 1) for field in line.split() if ":" in field)
            step = int(fields["step"].split("/")[0])
            if "step_ms" in fields:
                steps[step] = float(fields["step_ms"])
            if "val_loss" in fields:
                val.append((step, float(fields["val_loss"]), float(fields["val_bpb"])))
        elif line.startswith("core:"):
            core = float(line.split()[0].split(":")[1])
    missing = [key for key, value in found.items() if value is None]
    if missing:
        raise RecordError(f"{path}: no {', '.join(missing)} line")
    return Log(source, found["git"], found["config"], found["environment"], steps, val, core)


def run_values(run_dir):
    """The values a record keeps for one run, from its results.json (as train_gpt.py and eval_core.py wrote it)."""
    path = os.path.join(run_dir, "results.json")
    if not os.path.isfile(path):
        raise RecordError(f"{path}: missing; is {run_dir} a finished train_gpt.py run?")
    with open(path) as f:
        results = json.load(f)
    core = results.get("core") or {}
    return {"run_id": results["run_id"], "log": f"logs/{results['run_id']}.txt", "seed": results["seed"],
            "steps": results["steps"], "tokens": results["tokens"], "vocab_size": results["vocab_size"],
            "training_time_s": results["training_time_s"], "val_loss": results["val_loss"],
            "val_bpb": results["val_bpb"], "core": core.get("core"), "model_flops": results["model_flops"],
            "model_flops_per_token": results["model_flops_per_token"], "mfu": results["mfu"],
            "world_size": results["environment"]["world_size"], "gpu": results["environment"]["gpu"],
            "commit": results["git"]["commit"]}


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


def new_record(track_id, slug, run_dirs, out=None, description="", tracks_file=TRACKS_FILE, date=None):
    """Builds a record folder from finished runs; returns its path (then validate it)."""
    tracks = load_tracks(tracks_file)
    if track_id not in tracks:
        raise RecordError(f"unknown track {track_id!r}; tracks: {', '.join(tracks)} ({tracks_file})")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", slug):
        raise RecordError(f"slug {slug!r}: use lowercase letters, digits and dashes")
    track = tracks[track_id]
    runs = [run_values(d) for d in run_dirs]
    commits = {run["commit"] for run in runs}
    if len(commits) != 1 or None in commits:
        raise RecordError(f"the runs come from {len(commits)} commits ({sorted(map(str, commits))}); a record is one "
                          "commit's runs")
    date = date or datetime.date.today().isoformat()
    out = out or os.path.join(os.path.dirname(tracks_file), track_id, f"{date}_{slug}")
    if os.path.exists(out):
        raise RecordError(f"{out} exists; choose another slug or --out")
    os.makedirs(os.path.join(out, "logs"))
    for run_dir, run in zip(run_dirs, runs):
        shutil.copyfile(os.path.join(run_dir, "log.txt"), os.path.join(out, run["log"]))
    metric = track["metric"]
    record = {"schema_version": SCHEMA_VERSION, "track": track_id, "slug": slug, "date": date,
              "description": description, "commit": commits.pop(), "runs": runs, "summary": summarize(track, runs),
              "test": target_test(track, [run[metric] for run in runs])}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(record, f, indent=2)
    with open(os.path.join(out, "statistics.md"), "w") as f:
        f.write(statistics_markdown(track, record))
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(f"# {track_id}: {slug}\n\n{description or '(describe the idea here)'}\n\nCommit `{record['commit']}`"
                f", {len(runs)} runs. Command (from the first log):\n\n```\n{first_command(out, runs[0])}\n```\n")
    return out


def first_command(out, run):
    with open(os.path.join(out, run["log"]), encoding="utf-8") as f:
        return next((line[len("command: "):].rstrip("\n") for line in f if line.startswith("command: ")), "?")


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
# Validating a record: every failure names the file and the reason


def close(a, b, rel=1e-9, abs_tol=0.0):
    return a is not None and b is not None and math.isclose(a, b, rel_tol=rel, abs_tol=abs_tol)


def source_at_commit(commit, repo):
    """train_gpt.py at a commit, or None when the commit is not in this repository."""
    shown = subprocess.run(["git", "show", f"{commit}:train_gpt.py"], capture_output=True, cwd=repo)
    return shown.stdout.decode("utf-8") if shown.returncode == 0 else None


def validate(path, tracks_file=TRACKS_FILE, repo=None):
    """Returns (failures, notes): failures are 'file: reason' strings (empty when the record is valid)."""
    import train_gpt  # the repo's script, only for its FLOPs formula; the record's source is never executed
    failures, notes = [], []
    repo = repo or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results_path = os.path.join(path, "results.json")

    def fail(file, reason):
        failures.append(f"{file}: {reason}")

    try:
        with open(results_path) as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        return [f"{results_path}: cannot read ({e})"], notes
    schema = {"schema_version": int, "track": str, "slug": str, "date": str, "commit": str, "runs": list,
              "summary": dict}
    for key, kind in schema.items():
        if not isinstance(record.get(key), kind):
            fail(results_path, f"'{key}' is missing or not a {kind.__name__}")
    if failures:
        return failures, notes
    tracks = load_tracks(tracks_file)
    track = tracks.get(record["track"])
    if track is None:
        return [f"{results_path}: unknown track {record['track']!r}"], notes
    parent, name = os.path.basename(os.path.dirname(os.path.abspath(path))), os.path.basename(os.path.abspath(path))
    if parent in tracks and (parent != record["track"] or name != f"{record['date']}_{record['slug']}"):
        fail(results_path, f"a record of track {record['track']} dated {record['date']} with slug {record['slug']} "
                           f"belongs in {record['track']}/{record['date']}_{record['slug']}, not {parent}/{name}")
    if record["schema_version"] != SCHEMA_VERSION:
        fail(results_path, f"schema_version {record['schema_version']} is not {SCHEMA_VERSION}")
    committed_source = source_at_commit(record["commit"], repo)
    if committed_source is None:
        notes.append(f"commit {record['commit']} is not in this repository: the logs' source was not compared with it")

    for run in record["runs"]:
        log_path = os.path.join(path, run.get("log", "?"))
        if not os.path.isfile(log_path) or os.path.dirname(os.path.normpath(run["log"])) != "logs":
            fail(results_path, f"run {run.get('run_id')}: its log {run.get('log')} is not in logs/")
            continue
        try:
            log = parse_log(log_path)
        except RecordError as e:
            failures.append(str(e))
            continue
        if log.git.get("commit") != record["commit"]:
            fail(log_path, f"commit {log.git.get('commit')} is not the record's {record['commit']}")
        if committed_source is not None and log.source != committed_source:
            fail(log_path, f"the train_gpt.py source in the log does not match train_gpt.py at commit "
                           f"{record['commit'][:12]} (sha256 {hashlib.sha256(log.source.encode()).hexdigest()[:12]} vs "
                           f"{hashlib.sha256(committed_source.encode()).hexdigest()[:12]})")
        config = log.config
        if config.get("log_every") != 1:
            fail(log_path, "log_every is not 1: the step times cannot be summed")
        if sorted(log.steps) != list(range(1, run["steps"] + 1)):
            fail(log_path, f"the step lines do not cover steps 1..{run['steps']}")
        step_total = sum(log.steps.values()) / 1000
        if not close(step_total, run["training_time_s"], rel=1e-6, abs_tol=1e-5 * len(log.steps) + 1e-3):
            fail(log_path, f"the step times sum to {step_total:.3f} s, but results.json says {run['training_time_s']:.3f} s")
        if not log.val:
            fail(log_path, "no validation line")
        else:
            _, val_loss, val_bpb = log.val[-1]
            for key, logged in (("val_loss", val_loss), ("val_bpb", val_bpb)):
                if not close(logged, run[key], abs_tol=5e-7):
                    fail(log_path, f"final {key} {logged} in the log, {run[key]} in results.json")
        if run.get("core") is not None and not close(log.core, run["core"], abs_tol=5e-7):
            fail(log_path, f"CORE {log.core} in the log, {run['core']} in results.json")
        try:
            cfg = train_gpt.Config(**dict(config, adam_betas=tuple(config["adam_betas"])))
            per_token = train_gpt.flops_per_token(cfg, run["vocab_size"])
        except (TypeError, KeyError) as e:
            fail(log_path, f"the config cannot be read by this train_gpt.py ({e})")
            continue
        if per_token != run["model_flops_per_token"]:
            fail(results_path, f"run {run['run_id']}: {run['model_flops_per_token']:,} FLOPs per token claimed, "
                               f"{per_token:,} recomputed from the config")
        if run["tokens"] != run["steps"] * cfg.total_batch_tokens or run["model_flops"] != per_token * run["tokens"]:
            fail(results_path, f"run {run['run_id']}: tokens or model FLOPs do not follow from steps x batch")
        if run["mfu"] is not None and not 0 < run["mfu"] <= 1:
            fail(results_path, f"run {run['run_id']}: MFU {run['mfu']:.3f} is outside (0, 1]")
        hardware = track.get("hardware")
        if hardware and (log.environment.get("world_size") != hardware["count"]
                         or hardware["gpu"] not in (log.environment.get("gpu") or "")):
            fail(log_path, f"ran on {log.environment.get('world_size')}x {log.environment.get('gpu')}, the track is "
                           f"{hardware['count']}x {hardware['gpu']}")
        if track.get("val_tokens") and config.get("val_tokens") != track["val_tokens"]:
            fail(log_path, f"val_tokens {config.get('val_tokens')} is not the track's {track['val_tokens']}")

    runs = record["runs"]
    if failures:
        return failures, notes
    for key, s in summarize(track, runs).items():
        claimed = record["summary"].get(key, {})
        if not (close(claimed.get("mean"), s["mean"]) and close(claimed.get("std"), s["std"], abs_tol=1e-12)):
            fail(results_path, f"summary of {key} does not match its runs (mean {s['mean']:.6g}, std {s['std']:.3g})")
    if len(runs) < track["min_runs"]:
        fail(results_path, f"{len(runs)} runs; the track needs at least {track['min_runs']}")
    metric = [run[track["metric"]] for run in runs]
    if None in metric:
        fail(results_path, f"a run has no {track['metric']}")
    elif "budget_flops" in track:
        over = [run["run_id"] for run in runs if run["model_flops"] > track["budget_flops"]]
        if over:
            fail(results_path, f"runs over the budget of {track['budget_flops']:.3g} model FLOPs: {', '.join(over)}")
    elif len(runs) >= 2:
        test = target_test(track, metric)
        if test["p_value"] >= track["alpha"]:
            fail(results_path, f"{track['metric']} mean {sum(metric) / len(metric):.6g} is not {track['direction']} "
                               f"{track['target']} at p < {track['alpha']}: p = {test['p_value']:.3g}")
        if not close((record.get("test") or {}).get("p_value"), test["p_value"], rel=1e-6):
            fail(results_path, f"the stated t-test does not match the runs (p = {test['p_value']:.3g})")
    return failures, notes
