"""The instruments a record is measured with are this checkout's, never the record's commit's: FLOPs are counted by
HEAD's harness/trace.py applied to the recipe (train_gpt.py) of the record's commit, MFU's peak is the track's, and
nothing of a commit runs inside validate, compare or leaderboard.

The count runs in a child process that does nothing else: a copy of the commit's tree (git archive; its train_gpt.py
imports its own model code from there) in which HEAD's trace.py, loaded from this checkout by path, builds the
recipe's model on the meta device and counts its matmuls. A record whose commit counted differently (a harness that
counted a quarter of the FLOPs, reverted since) is refused where the figures differ.
"""

import ast
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAD_TRACE = os.path.join(REPO_DIR, "harness", "trace.py")  # the instrument: HEAD's, whatever the commit holds
HEAD_PEAKS = os.path.join(REPO_DIR, "harness", "runlog.py")

# In the child: cwd is the commit's tree, argv[1] HEAD's trace.py; stdin [(config, vocab, steps), ...]; stdout
# [(FLOPs per token, tokens of those steps, their model FLOPs), ...]: the tokens by the recipe's batch schedule
# (batch_tokens) when it has one, else steps x total_batch_tokens; the model FLOPs each step's tokens x its stage's
# count (the recipe's stage and apply_stage, traced at the stage's seq_len), else tokens x the count.
COUNT_SCRIPT = """
import dataclasses, importlib.util, json, sys
sys.path.insert(0, ".")
spec = importlib.util.spec_from_file_location("head_instrument", sys.argv[1])
instrument = importlib.util.module_from_spec(spec)
spec.loader.exec_module(instrument)
import train_gpt
fields = {f.name for f in dataclasses.fields(train_gpt.Config)}
counts = []
for config, vocab, steps in json.load(sys.stdin):
    config = train_gpt.Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in fields})
    schedule, stage_of = getattr(train_gpt, "batch_tokens", None), getattr(train_gpt, "stage", None)
    batches = [schedule(s, config) if schedule else config.total_batch_tokens for s in range(steps)]
    per_token = instrument.flops_per_token(train_gpt, config, vocab)
    flops, by_stage = 0, {}
    for s, batch in enumerate(batches):
        stage = stage_of(s, config) if stage_of else {}
        key = json.dumps(stage, sort_keys=True, default=str)
        if key not in by_stage:
            by_stage[key] = instrument.stage_flops_per_token(train_gpt, config, vocab, stage) if stage else per_token
        flops += batch * by_stage[key]
    counts.append([per_token, sum(batches), flops])
print(json.dumps(counts))
"""
_COUNTS = {}  # (commit, config, vocab, steps) -> (FLOPs per token, tokens): HEAD's instrument counts a commit's recipe
             # the same always


def count_flops(commit, requests, repo=REPO_DIR):
    """FLOPs per token of each (config dict, vocab[, steps]) for the recipe at a merged commit, counted by HEAD's
    harness in one child process for all of them (a record's runs share a recipe: one count, however many runs)."""
    return [flops for flops, *_ in counts(commit, requests, repo)]


def count_tokens(commit, requests, repo=REPO_DIR):
    """Tokens of each (config dict, vocab, steps): the recipe's batch schedule summed over the steps (the same child
    as count_flops, whose results are kept)."""
    return [tokens for _, tokens, _ in counts(commit, requests, repo)]


def count_model_flops(commit, requests, repo=REPO_DIR):
    """The model FLOPs of each (config dict, vocab, steps): each step's tokens x its stage's count (the same child)."""
    return [flops for *_, flops in counts(commit, requests, repo)]


def counts(commit, requests, repo=REPO_DIR):
    requests = [(config, vocab, *(rest or [0])) for config, vocab, *rest in requests]
    keys = [(commit, json.dumps(config, sort_keys=True), vocab, steps) for config, vocab, steps in requests]
    todo = list({key: request for request, key in zip(requests, keys) if key not in _COUNTS}.items())
    if todo:
        with tempfile.TemporaryDirectory() as tmp:
            archive = subprocess.run(["git", "archive", "--format=tar", commit], capture_output=True, cwd=repo,
                                     check=True)
            with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
                tar.extractall(tmp, filter="data")
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            done = subprocess.run([sys.executable, "-c", COUNT_SCRIPT, HEAD_TRACE], input=json.dumps(
                [request for _, request in todo]), capture_output=True, text=True, cwd=tmp, env=env)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output")
        for (key, _), (flops, tokens, model_flops) in zip(todo, json.loads(done.stdout)):
            _COUNTS[key] = (int(flops), int(tokens), int(model_flops))
    return [_COUNTS[key] for key in keys]


def literal(source, name):
    """A top-level constant of a Python source (a dict, set, tuple of literals), read without running anything;
    None when it is absent or not a literal."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                return None
    return None


def head_peak_table():
    """HEAD's dense bf16 FLOP/s by GPU name (harness/runlog.py), read as a literal."""
    with open(HEAD_PEAKS, encoding="utf-8") as f:
        return literal(f.read(), "PEAK_BF16_FLOPS") or {}


def track_peak(track, gpu):
    """MFU's peak per device: the track's (hardware.peak_flops), else HEAD's table by the GPU's name; None on a CPU or
    an unknown GPU. Never the run's own --peak_flops: a config could lift the bound."""
    hardware = track.get("hardware") or {}
    if hardware.get("peak_flops"):
        return float(hardware["peak_flops"])
    if not gpu:
        return None
    return next((flops for key, flops in head_peak_table().items() if key in str(gpu)), None)
