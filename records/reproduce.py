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

import ast
import datetime
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

from records import attest, trust
from records.attest import GPU_TOLERANCE, OTHER_CPU_TOLERANCE  # noqa: F401  (the tolerances live with the checks)
from records.record import MAX_VAL_OVERLAP, RecordError, is_merged, load_tracks, parse_log, source_at_commit, \
    track_pins

# options that say where and how a run keeps its files, not what it computes: set for the replay
BOOKKEEPING = {"run_id", "out_dir", "resume", "stop_after", "save_every", "save_final", "wandb", "preset",
               "dry_run", "gpu", "world", "peak_flops"}
DATA_PATHS = ("train_files", "val_files", "tokenizer")  # the track's own (tracks.json replay_paths), never the log's


def as_argument(key, value):
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
        value = ",".join(repr(v) for v in value)
    return f"--{key}={value}"


def config_fields(source):
    """The field names of the Config dataclass of a train_gpt.py source, read from its syntax (nothing runs)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == "Config":
            return {n.target.id for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    return set()


SCALAR = (bool, int, float, str, type(None))


def replay_config(config, fields):
    """The settings the replay passes on: only Config fields of the record's commit, only plain values (a number, a
    flag, a word, a list of them), never bookkeeping or a data path. RecordError names a key that is none of these."""
    if not isinstance(config, dict):
        raise RecordError("the log's config is not a JSON object")
    for key, value in config.items():
        if key not in fields:
            raise RecordError(f"the log's config has {printable_key(key)}, which train_gpt.py at the record's commit "
                              "has no field for: the replay passes Config fields only")
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, SCALAR) for v in values) or any(isinstance(v, str) and ("\n" in v or "\0" in v)
                                                                 for v in values):
            raise RecordError(f"the log's {printable_key(key)} is not a plain value")
    return {k: v for k, v in config.items() if k not in BOOKKEEPING and k not in DATA_PATHS}


def printable_key(key):
    return trust.printable(repr(key))[:60]


def track_paths(track, vocab, data_root):
    """The track's own data under data_root (tracks.json replay_paths, '{vocab}' filled with the record's vocab)."""
    layout = track.get("replay_paths")
    if not isinstance(layout, dict) or set(layout) != set(DATA_PATHS):
        raise RecordError(f"track {track['id']}: tracks.json says not where its data lies (replay_paths); a replay "
                          "trains only on the track's own data")
    return {key: os.path.join(data_root, layout[key].format(vocab=int(vocab))) for key in DATA_PATHS}


def replay_arguments(config, paths, out_dir, steps):
    """The command line that trains the logged recipe again: its plain Config fields, the track's data paths, files
    in out_dir, no checkpoints, and a stop after `steps` when that is before the end."""
    args = [as_argument(k, v) for k, v in config.items()]
    args += [as_argument(key, paths[key]) for key in DATA_PATHS]
    args += [f"--out_dir={out_dir}", "--run_id=replay", "--save_every=0", "--save_final=false"]
    if steps:
        args.append(f"--stop_after={steps}")
    return args


def clean_copy(repo, commit, into):
    """The commit's tree as git holds it, in a worktree of its own (nothing untracked, nothing modified)."""
    subprocess.run(["git", "worktree", "add", "--detach", "--force", into, commit], cwd=repo, capture_output=True,
                   check=True)


def run_in_tree(tree, script, args, world=1, threads=None, what="the run"):
    """A script of a commit's tree (train_gpt.py, eval_core.py) in a process of its own, under torchrun on `world`
    processes when more than one; RecordError with its last line of output when it fails."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"] \
        if world > 1 else [sys.executable]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run([*launch, script, *args], cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise RecordError(f"{what} did not run: {last}")


def train_again(tree, args, world, threads=None):
    run_in_tree(tree, "train_gpt.py", args, world, threads, "the replay")


def default_tolerance(env):
    """The replayer's tolerance, chosen by where the replay runs, not by what the record says of itself: on a GPU,
    GPU_TOLERANCE; on a CPU, the same digits when the log names this CPU model and kernel level (a virtual machine's
    model name can be generic: the level tells kernels apart; the replay takes the log's threads), else
    OTHER_CPU_TOLERANCE (with no systematic shift: attest.BIAS_TOLERANCE)."""
    import torch
    from harness.runlog import cpu_name
    if torch.cuda.is_available():
        return GPU_TOLERANCE
    here = torch.backends.cpu.get_cpu_capability()
    same_kernels = env.get("cpu_capability", here) == here  # older logs do not name it: the model name decides
    return 0.0 if env.get("cpu") and env.get("cpu") == cpu_name() and same_kernels and not env.get("gpu") \
        else OTHER_CPU_TOLERANCE


class MissingData(RecordError):
    """The record's data is not where the replay looks: the same for every run of the record."""


def missing_data(paths):
    """The first of the track's data paths that holds nothing, or None."""
    return next((paths[key] for key in DATA_PATHS if not glob.glob(paths[key])), None)


def reproduce_run(record_dir, run, record, track, repo, data_root, steps, tolerance, keep=None, core_args=None):
    """One run of a record replayed on the track's data: a line saying what agreed (and the replay's log copied to
    `keep`), or RecordError naming the first disagreement. Every ranked figure is compared: the train and val losses
    and bits per byte at every logged step, the model line (vocab, FLOPs per token, steps, batch) and the tokens; on a
    track ranked by CORE, a whole replay is evaluated again (the commit's eval_core.py on the replayed checkpoint,
    core_args naming the bundle) and its CORE compared."""
    log = parse_log(os.path.join(record_dir, run["log"]))
    start = log.segments[0]
    config, env = start["config"], start["environment"] if isinstance(start["environment"], dict) else {}
    source = source_at_commit(record["commit"], repo) or ""
    settings = replay_config(config, config_fields(source))
    paths = track_paths(track, start["model"]["vocab_size"], data_root)
    missing = missing_data(paths)
    if missing:
        raise MissingData(f"no data at {missing}: add --prepare-data to build the track's data, or point --data-root "
                          "at the folder that holds the track's data/")
    tolerance = default_tolerance(env) if tolerance is None else tolerance
    core = track.get("metric") == "core" and not steps
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "tree")
        clean_copy(repo, record["commit"], tree)
        try:
            args = replay_arguments(settings, paths, os.path.join(tmp, "runs"), steps)
            train_again(tree, args + (["--save_final=true"] if core else []), env.get("world_size") or 1,
                        env.get("threads"))
            if core:
                evaluate_again(tree, os.path.join(tmp, "runs", "replay"), core_args or [], env.get("world_size") or 1,
                               env.get("threads"))
            replay_path = os.path.join(tmp, "runs", "replay", "log.txt")
            replayed = parse_log(replay_path)
            if keep:
                os.makedirs(os.path.dirname(keep), exist_ok=True)
                shutil.copyfile(replay_path, keep)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=repo, capture_output=True)
    check_replayed_data(run, start, replayed.segments[0], track)
    if replayed.segments[0].get("model") != start["model"]:
        raise RecordError(f"{run['run_id']}: the replay's model line {replayed.segments[0].get('model')} is not the "
                          f"log's {start['model']}")
    logged = attest.figures(log, steps)
    largest, problem = attest.compare_figures(logged, attest.figures(replayed, steps), tolerance)
    if problem:
        raise RecordError(f"{run['run_id']}: {problem}")
    if core:
        check_core_replayed(run, log, replayed, tolerance)
    trained = tokens_trained(replayed)
    if not steps and run.get("tokens") != trained:
        raise RecordError(f"{run['run_id']}: {run.get('tokens')} tokens claimed, the replay trained {trained:,}")
    exact = "the same digits" if tolerance == 0 else f"within {tolerance}"
    train = sum(1 for kind, _ in logged if kind == "train_loss")
    return (f"{run['run_id']}: {train} losses up to step {max(s for _, s in logged)} replayed, {exact}",
            {"run_id": run["run_id"], "largest_difference": largest, "tolerance": tolerance})


CORE_TOLERANCE = 0.01  # CORE units, where a tolerance is allowed: a guess until a GPU evaluates one checkpoint twice


def evaluate_again(tree, run_dir, core_args, world, threads=None):
    """The commit's eval_core.py on the replayed run (its core line goes to the replay's log)."""
    run_in_tree(tree, "eval_core.py", ["--run-dir", run_dir, *core_args], world, threads,
                "the replay's CORE evaluation")


def check_core_replayed(run, log, replayed, tolerance):
    """The replay's CORE line against the log's: the same bundle, rows and tasks, CORE within the tolerance (the
    same six decimals when none is allowed)."""
    last = lambda events: next((e for _, kind, e in reversed(events) if kind == "core"), None)
    ours, theirs = last(replayed.events), last(log.events)
    if theirs is None:
        raise RecordError(f"{run['run_id']}: the log has no core line, and the track ranks by CORE")
    if ours is None:
        raise RecordError(f"{run['run_id']}: the replay's evaluation wrote no core line")
    for key in ("bundle_zip_sha256", "max_per_task"):
        if ours[key] != theirs[key]:
            raise RecordError(f"{run['run_id']}: CORE replayed with {key} {ours[key]}, the log's is {theirs[key]}: "
                              "give the replay the record's bundle")
    if set(ours["tasks"]) != set(theirs["tasks"]):
        raise RecordError(f"{run['run_id']}: CORE replayed over other tasks than the log's")
    allowed = min(tolerance, CORE_TOLERANCE) if tolerance else 0.0
    same = f"{ours['core']:.6f}" == f"{theirs['core']:.6f}" if not allowed else abs(ours["core"] - theirs["core"]) <= allowed
    if not same:
        raise RecordError(f"{run['run_id']}: CORE {theirs['core']:.6f} in the log, {ours['core']:.6f} replayed")


def tokens_trained(log):
    """The tokens a log's run trained on: its last step line's count (a batch schedule), else steps x batch."""
    last = next((e for _, kind, e in reversed(log.events) if kind == "train"), None)
    if last is None:
        return 0
    return int(last["tokens"]) if "tokens" in last else last["step"] * log.segments[0]["model"]["batch_tokens"]


def check_replayed_data(run, start, replay_start, track):
    """The replay's own data line (what it read of the track's data: every shard by sha256, the tokenizer, and the
    val/train overlap measured beside the track's shards by this checkout's pipeline) against the log's."""
    ours, theirs = replay_start.get("data") or {}, start.get("data") or {}
    for key in ("tokenizer_sha256", "train_shards", "val_shards", "val_tokens", "val_bytes"):
        if ours.get(key) != theirs.get(key):
            raise RecordError(f"{run['run_id']}: the log's data line is not the track's data ({key} differs from what "
                              "the replay read): the run trained or was scored on other data")
    overlap = (ours.get("val_overlap") or {}).get("fraction")
    limit = track_pins(track)[0].get("max_val_overlap") or MAX_VAL_OVERLAP
    if overlap is not None and overlap > limit:
        raise RecordError(f"{run['run_id']}: the track's data holds {overlap:.2%} of its val tokens in its train "
                          f"shards (limit {limit:.2%})")


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


def reproduce(record_dir, run_ids=None, steps=None, repo=".", data_root=None, tolerance=None, echo=print,
              tracks_file=None, attest_by=None, core_args=None):
    """Replays the chosen runs (default: all) of a record; returns the problems (empty when every run agreed). With
    attest_by (the replayer's name), an agreeing replay is written into the record as evidence (records/attest.py)."""
    try:
        record = trust.read_json(os.path.join(record_dir, "results.json"))
        commit, runs = str(record["commit"]), list(record["runs"])
        track = load_tracks(*([tracks_file] if tracks_file else []))[record["track"]]
    except (RecordError, KeyError, TypeError) as e:
        return [f"{record_dir}: not a readable record ({type(e).__name__}: {e}); run python -m records validate on it"]
    if not is_merged(commit, repo):
        return [f"{record_dir}: commit {commit[:12]} is not merged into this checkout's HEAD: a replay runs its code "
                "only once it is reviewed and merged; check out the branch that holds it"]
    chosen = [run for run in runs if not run_ids or run["run_id"] in run_ids]
    if run_ids and len(chosen) != len(set(run_ids)):
        return [f"{record_dir}: no run {sorted(set(run_ids) - {r['run_id'] for r in chosen})} in the record"]
    name = attest.attestation_name(attest_by) if attest_by else None
    staging = tempfile.mkdtemp(prefix=".replay.") if name else None
    problems, entries = [], []
    try:
        for run in chosen:
            keep = os.path.join(staging, f"{run['run_id']}.txt") if staging else None
            try:
                line, entry = reproduce_run(record_dir, run, record, track, repo,
                                            os.path.abspath(data_root or repo), steps, tolerance, keep, core_args)
                echo(line)
                entries.append(entry)
            except RecordError as e:
                problems.append(f"{record_dir}: {e}")
                if isinstance(e, MissingData):
                    break  # the other runs read the same data
        if name and not problems:
            echo(f"wrote {write_attestation(record_dir, name, attest_by, record, steps, entries, staging, repo)}")
    finally:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
    return problems


def write_attestation(record_dir, name, by, record, steps, entries, staging, repo):
    """replays/<name>.json and replays/<name>/<run>.txt in the record (records/attest.py says what validate checks)."""
    folder = os.path.join(record_dir, "replays", name)
    if os.path.lexists(folder) or os.path.lexists(folder + ".json"):
        raise RecordError(f"{folder} exists: one attestation per replayer and day")
    os.makedirs(folder)
    for entry in entries:
        shutil.copyfile(os.path.join(staging, f"{entry['run_id']}.txt"), os.path.join(folder, f"{entry['run_id']}.txt"))
        entry["log"] = f"replays/{name}/{entry['run_id']}.txt"
    checkout = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    attestation = {"schema_version": 1, "by": by, "date": datetime.date.today().isoformat(), "checkout": checkout,
                   "record_commit": record["commit"], "steps": steps, "runs": entries}
    with open(folder + ".json", "w") as f:
        json.dump(attestation, f, indent=2)
    return folder + ".json"
