"""eval_core.py: CORE (22 in-context-learning tasks, DCLM's metric as nanochat measures it) and bits per byte for a
run's checkpoint.

    python eval_core.py --run-dir runs/<run_id>                          # full CORE, BPB, samples
    python eval_core.py --run-dir runs/<run_id> --max-per-task 100       # a quick estimate
    torchrun --standalone --nproc_per_node=8 eval_core.py --run-dir runs/<run_id>

The eval bundle (core.yaml, eval_meta_data.csv, eval_data/) is downloaded once into --bundle-dir; the sha256 of
the zip and of every file are recorded there, and a bundle whose files have changed is refused. Results go into
the run's results.json (key "core") and core.csv.

How an example is scored: exactly as nanochat's evaluator (the one behind the published GPT-2 CORE 0.256525), so
that scores compare, odd cases included:
- each task's rows are shuffled with random.Random(1337), cut to --max-per-task, and row i gets num_fewshot other
  rows of the cut list sampled with random.Random(1234 + i); each few-shot block is followed by a blank line; the
  delimiter is the task's continuation_delimiter (" " when core.yaml names none); language-modelling contexts are
  stripped of surrounding whitespace, and so is the whole prompt without its continuation;
- every prompt is tokenized with BOS in front (specials in the text are plain text);
- multiple choice: one prompt per choice; the tokens after the prompts' common token prefix are scored. When one
  prompt is a token prefix of all the others (a choice that is a token prefix of every other choice, or identical
  choices), that prompt has nothing left to score: its mean loss is NaN. Schema: one prompt per context option;
  the prompts' common token suffix is scored (NaN only when all the prompts are identical);
- the choice is the lowest mean cross-entropy, ties to the first, as Python's min() picks over the list: a NaN in
  first place is chosen whatever the others score (nothing compares lower than it), a NaN elsewhere is never
  chosen. Prompts of one row that are identical score identically (so the first of them wins a tie), as they do
  in the reference's one batch per row;
- language modelling: correct when greedy argmax reproduces every continuation token; an empty continuation (in
  tokens) is an error, as in the reference;
- a prompt longer than the model's context is cut from the left (no BOS put back), as the reference does for a
  model with a fixed context such as GPT-2's 1024 tokens (nanochat's own models, whose rotary tables reach past
  their training length, are scored on whole prompts instead: the report's `truncation` says how many prompts
  this touches, so a CORE comparison with them can be judged); a scored span that then fills the whole context scores
  nothing (NaN, as in the reference) for a choice, and is an error for a continuation (the reference fails on it),
  as is a span longer than the context;
- a task's accuracy is its share of correct rows; centered accuracy is (accuracy - 0.01 * baseline) /
  (1 - 0.01 * baseline), with the random baseline in percent from eval_meta_data.csv; CORE is their mean.
Relative paths in the run's config (tokenizer, val files) are taken from this checkout's folder (where training
ran them from), so that CORE runs the same whatever the working directory.
The model is built with the train_gpt.py the run ran (the source at the top of its log.txt): when that differs from
this checkout's, the run's own source is imported (a line says so); weights that do not load strictly are refused
with one line that names the run's commit to check out.

Speed: every prompt of every task is scored in one pass, sorted by length into padded batches of at most
--batch-tokens tokens, spread over the processes by token count; padding is never scored.
"""

import argparse
import atexit
import csv
import dataclasses
import fcntl
import importlib.util
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from tqdm import tqdm

import train_gpt
from data.shards import read_header
from data.tokenizer import TokenizerError, load_tokenizer, sha256_file
from harness.config import ConfigError
from harness.data import find_files, load_tokenizer_info, load_val_tokens
from harness.device import autocast_for, init_distributed
from harness.evaluate import evaluate

BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
DEFAULT_BUNDLE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "speedrun")
SAMPLE_PROMPTS = ["The capital of France is", "The chemical symbol of gold is", "If yesterday was Friday, then "
                  "tomorrow will be", "The opposite of hot is", "The planets of the solar system are:"]


class EvalError(ValueError):
    """A bad bundle, checkpoint or option; the message says what to do."""


# -----------------------------------------------------------------------------
# The bundle: download once (one process), verify always


def bundle_manifest(folder):
    files = {}
    for root, _, names in os.walk(os.path.join(folder, "eval_bundle")):
        for name in sorted(names):
            path = os.path.join(root, name)
            files[os.path.relpath(path, folder)] = sha256_file(path)
    return files


def fetch_bundle(bundle_dir, url=BUNDLE_URL):
    """Downloads and unpacks the bundle under a file lock (the first process does it, the others wait); then
    checks every file against the sha256 recorded when it was unpacked. Returns (folder, zip sha256)."""
    os.makedirs(bundle_dir, exist_ok=True)
    manifest_path = os.path.join(bundle_dir, "eval_bundle.sha256.json")
    with open(os.path.join(bundle_dir, ".eval_bundle.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(manifest_path):
            zip_path = os.path.join(bundle_dir, "eval_bundle.zip")
            if not os.path.exists(zip_path):
                print(f"downloading the eval bundle from {url}")
                try:
                    with urllib.request.urlopen(url, timeout=60) as response, open(zip_path + ".part", "wb") as f:
                        shutil.copyfileobj(response, f)
                except OSError as e:
                    raise EvalError(f"could not download the eval bundle from {url} ({e}); put eval_bundle.zip in "
                                    f"{bundle_dir} by hand, or pass --bundle-dir") from None
                os.replace(zip_path + ".part", zip_path)
            staging = os.path.join(bundle_dir, ".unpacking")
            shutil.rmtree(staging, ignore_errors=True)
            try:
                with zipfile.ZipFile(zip_path) as archive:
                    archive.extractall(staging)
                if not os.path.isfile(os.path.join(staging, "eval_bundle", "core.yaml")):
                    raise zipfile.BadZipFile("no eval_bundle/core.yaml inside")
            except (zipfile.BadZipFile, zlib.error, EOFError) as e:
                os.remove(zip_path)
                shutil.rmtree(staging, ignore_errors=True)
                raise EvalError(f"{zip_path}: not a valid zip ({e}; removed); run again to download it anew") from None
            shutil.rmtree(os.path.join(bundle_dir, "eval_bundle"), ignore_errors=True)
            os.replace(os.path.join(staging, "eval_bundle"), os.path.join(bundle_dir, "eval_bundle"))
            shutil.rmtree(staging)
            manifest = {"zip_sha256": sha256_file(zip_path), "files": bundle_manifest(bundle_dir)}
            with open(manifest_path + ".tmp", "w") as f:  # whole or not at all: it marks an unpacked bundle
                json.dump(manifest, f, indent=1)
            os.replace(manifest_path + ".tmp", manifest_path)
    with open(manifest_path) as f:
        manifest = json.load(f)
    now = bundle_manifest(bundle_dir)
    changed = sorted(p for p in set(manifest["files"]) | set(now) if manifest["files"].get(p) != now.get(p))
    if changed:
        raise EvalError(f"{bundle_dir}: the eval bundle's files changed since it was unpacked "
                        f"({changed[0]}{f' and {len(changed) - 1} more' if len(changed) > 1 else ''}); delete "
                        f"eval_bundle/ and {os.path.basename(manifest_path)} to unpack it again")
    return os.path.join(bundle_dir, "eval_bundle"), manifest["zip_sha256"]


@dataclass
class Task:
    label: str
    kind: str          # multiple_choice, schema or language_modeling
    shots: int
    delimiter: str
    baseline: float    # random-guess accuracy, a fraction (0.01 x the percent in eval_meta_data.csv, as the
                       # reference computes it, to the last bit)
    rows: list


def load_tasks(bundle, max_per_task=None, labels=None):
    """The bundle's tasks, each with its rows shuffled (seed 1337) and cut to max_per_task."""
    missing = [name for name in ("core.yaml", "eval_meta_data.csv", "eval_data")
               if not os.path.exists(os.path.join(bundle, name))]
    if missing:
        raise EvalError(f"{bundle} is not an unpacked eval bundle (no {', '.join(missing)}); point --bundle at the "
                        "folder that holds core.yaml, or leave it out to download the bundle")
    with open(os.path.join(bundle, "core.yaml")) as f:
        specs = yaml.safe_load(f)["icl_tasks"]
    with open(os.path.join(bundle, "eval_meta_data.csv"), newline="") as f:
        baselines = {row["Eval Task"]: float(row["Random baseline"]) for row in csv.DictReader(f)}
    tasks = []
    for spec in specs:
        if labels and spec["label"] not in labels:
            continue
        with open(os.path.join(bundle, "eval_data", spec["dataset_uri"]), encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        random.Random(1337).shuffle(rows)
        if spec["label"] not in baselines:
            raise EvalError(f"{bundle}/eval_meta_data.csv has no random baseline for {spec['label']}")
        tasks.append(Task(spec["label"], spec["icl_task_type"], spec["num_fewshot"][0],
                          spec.get("continuation_delimiter", " "), 0.01 * baselines[spec["label"]],
                          rows[:max_per_task] if max_per_task else rows))
    if labels and len(tasks) != len(labels):
        raise EvalError(f"unknown task(s): {sorted(set(labels) - {t.label for t in tasks})}")
    return tasks


# -----------------------------------------------------------------------------
# Prompts and scored spans


def fewshot_rows(task, index):
    if task.shots >= len(task.rows):
        raise EvalError(f"{task.label}: {len(task.rows)} rows cannot give {task.shots}-shot prompts; use "
                        f"--max-per-task {task.shots + 1} or more")
    others = [i for i in range(len(task.rows)) if i != index]
    return [task.rows[i] for i in random.Random(1234 + index).sample(others, task.shots)] if task.shots else []


def render(task, index):
    """The prompt strings of row `index`: one per choice (multiple choice), per context option (schema), or
    [without, with] the continuation (language modelling)."""
    item, shots, d = task.rows[index], fewshot_rows(task, index), task.delimiter
    if task.kind == "multiple_choice":
        prefix = "".join(f"{s['query']}{d}{s['choices'][s['gold']]}\n\n" for s in shots)
        return [f"{prefix}{item['query']}{d}{choice}" for choice in item["choices"]]
    if task.kind == "schema":
        prefix = "".join(f"{s['context_options'][s['gold']]}{d}{s['continuation']}\n\n" for s in shots)
        return [f"{prefix}{option}{d}{item['continuation']}" for option in item["context_options"]]
    if task.kind == "language_modeling":
        prefix = "".join(f"{s['context'].strip()}{d}{s['continuation']}\n\n" for s in shots)
        context = f"{prefix}{item['context'].strip()}{d}"
        return [context.strip(), context + item["continuation"]]
    raise EvalError(f"{task.label}: unknown task type {task.kind!r}")


def common_length(token_lists, from_end=False):
    """How many leading (or trailing) tokens all the lists share; the whole shortest list when it is a prefix (a
    suffix) of every other one."""
    shortest = min(len(t) for t in token_lists)
    common = 0
    while common < shortest and len({t[-1 - common] if from_end else t[common] for t in token_lists}) == 1:
        common += 1
    return common


def scored_spans(task, token_lists, where=""):
    """(start, end) of the scored tokens in each prompt's token list (end is always the list's length). A choice
    whose prompt is all common prefix (or suffix) gets start == end: nothing to score, a NaN mean loss. `where`
    names the row in error messages."""
    if task.kind == "multiple_choice":
        common = common_length(token_lists)
        return [(common, len(t)) for t in token_lists]
    if task.kind == "schema":
        common = common_length(token_lists, from_end=True)
        return [(len(t) - common, len(t)) for t in token_lists]
    without, with_ = token_lists
    if with_[:len(without)] != without:
        raise EvalError(f"{task.label}{where}: the prompt without its continuation does not tokenize as a prefix of "
                        "the prompt with it")
    if len(with_) == len(without):
        raise EvalError(f"{task.label}{where}: the continuation is empty (no tokens after the prompt), which the "
                        "reference evaluator refuses too; fix or remove the row")
    return [(len(without), len(with_))]


@dataclass
class Sequence:
    tokens: list
    start: int          # scored tokens are tokens[start:end], each predicted from the one before
    end: int
    task: int
    row: int
    truncated: bool


def build_sequences(tasks, tok, max_len):
    """Every prompt of every task as a BOS-prefixed token list with its scored span; prompts longer than
    max_len are cut from the left (spans are found on the whole prompts first). A choice's span that fills the
    whole cut prompt scores nothing, as in the reference (whose slice from position -1 is empty); a span longer
    than that, or an LM continuation that fills the context, is an error (the reference fails on those).
    ("with" is the only scored LM prompt.)"""
    sequences = []
    for t, task in enumerate(tasks):
        for row in range(len(task.rows)):
            token_lists = [[tok.bos_id] + ids for ids in tok.enc.encode_ordinary_batch(render(task, row))]
            spans = scored_spans(task, token_lists, f" row {row}")
            if task.kind == "language_modeling":
                token_lists = token_lists[1:]
            for tokens, (start, end) in zip(token_lists, spans):
                cut = max(0, len(tokens) - max_len)
                if start - cut < 0 or (start == cut and task.kind == "language_modeling"):
                    raise EvalError(f"{task.label} row {row}: the scored span ({end - start} tokens) does not fit "
                                    f"the model's context of {max_len} (the reference evaluator fails on it too); "
                                    "leave the task out with --tasks, or use a model with a longer context")
                if start == cut:  # nothing before the span is left to predict its first token from
                    start = end
                sequences.append(Sequence(tokens[cut:], start - cut, end - cut, t, row, cut > 0))
    return sequences


# -----------------------------------------------------------------------------
# Scoring: all sequences in length-sorted, padded batches, spread over the processes


def default_batch_tokens(device):
    """Padded tokens per forward pass: big batches on GPUs; small ones on CPUs, where big ones run slower."""
    return 16_384 if device.type == "cuda" else 1024


def make_batches(sequences, batch_tokens, world, max_len, pad_to=64):
    """Batches of sequence indices, longest first, each padded to a multiple of pad_to (few distinct shapes; at
    most max_len) and within batch_tokens; dealt to the processes so that each gets about the same number of
    tokens."""
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i].tokens))
    batches, current, width = [], [], 0
    for i in order:
        length = min(math.ceil(len(sequences[i].tokens) / pad_to) * pad_to, max_len)
        if current and (len(current) + 1) * max(width, length) > batch_tokens:
            batches.append((current, width))
            current, width = [], 0
        current.append(i)
        width = max(width, length)
    if current:
        batches.append((current, width))
    per_rank, load = [[] for _ in range(world)], [0] * world
    for batch, width in batches:
        rank = load.index(min(load))
        per_rank[rank].append((batch, width))
        load[rank] += len(batch) * width
    return per_rank


@torch.no_grad()
def score_sequences(model, sequences, pad_id, batch_tokens, rank, world, device, autocast, max_len, progress=True):
    """[mean loss over the scored span, 1 if greedy decoding reproduces the span] for every sequence."""
    results = torch.zeros(len(sequences), 2, dtype=torch.float64, device=device)
    mine = make_batches(sequences, batch_tokens, world, max_len)[rank]
    for batch, width in tqdm(mine, desc="CORE", unit="batch", disable=not progress or rank != 0):
        tokens = torch.full((len(batch), width), pad_id, dtype=torch.long)
        scored = torch.zeros(len(batch), width - 1, dtype=torch.bool)  # position p predicts token p + 1
        for row, i in enumerate(batch):
            seq = sequences[i]
            tokens[row, :len(seq.tokens)] = torch.tensor(seq.tokens)
            scored[row, seq.start - 1:seq.end - 1] = True
        tokens, scored = tokens.to(device), scored.to(device)
        with autocast:
            logits = model(tokens)
        predicting = logits[:, :-1].float()
        losses = F.cross_entropy(predicting.reshape(-1, predicting.size(-1)), tokens[:, 1:].reshape(-1),
                                 reduction="none").view(len(batch), -1)
        greedy_ok = logits[:, :-1].argmax(-1) == tokens[:, 1:]
        mean_loss = losses.double().where(scored, 0.0).sum(1) / scored.sum(1)  # nothing scored: 0 / 0 = NaN
        exact = (greedy_ok | ~scored).all(1).double()
        results[torch.tensor(batch, device=device)] = torch.stack([mean_loss, exact], dim=1)
    if world > 1:
        dist.all_reduce(results)  # each sequence was scored by exactly one process; the others hold zeros
    return results.cpu()


def pick(mean_losses):
    """The reference's choice: the lowest mean loss, ties to the first, as Python's min() over the list picks it.
    min() keeps its first item until a later one compares lower, and nothing compares lower than NaN: a NaN (a
    choice with nothing scored) in first place is chosen whatever the others score, and elsewhere never is."""
    if math.isnan(mean_losses[0]):
        return 0
    return min((loss, i) for i, loss in enumerate(mean_losses) if not math.isnan(loss))[1]


def predictions(tasks, sequences, results):
    """Per task, per row: the chosen option (see pick) or, for language modelling, whether greedy decoding
    reproduced the continuation. Identical prompts of one row get the loss of the first of them: in different
    padded batches their losses may differ in the last bits, and the reference, which scores a row in one batch,
    sees them tie."""
    by_row = {}
    for seq, (loss, exact) in zip(sequences, results.tolist()):
        by_row.setdefault((seq.task, seq.row), []).append((seq, loss, exact))
    chosen = []
    for t, task in enumerate(tasks):
        if task.kind == "language_modeling":
            chosen.append([by_row[(t, row)][0][2] == 1.0 for row in range(len(task.rows))])
            continue
        picks = []
        for row in range(len(task.rows)):
            prompts, losses = by_row[(t, row)], []
            for seq, loss, _ in prompts:
                first = next(i for i, (other, _, _) in enumerate(prompts)
                             if other.tokens == seq.tokens and other.start == seq.start)
                losses.append(losses[first] if first < len(losses) else loss)
            picks.append(pick(losses))
        chosen.append(picks)
    return chosen


def accuracy(task, chosen):
    if task.kind == "language_modeling":
        return sum(chosen) / len(chosen)
    return sum(choice == row["gold"] for choice, row in zip(chosen, task.rows)) / len(chosen)


def centered(accuracy, baseline):
    return (accuracy - baseline) / (1 - baseline)


def core_score(tasks, accuracies):
    rows = [{"task": task.label, "type": task.kind, "shots": task.shots, "examples": len(task.rows),
             "accuracy": acc, "baseline": task.baseline, "centered": centered(acc, task.baseline)}
            for task, acc in zip(tasks, accuracies)]
    return sum(r["centered"] for r in rows) / len(rows), rows


# -----------------------------------------------------------------------------
# The model of a run, built with the train_gpt.py it ran


def in_checkout(path):
    """A path from a run's config, where training took it from: relative ones from the checkout's folder (the one
    of train_gpt.py, where training runs), whatever the working directory now."""
    return os.path.join(os.path.dirname(os.path.abspath(train_gpt.__file__)), path)


END_OF_SOURCE = "\n" + "=" * 100 + "\n"  # the line train_gpt.py writes under its source at the top of log.txt
MAX_SOURCE_BYTES = 1 << 20             # a longer source part is refused: that is not a train_gpt.py log's top


def run_source(run_dir):
    """(the train_gpt.py source at the top of the run's log.txt, the `git:` line's dict under it, None) or (None,
    None, why there is none). A bounded read: a log with no end of source in its first MAX_SOURCE_BYTES is refused."""
    path = os.path.join(run_dir, "log.txt")
    if not os.path.isfile(path):
        return None, None, f"{run_dir} has no log.txt"
    with open(path, "rb") as f:
        head = f.read(MAX_SOURCE_BYTES + 64 * 1024)  # the source, its end line and the git line after it
    source, found, rest = head.partition(END_OF_SOURCE.encode())
    if not found and len(head) <= MAX_SOURCE_BYTES:  # the whole log, and no source in it
        return None, None, f"{path} holds no train_gpt.py source (no line of 100 '=')"
    if not found or len(source) > MAX_SOURCE_BYTES:
        raise EvalError(f"{path}: no end of the train_gpt.py source (a line of 100 '=') in its first "
                        f"{MAX_SOURCE_BYTES:,} bytes; this is not a log that train_gpt.py wrote")
    try:
        source = source.decode("utf-8")
        git_line = rest.split(b"\n", 1)[0].decode("utf-8")
        git = json.loads(git_line[len("git: "):]) if git_line.startswith("git: ") else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EvalError(f"{path}: the train_gpt.py source or the git line under it does not read ({e})") from None
    return source, git if isinstance(git, dict) else {}, None


def import_source(source, name="train_gpt_of_run"):
    """A run's train_gpt.py as a module of its own (it imports this checkout's other modules). Its file stays in a
    temporary folder until exit, for tracebacks and torch.compile."""
    folder = tempfile.mkdtemp(prefix="eval_core_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = os.path.join(folder, f"{name}.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclass() looks its class's module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def state_mismatch(model, weights):
    """What keeps `weights` from loading strictly into model, in a few words; None when nothing does."""
    mine = model.state_dict()
    shapes = [f"{k} {tuple(weights[k].shape)} saved, {tuple(v.shape)} here" for k, v in mine.items()
              if k in weights and weights[k].shape != v.shape]
    problems = [("missing key", [k for k in mine if k not in weights]),
                ("unexpected key", [k for k in weights if k not in mine]), ("shape mismatch", shapes)]
    return "; ".join(f"{what} {names[0]}" + (f" and {len(names) - 1} more" if len(names) > 1 else "")
                     for what, names in problems if names) or None


def model_from(module, checkpoint, tok):
    """(model with the checkpoint's weights, its Config), built with `module` (train_gpt or a run's own copy): only
    its Config dataclass and GPT(config, vocab_size, bos_id). ValueError says in a few words why it cannot be."""
    try:
        fields = dataclasses.fields(module.Config)
        saved = checkpoint["config"]
        config = module.Config(**{f.name: tuple(saved[f.name]) if isinstance(f.default, tuple) else saved[f.name]
                                  for f in fields if f.name in saved})  # tuples may come back as lists
        model = module.GPT(config, tok.vocab_size, tok.bos_id)
    except Exception as e:  # the run's code may raise anything: it is named, not shown as a traceback
        raise ValueError(in_words(e)) from None
    mismatch = state_mismatch(model, checkpoint["model"])
    if mismatch:
        raise ValueError(mismatch)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:  # what state_mismatch does not look at
        raise ValueError(in_words(e)) from None
    return model, config


def in_words(error):
    """An exception as one line: its type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def notice(text):
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(text, flush=True)


def model_of_run(run_dir, checkpoint, tok):
    """(model, Config) built with the train_gpt.py the run ran, the source at the top of its log.txt: this
    checkout's module when the text is the same, else the run's own source imported on its own. A model that does
    not load the weights strictly is an EvalError; a log without source falls back to this checkout's code, with a
    notice that the model code could not be checked."""
    source, git, why_none = run_source(run_dir)
    with open(train_gpt.__file__, encoding="utf-8") as f:
        ours = f.read()
    if source is not None and source != ours:
        return model_of_own_source(run_dir, source, ours, git, checkpoint, tok)
    path = os.path.join(run_dir, "checkpoint.pt")
    try:
        model, config = model_from(train_gpt, checkpoint, tok)
    except ValueError as e:
        if source is None:
            raise EvalError(f"{path} does not load into this checkout's model ({e}), and {why_none}: evaluate it in "
                            "a checkout of the code it was trained with") from None
        raise EvalError(f"{path} does not load into the model of train_gpt.py ({e}), though this checkout's "
                        f"train_gpt.py is the one {run_dir} logged: the checkpoint is not that run's") from None
    if source is None:
        notice(f"{why_none}: scoring with this checkout's train_gpt.py, whose model loads the checkpoint; the "
               "model code could not be checked against the run's")
    return model, config


def model_of_own_source(run_dir, source, ours, git, checkpoint, tok):
    """model_of_run for a run whose train_gpt.py differs from this checkout's; a refusal names its commit."""
    commit = git.get("commit")
    at = f"commit {commit[:12]}{' (dirty)' if git.get('dirty') else ''}" if commit else "an unknown commit"
    try:
        model, config = model_from(import_source(source), checkpoint, tok)
    except (Exception, SystemExit) as e:  # import errors included; SystemExit: a script that exits on import
        todo = [f"check out that commit (git checkout {commit[:12]})" if commit else
                "check out the code it was trained with (its log.txt begins with it)"]
        if commit and git.get("dirty"):
            todo.append(f"apply its changes (git apply {os.path.join(run_dir, 'git.diff')})")
        raise EvalError(f"{run_dir} was trained with train_gpt.py at {at} whose model does not load here "
                        f"({e if isinstance(e, ValueError) else in_words(e)}); {', '.join(todo)} and evaluate "
                        "again") from None
    pairs = zip(source.splitlines() + [None], ours.splitlines() + [None])  # None: past the end of one of them
    line = next((i for i, (a, b) in enumerate(pairs, 1) if a != b), None)
    notice(f"scoring with the run's own train_gpt.py (it differs from this checkout's: the run's is at {at}, "
           + (f"first difference at line {line})" if line else "same lines, other line ends)"))
    return model, config


def load_run(run_dir, device):
    """(model, its Config, tokenizer) from runs/<run_id>/checkpoint.pt (weights_only: nothing is unpickled), the
    model built with the code the run was trained with (model_of_run)."""
    path = os.path.join(run_dir, "checkpoint.pt")
    if not os.path.isfile(path):
        raise EvalError(f"{path}: no checkpoint; train with train_gpt.py (it saves one at the end unless "
                        "--save_final=false)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    tok = load_tokenizer(in_checkout(checkpoint["config"]["tokenizer"]))
    model, config = model_of_run(run_dir, checkpoint, tok)
    return model.to(device).eval(), config, tok


def scoring_forward(model, attention, compile, device, compile_backend="inductor"):
    """(the callable that scores prompt batches, its attention backend). sdpa: boolean masks over every key (a
    short window costs as much as the full context); flex: FlexAttention with the run's windows and document mask
    as block masks, so that only the blocks inside each window are computed; auto: flex on CUDA, else sdpa.
    compile auto compiles flex on CUDA (eager FlexAttention materializes the scores), with dynamic shapes: prompt
    batches of every width and row count share a few graphs instead of one compile each."""
    backend = ("flex" if device.type == "cuda" else "sdpa") if attention == "auto" else attention
    model.attention_backend = backend
    use_compile = compile == "true" or (compile == "auto" and backend == "flex" and device.type == "cuda")
    return (torch.compile(model, dynamic=True, backend=compile_backend) if use_compile else model), backend


@torch.no_grad()
def greedy_samples(model, tok, max_len, device, autocast, new_tokens=16):
    samples = []
    for prompt in SAMPLE_PROMPTS:
        ids = [tok.bos_id] + tok.encode(prompt)
        for _ in range(new_tokens):
            with autocast:
                logits = model(torch.tensor([ids[-max_len:]], device=device))
            ids.append(int(logits[0, -1].argmax()))
        samples.append(tok.decode(ids[1:]))
    return samples


# -----------------------------------------------------------------------------
# Main


def bpb_val_tokens(config, bpb_tokens):
    """The val tokens for bits per byte (None for 0): the first bpb_tokens (default: the run's own val_tokens), in
    whole rows of the run's seq_len, checked before any scoring so that a short val split fails in a second."""
    count = config.val_tokens if bpb_tokens is None else bpb_tokens
    if count == 0:
        return None
    rows = count // config.seq_len
    if rows == 0:
        raise EvalError(f"--bpb-tokens={count:,} is less than one row of the run's seq_len {config.seq_len}: pass "
                        f"--bpb-tokens={config.seq_len} or more, or 0 to skip bits per byte")
    pattern = in_checkout(config.val_files)
    held = sum(read_header(path) for path in find_files(pattern, "validation"))
    need = rows * config.seq_len + 1
    if need > held:
        most = (held - 1) // config.seq_len * config.seq_len
        raise EvalError(f"--bpb-tokens={count:,} needs {need:,} val tokens (whole rows of the run's seq_len "
                        f"{config.seq_len}, +1), and the val shards {pattern} hold {held:,}: "
                        + (f"pass --bpb-tokens={most} or less (0 skips bits per byte)" if most > 0 else
                           "pass --bpb-tokens=0 to skip bits per byte"))
    return load_val_tokens(pattern, count, config.seq_len)


def evaluate_run(args, rank=0, world=1, device=torch.device("cpu")):
    t0 = time.perf_counter()
    model, config, tok = load_run(args.run_dir, device)
    val = bpb_val_tokens(config, args.bpb_tokens)
    forward, backend = scoring_forward(model, args.attention, args.compile, device)
    if rank == 0:
        print(f"attention {backend}, compiled {forward is not model}")
    autocast = autocast_for(device)
    bundle, zip_sha256 = (args.bundle, None) if args.bundle else fetch_bundle(args.bundle_dir, args.bundle_url)
    labels = list(dict.fromkeys(label for label in args.tasks.split(",") if label)) or None
    tasks = load_tasks(bundle, args.max_per_task, labels)
    max_len = config.seq_len
    sequences = build_sequences(tasks, tok, max_len)
    batch_tokens = args.batch_tokens or default_batch_tokens(device)
    results = score_sequences(forward, sequences, tok.bos_id, batch_tokens, rank, world, device, autocast, max_len)
    chosen = predictions(tasks, sequences, results)
    core, rows = core_score(tasks, [accuracy(task, c) for task, c in zip(tasks, chosen)])
    core_time = time.perf_counter() - t0

    val_loss = val_bpb = None
    if val is not None:
        info = load_tokenizer_info(in_checkout(config.tokenizer))
        bpb_config = dataclasses.replace(config, val_tokens=len(val) - 1)
        val_loss, val_bpb = evaluate(forward, val, info["token_bytes"], bpb_config, rank, world, device,
                                               autocast)
    model.attention_backend = "sdpa"  # one prompt at a time, every length: no compile, no block masks
    samples = greedy_samples(model, tok, max_len, device, autocast) if rank == 0 and args.samples else []
    report = {
        "core": core, "tasks": rows, "bundle_zip_sha256": zip_sha256, "max_per_task": args.max_per_task,
        "truncation": f"prompts longer than the model's context ({max_len} tokens) are cut from the left, keeping "
                      f"the scored span: {sum(s.truncated for s in sequences)} of {len(sequences)} prompts",
        "val_loss": val_loss, "val_bpb": val_bpb, "bpb_tokens": 0 if val is None else len(val) - 1, "samples": samples,
        "core_time_s": core_time, "eval_time_s": time.perf_counter() - t0, "world_size": world,
    }
    if rank == 0:
        write_report(args.run_dir, report)
    return report


def write_report(run_dir, report):
    with open(os.path.join(run_dir, "core.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(report["tasks"][0]))
        writer.writeheader()
        writer.writerows(report["tasks"])
    results_path = os.path.join(run_dir, "results.json")
    results = {}
    if os.path.exists(results_path):
        with open(results_path) as f:
            results = json.load(f)
    results["core"] = report
    with open(os.path.join(run_dir, "log.txt"), "a") as f:  # the log stays the record of the run
        f.write(f"core:{report['core']:.6f} tasks:{json.dumps({r['task']: r['accuracy'] for r in report['tasks']})} "
                f"max_per_task:{report['max_per_task']} bundle_zip_sha256:{report['bundle_zip_sha256']}\n")
    with open(results_path + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(results_path + ".tmp", results_path)
    width = max(len(r["task"]) for r in report["tasks"])
    for r in report["tasks"]:
        print(f"{r['task']:<{width}}  accuracy {r['accuracy']:.4f}  centered {r['centered']:+.4f}  ({r['examples']} rows)")
    print(f"CORE {report['core']:.4f}" + (f"   val bpb {report['val_bpb']:.4f}" if report["val_bpb"] else "") +
          f"   ({report['eval_time_s']:.1f} s; {report['truncation']})")
    for sample in report["samples"]:
        print(f"sample: {sample!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="eval_core.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="a run folder holding checkpoint.pt (runs/<run_id>)")
    parser.add_argument("--max-per-task", type=int, default=None, help="rows per task (default: all)")
    parser.add_argument("--tasks", default="", help="comma-separated task labels (default: all 22)")
    parser.add_argument("--bundle-dir", default=DEFAULT_BUNDLE_DIR, help="where the bundle is downloaded to")
    parser.add_argument("--bundle-url", default=BUNDLE_URL)
    parser.add_argument("--bundle", default="", help="an unpacked eval_bundle folder to use as it is (no checks)")
    parser.add_argument("--batch-tokens", type=int, default=0, help="padded tokens per forward pass (default: 16,384 "
                        "on a GPU; 1,024 on a CPU, where big batches run slower than small ones)")
    parser.add_argument("--attention", choices=["sdpa", "flex", "auto"], default="sdpa", help="sdpa (default): "
                        "masks over every key; flex: FlexAttention block masks, only the keys inside each layer's "
                        "window; auto: flex on CUDA, sdpa elsewhere")
    parser.add_argument("--compile", choices=["auto", "true", "false"], default="auto", help="torch.compile the model "
                        "(dynamic shapes); auto: with flex on CUDA")
    parser.add_argument("--bpb-tokens", type=int, default=None, help="val tokens for bits per byte (default: the "
                        "run's own val_tokens, those its val loss was measured on; 0: skip)")
    parser.add_argument("--samples", action=argparse.BooleanOptionalAction, default=True, help="greedy samples")
    args = parser.parse_args(argv)
    if args.max_per_task is not None and args.max_per_task < 1:
        parser.error("--max-per-task must be at least 1")
    if args.bpb_tokens is not None and args.bpb_tokens < 0:
        parser.error("--bpb-tokens must be 0 (skip bits per byte) or more")
    rank, world, device = init_distributed(train_gpt.Config())
    try:
        evaluate_run(args, rank, world, device)
    except (EvalError, ConfigError, TokenizerError) as e:
        sys.exit(f"error: {e}")
    except torch.OutOfMemoryError:
        batch_tokens = args.batch_tokens or default_batch_tokens(device)
        sys.exit(f"error: out of GPU memory at --batch-tokens={batch_tokens}: lower it (e.g. "
                 f"--batch-tokens={max(batch_tokens // 2, 1)}): it sets only how many sequences share a forward pass")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
