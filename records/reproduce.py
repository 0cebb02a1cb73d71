"""python -m records reproduce RECORD [--runs seed0 ...] [--steps N]: re-run a record's runs and compare their logs.

`validate` establishes that a record's text is consistent and follows the rules; a log is text, and a consistent text
can be written by hand. Only a replay shows that the log is what the code does: each run is trained again with the
code of the record's commit (a clean copy of that commit: no untracked file, no diff), on the data its config names
(resolved against --data-root, this checkout by default; the replay's `data:` line must be the record's), with the
config its log recorded, and its train and validation losses are compared with the log's, step by step: the same
digits on a CPU of the model the log names (training here is deterministic: exact resume and the same math on
any number of processes are tested invariants; the replay takes the log's thread count), within OTHER_CPU_TOLERANCE
on another CPU; on GPUs within --tolerance (GPU kernels are not bit-reproducible; the default, 0.005 in loss,
is a documented guess until a GPU session measures the spread of one seed run twice). --steps N replays the first N
steps only (a cheap spot check); a run that was resumed is replayed straight through (resuming is exact). A
commit's code runs only once the commit is merged into this checkout's HEAD (reviewed code). --prepare-data first
builds the data of a track whose tracks.json entry says how (`replay_data`: the embedded sample, small and fetched
from the package index) with this checkout's pipeline, as speedrun.sh names its folders; the data line then checks
that it is the record's.
"""

import glob
import json
import math
import os
import subprocess
import sys
import tempfile

from records.record import RecordError, is_merged, parse_log

GPU_TOLERANCE = 0.005  # loss units; a default until the same seed run twice on a GPU measures it
# A CPU run replays to the same digits on the same CPU model with the same thread count (the log's environment names
# both, and the replay takes the thread count). Elsewhere float sums round differently and training amplifies it:
# the committed cpu-smoke record (made on a machine the log does not name) replayed on this project's 2-core Xeon
# drifted by up to 0.015 in train loss and 0.004 in the final val loss over 150 steps, so the tolerance is wider.
OTHER_CPU_TOLERANCE = 0.05
# options that say where and how a run keeps its files, not what it computes: set for the replay
BOOKKEEPING = {"run_id", "out_dir", "resume", "stop_after", "save_every", "save_final", "wandb", "preset",
               "dry_run", "gpu", "world"}


def as_argument(key, value):
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
        value = ",".join(repr(v) for v in value)
    return f"--{key}={value}"


def replay_arguments(config, data_root, out_dir, steps):
    """The command line that trains the logged config again: data paths resolved against data_root, files in
    out_dir, no checkpoints, and a stop after `steps` when that is before the end."""
    args = [as_argument(k, v) for k, v in config.items() if k not in BOOKKEEPING]
    for key in ("train_files", "val_files", "tokenizer"):
        args.append(as_argument(key, os.path.join(data_root, config[key])))
    args += [f"--out_dir={out_dir}", "--run_id=replay", "--save_every=0", "--save_final=false"]
    if steps:
        args.append(f"--stop_after={steps}")
    return args


def clean_copy(repo, commit, into):
    """The commit's tree as git holds it, in a worktree of its own (nothing untracked, nothing modified)."""
    subprocess.run(["git", "worktree", "add", "--detach", "--force", into, commit], cwd=repo, capture_output=True,
                   check=True)


def train_again(tree, args, world, threads=None):
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"] \
        if world > 1 else [sys.executable]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run([*launch, "train_gpt.py", *args], cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise RecordError(f"the replay did not run: {last}")


def default_tolerance(env):
    """0 (the same digits) for a CPU run made on this CPU model with the kernels this torch picks here (a
    virtual machine's model name can be generic: the ISA level tells kernels apart); else the stated tolerances."""
    if env.get("gpu"):
        return GPU_TOLERANCE
    import torch
    from harness.runlog import cpu_name
    same_kernels = env.get("cpu_capability", torch.backends.cpu.get_cpu_capability()) == \
        torch.backends.cpu.get_cpu_capability()  # older logs do not name it: the model name decides
    return 0.0 if env.get("cpu") and env.get("cpu") == cpu_name() and same_kernels else OTHER_CPU_TOLERANCE


def losses(log, steps):
    """{(kind, step): the logged value as text} of the train and validation lines up to `steps`."""
    found = {}
    for _, kind, event in log.events:
        if kind in ("train", "val") and (not steps or event["step"] <= steps):
            found[(kind, event["step"])] = f"{float(event['train_loss' if kind == 'train' else 'val_loss']):.6f}"
    return found


def differences(logged, replayed, tolerance):
    """The first disagreement of two {(kind, step): value} maps, in step order, or None."""
    for key in sorted(set(logged) | set(replayed), key=lambda k: (k[1], k[0])):
        a, b = logged.get(key), replayed.get(key)
        what = "train_loss" if key[0] == "train" else "val_loss"
        if a is None or b is None:
            return f"step {key[1]}: {what} {'missing from the log' if a is None else 'not replayed'}"
        same = a == b if tolerance == 0 else (math.isfinite(float(b)) and abs(float(a) - float(b)) <= tolerance)
        if not same:
            return f"step {key[1]}: {what} {a} in the log, {b} replayed"
    return None


class MissingData(RecordError):
    """The record's data is not where the replay looks: the same for every run of the record."""


def missing_data(config, data_root):
    """The first of the config's data paths that is not under data_root, or None."""
    for key in ("tokenizer", "train_files", "val_files"):
        path = os.path.join(data_root, config[key])
        if not glob.glob(path):
            return path
    return None


def reproduce_run(record_dir, run, commit, repo, data_root, steps, tolerance):
    """One run of a record replayed: a line saying what agreed, or RecordError naming the first disagreement."""
    log = parse_log(os.path.join(record_dir, run["log"]))
    start = log.segments[0]
    config, world = start["config"], start["environment"].get("world_size") or 1
    tolerance = default_tolerance(start["environment"]) if tolerance is None else tolerance
    missing = missing_data(config, data_root)
    if missing:
        raise MissingData(f"no data at {missing}: add --prepare-data to build the track's data, or point --data-root "
                          "at the folder that holds the record's data/ paths")
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "tree")
        clean_copy(repo, commit, tree)
        try:
            train_again(tree, replay_arguments(config, data_root, os.path.join(tmp, "runs"), steps), world,
                        start["environment"].get("threads"))
            replayed = parse_log(os.path.join(tmp, "runs", "replay", "log.txt"))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=repo, capture_output=True)
    if replayed.segments[0].get("data") != start.get("data"):
        raise RecordError(f"{run['run_id']}: replayed on other data than the log's (its data line differs): point "
                          "--data-root at the folder that holds the record's data/ paths")
    expected = losses(log, steps)
    found = differences(expected, losses(replayed, steps), tolerance)
    if found:
        raise RecordError(f"{run['run_id']}: {found}")
    exact = "the same digits" if tolerance == 0 else f"within {tolerance}"
    return f"{run['run_id']}: {len(expected)} losses up to step {max(s for _, s in expected)} replayed, {exact}"


def prepare_data(track, data_root, repo=".", echo=print):
    """Builds a track's data under data_root/data/ as speedrun.sh does (download, tokenizer, tokens), with this
    checkout's code; every stage verifies what is already there, so a second call costs seconds."""
    recipe = track.get("replay_data")
    if not recipe:
        raise RecordError(f"track {track['id']}: tracks.json says not how to build its data (no replay_data); build "
                          "it with speedrun.sh and point --data-root at the folder that holds its data/")
    name, vocab = recipe["dataset"], int(recipe["vocab_size"])
    raw, tokenizer, tokens = (os.path.join(data_root, "data", part) for part in
                              (f"raw/{name}", f"tokenizers/{name}_{vocab}", f"tokens/{name}_{vocab}"))
    stages = [["data.download", "--dataset", name, "--out", raw],
              ["data.tokenize", "--corpus", raw, "--tokenizer", tokenizer, "--out", tokens]]
    if not os.path.exists(os.path.join(tokenizer, "tokenizer.json")):
        stages.insert(1, ["data.tokenizer", "train", "--corpus", raw, "--out", tokenizer, "--vocab-size", str(vocab)])
    for module, *args in stages:
        echo(f"data: python -m {module} {' '.join(args)}")
        done = subprocess.run([sys.executable, "-m", module, *args], cwd=repo, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
            raise RecordError(f"building track {track['id']}'s data failed at python -m {module}: {last}")


def reproduce(record_dir, run_ids=None, steps=None, repo=".", data_root=None, tolerance=None, echo=print):
    """Replays the chosen runs (default: all) of a record; returns the problems (empty when every run agreed)."""
    try:
        with open(os.path.join(record_dir, "results.json"), encoding="utf-8") as f:
            record = json.loads(f.read(1 << 20))
        commit, runs = str(record["commit"]), list(record["runs"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{record_dir}: not a readable record ({type(e).__name__}: {e}); run python -m records validate on it"]
    problems = []
    if not is_merged(commit, repo):
        return [f"{record_dir}: commit {commit[:12]} is not merged into this checkout's HEAD: a replay runs its code "
                "only once it is reviewed and merged; check out the branch that holds it"]
    chosen = [run for run in runs if not run_ids or run["run_id"] in run_ids]
    if run_ids and len(chosen) != len(set(run_ids)):
        return [f"{record_dir}: no run {sorted(set(run_ids) - {r['run_id'] for r in chosen})} in the record"]
    for run in chosen:
        try:
            echo(reproduce_run(record_dir, run, commit, repo, os.path.abspath(data_root or repo), steps, tolerance))
        except RecordError as e:
            problems.append(f"{record_dir}: {e}")
            if isinstance(e, MissingData):
                break  # the other runs read the same data
    return problems
