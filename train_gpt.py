"""train_gpt.py: the single training script. Read it top to bottom: config, data, model, optimizer, schedule,
evaluation, logging, checkpoints, training loop, main.

    python train_gpt.py --preset=tiny                                # CPU smoke test, under a minute
    python train_gpt.py --preset=gpt2-core --depth=20                # one GPU
    torchrun --standalone --nproc_per_node=8 train_gpt.py --preset=gpt2-small-fineweb
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 train_gpt.py --preset=...

Every hyperparameter lives in `Config`; `--key=value` overrides it (`--key value` works too), `--preset=NAME`
applies a named set of overrides first. The global batch and the math are the same on any number of
processes: gradient accumulation fills the gap. A run writes runs/<run_id>/: log.txt (this file's source, the
commit, the command, the config, the environment, one line per step), results.json and checkpoint.pt.
"""

import atexit
import dataclasses
import glob
import hashlib
import json
import math
import os
import queue
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from data.shards import ShardError, read_header, read_shard, read_tokenizer_sha256
from data.tokenizer import TokenizerError, load_tokenizer, sha256_file
from speedups import Comm, GradientBucket, chunked_softcapped_cross_entropy, element_layout, fp8_linear, matrix_layout

RESULTS_SCHEMA = 1

# -----------------------------------------------------------------------------
# Config


@dataclass
class Config:
    # data: token shards from `python -m data.tokenize` (or llm.c-format shards), and their tokenizer
    train_files: str = "data/tokens/climbmix_32768/train_*.bin"
    val_files: str = "data/tokens/climbmix_32768/val_*.bin"
    tokenizer: str = "data/tokenizers/climbmix_32768"  # BOS id, vocab size, token byte lengths (for bpb)
    # model
    depth: int = 12               # layers; the width follows from it unless model_dim is set
    model_dim: int = 0            # 0: 64 x depth, rounded up to a multiple of head_dim
    head_dim: int = 128
    seq_len: int = 2048
    window_pattern: str = "SSSL"  # per layer, repeating: S = short sliding window, L = full; the last layer is L
    short_window: int = 0         # 0: seq_len // 4
    rope_base: float = 100_000.0
    logit_cap: float = 15.0       # logits = cap * tanh(logits / cap)
    loss: str = "plain"           # plain | chunked: head + soft-cap + cross-entropy chunk by chunk of rows, never
                                  # all the fp32 logits at once (speedups.py; the head matmul then runs in bf16,
                                  # also with --fp8)
    loss_chunk: int = 4096        # rows per chunk with --loss=chunked
    value_embeds: bool = True     # token embeddings mixed into the attention values of every other layer
    embed_dtype: str = "fp32"     # fp32 | bf16: the token and value embedding tables (bf16: half the memory and
                                  # gradient traffic; AdamW then keeps its state in bf16 too)
    doc_mask: bool = False        # attend only within the document (documents start at BOS)
    attention: str = "auto"       # sdpa | flex (FlexAttention); auto: flex when compiling on CUDA, else sdpa
    # batch: total_batch_tokens = world_size x device_batch x seq_len x accumulation steps
    device_batch: int = 16        # rows per forward pass on one device
    total_batch_tokens: int = 524_288
    # horizon: the first one that is set decides the number of steps
    steps: int = 0
    tokens_per_param: float = 0.0  # tokens = ratio x (hidden matrices + LM head) parameters
    flops_budget: float = 0.0      # model FLOPs; the run stops before the budget would be exceeded
    target_val_loss: float = 0.0   # also stop at the first validation at or below this loss
    # schedule: linear warm-up, flat, linear warm-down to final_lr_frac
    warmup_steps: int = 40
    warmdown_frac: float = 0.65
    final_lr_frac: float = 0.05
    # optimizer: Muon for the hidden matrices, AdamW for embeddings, head and scalars
    matrix_lr: float = 0.02
    embed_lr: float = 0.3         # AdamW lrs are scaled by (model_dim / 768) ** -0.5
    head_lr: float = 0.008
    scalar_lr: float = 0.5
    adam_betas: tuple = (0.8, 0.95)
    adam_eps: float = 1e-10
    weight_decay: float = 0.0     # Muon's, decoupled and scaled by the lr
    muon_momentum: float = 0.95
    muon_momentum_start: float = 0.85
    muon_momentum_warmup: int = 300
    ns_steps: int = 5             # Newton-Schulz iterations
    muon_split_qkv: bool = False  # orthogonalize q, k and v as three matrices (the references) instead of one qkv
    fused_adam: str = "auto"      # torch's fused AdamW kernel; auto: on CUDA (else the foreach implementation)
    # communication: gradients reduce-scattered in flat buckets, each process updates its shard, results all-gathered
    bucket_mb: int = 256          # hidden-matrix gradients per bucket (a bucket starts when its last gradient is ready)
    reduce_dtype: str = "fp32"    # fp32 | bf16: the dtype gradients travel (and are summed) in
    # evaluation
    val_tokens: int = 10_485_760  # the first N tokens of the val shards (modded-nanogpt's 10,485,760)
    val_every: int = 250          # steps between validations (0: only at the end)
    val_batch: int = 0            # rows per val forward pass (0: device_batch)
    # run
    seed: int = 0
    run_id: str = ""              # default: a timestamp and the preset
    out_dir: str = "runs"
    log_every: int = 1            # steps between loss reads (host syncs) and log lines
    save_every: int = 0           # steps between checkpoints (0: none during the run)
    save_final: bool = True       # a checkpoint at the end (to evaluate, or to continue)
    resume: str = ""              # a checkpoint.pt to continue from, exactly
    stop_after: int = 0           # leave after this many steps of this process, with a checkpoint (time-sliced jobs)
    warmup_timing_steps: int = 10  # untimed real steps (compile, warm-up), then everything is reset
    compile: str = "auto"         # auto: on CUDA only; blocks: each block on its own (its backward overlaps comms)
    fp8: bool = False             # FP8 matmuls in the large Linears while training (Hopper/Ada; else a notice)
    device: str = "auto"
    peak_flops: float = 0.0       # dense bf16 FLOP/s per device for MFU; 0: looked up from the GPU's name
    wandb: str = ""               # "online" or "offline" to log to wandb
    preset: str = ""


PRESETS = {
    # CPU smoke test on the embedded sample (bash speedrun.sh builds it); trains in well under a minute.
    "tiny": dict(train_files="data/tokens/shakespeare_4096/train_*.bin",
                 val_files="data/tokens/shakespeare_4096/val_*.bin", tokenizer="data/tokenizers/shakespeare_4096",
                 depth=2, model_dim=64, head_dim=16, seq_len=128, short_window=32, device_batch=8,
                 total_batch_tokens=2048, steps=150, warmup_steps=10, warmup_timing_steps=2, val_tokens=65_536,
                 val_every=50, matrix_lr=0.05, embed_lr=0.1, head_lr=0.02),
    # modded-nanogpt's track: GPT-2 tokens of FineWeb, val loss 3.28 on the first 10,485,760 val tokens.
    "gpt2-small-fineweb": dict(train_files="data/raw/fineweb10B-gpt2/fineweb_train_*.bin",
                               val_files="data/raw/fineweb10B-gpt2/fineweb_val_*.bin",
                               tokenizer="data/tokenizers/gpt2", depth=12, model_dim=768, head_dim=128,
                               seq_len=2048, total_batch_tokens=524_288, steps=5100, target_val_loss=3.28),
    # nanochat's "time to GPT-2": own 32k tokenizer on ClimbMix, depth ~24, horizon by tokens:params, CORE.
    "gpt2-core": dict(depth=24, total_batch_tokens=1_048_576, tokens_per_param=8.0, device_batch=16),
}


def parse_args(argv):
    """Config from --key=value arguments, after the preset's overrides; unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    if "--help" in argv or "-h" in argv:
        options = "\n".join(f"  --{name}={field.default!r}" for name, field in fields.items())
        print(f"{__doc__}\noptions (defaults; comments beside Config in train_gpt.py):\n{options}\n"
              f"presets: {', '.join(PRESETS)}")
        sys.exit(0)
    pairs = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; use --key=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if key.startswith("no-") or key.startswith("no_"):
                key, value = key[3:], "false"
            elif args and not args[0].startswith("--"):
                value = args.pop(0)
            else:
                value = "true"
        key = key.replace("-", "_")
        if key not in fields:
            raise ConfigError(f"unknown option --{key}; options are the fields of Config in train_gpt.py")
        pairs.append((key, value))
    preset = dict(pairs).get("preset", "")
    if preset and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    config = Config(**PRESETS.get(preset, {}))
    for key, value in pairs:
        setattr(config, key, convert(value, fields[key].type, key))
    return config


def convert(value, kind, key):
    kind = kind if isinstance(kind, str) else kind.__name__
    try:
        if kind == "bool":
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return value.lower() in ("1", "true", "yes")
        if kind == "tuple":
            return tuple(float(v) for v in value.split(","))
        if kind == "int":
            return int(float(value)) if "e" in value.lower() else int(value)
        return {"float": float, "str": str}[kind](value)
    except (ValueError, OverflowError):
        what = "list of comma-separated numbers" if kind == "tuple" else kind
        raise ConfigError(f"--{key}={value}: not a valid {what}") from None


class ConfigError(ValueError):
    """A bad option or combination; the message says what to do."""


def derived(config):
    """Model shape numbers that follow from the config."""
    dim = config.model_dim or math.ceil(64 * config.depth / config.head_dim) * config.head_dim
    short = config.short_window or config.seq_len // 4
    windows = [config.seq_len if config.window_pattern[i % len(config.window_pattern)] == "L" else short
               for i in range(config.depth)]
    windows[-1] = config.seq_len
    return dim, dim // config.head_dim, windows


# -----------------------------------------------------------------------------
# Data


class DataLoader:
    """Rows of seq_len + 1 tokens cut from the training shards so that every token is used once per epoch.

    Row k of a shard is its tokens k x seq_len ... (k + 1) x seq_len: consecutive slices that share one token (a
    row's last target is the next row's first input), so every token of a shard but its first is a target once
    per epoch and only the last (tokens - 1) mod seq_len are never used (`fraction_used`, logged). A row begins
    anywhere in a document; --doc_mask keeps attention inside documents (each starts at BOS).
    The rows form one global sequence, the same for every process: the shards in a seeded order that changes
    every epoch, each shard's rows in a seeded order of their own (so that a step mixes many documents). A step
    takes the next world x accumulation x device_batch rows; this process takes its own slice, so ranks never
    overlap and the step's rows do not depend on the world size. The state (epoch, shard, row) is where the next
    step begins; a background thread prepares the next step's batch in pinned memory. A shard's token ids are
    checked against the vocab when it is first read (one pass), so a bad id stops the run with a message instead
    of failing in the embedding.
    """

    def __init__(self, pattern, seq_len, rows_per_step, rank, world, seed, device, vocab_size):
        self.files = find_files(pattern, "training")
        self.seq_len, self.seed, self.device, self.vocab_size = seq_len, seed, device, vocab_size
        self.rows_per_step, self.rank, self.world = rows_per_step, rank, world
        self.shard_tokens = [read_header(path) for path in self.files]
        self.shard_rows = [max(n - 1, 0) // seq_len for n in self.shard_tokens]
        if not sum(self.shard_rows):
            raise ConfigError(f"{pattern}: no shard holds a row of --seq_len + 1 = {seq_len + 1} tokens; lower "
                              "--seq_len or tokenize more data")
        self.state = {"epoch": 0, "shard": 0, "row": 0}
        self._tokens = (None, None)  # (file index, tokens) of the shard being read
        self._rows = (None, None)    # ((epoch, file index), row order) of the shard being read
        self._checked = set()        # file indices whose token ids are known to fit the vocab
        self._queue = self._stop = self._thread = None
        self._shard(int(self.shard_order(0)[0]))  # a bad first shard fails now, before any run folder is made

    @property
    def fraction_used(self):
        """The fraction of the training tokens that are a target once per epoch."""
        return sum(self.shard_rows) * self.seq_len / sum(self.shard_tokens)

    def epochs(self, state=None):
        """Passes over the data done from the start to state (default: the current state), as a fraction."""
        state = state or self.state
        rows_before = sum(self.shard_rows[i] for i in self.shard_order(state["epoch"])[:state["shard"]])
        return state["epoch"] + (rows_before + state["row"]) / sum(self.shard_rows)

    def describe(self, num_steps):
        return (f"loader: {sum(self.shard_tokens):,} training tokens in {len(self.files)} shards; rows are shuffled "
                f"consecutive slices of {self.seq_len + 1} tokens: {100 * self.fraction_used:.2f}% of the tokens are "
                f"targets once per epoch; {num_steps} steps of {self.rows_per_step} rows are "
                f"{num_steps * self.rows_per_step / sum(self.shard_rows):.3f} epochs")

    def shard_order(self, epoch):
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.files))

    def row_order(self, epoch, index):
        if self._rows[0] != (epoch, index):
            self._rows = ((epoch, index), np.random.default_rng([self.seed, epoch, index]).permutation(
                self.shard_rows[index]))
        return self._rows[1]

    def _shard(self, index):
        if self._tokens[0] != index:
            tokens = read_shard(self.files[index])
            if index not in self._checked:
                check_token_ids(tokens, self.vocab_size, self.files[index])
                self._checked.add(index)
            self._tokens = (index, tokens)
        return self._tokens[1]

    def _next_rows(self, state, count):
        """The next count rows from state (which is advanced): a list of uint16 arrays of seq_len + 1 tokens."""
        rows, L = [], self.seq_len
        while len(rows) < count:
            index = int(self.shard_order(state["epoch"])[state["shard"]])
            take = self.row_order(state["epoch"], index)[state["row"]:state["row"] + count - len(rows)]
            tokens = self._shard(index) if len(take) else None
            rows += [tokens[k * L:k * L + L + 1] for k in take.tolist()]
            state["row"] += len(take)
            if state["row"] == self.shard_rows[index]:  # this shard is used up: on to the next (and the next epoch)
                state["shard"], state["row"] = state["shard"] + 1, 0
                if state["shard"] == len(self.files):
                    state["epoch"], state["shard"] = state["epoch"] + 1, 0
        return rows

    def _make_batch(self, state):
        rows = self._next_rows(state, self.rows_per_step)
        mine = rows[self.rank::self.world]  # an equal share; which rows go where does not change the step's mean
        batch = torch.from_numpy(np.stack(mine).astype(np.int64))
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        return batch, dict(state)

    def _producer(self, state, batches, stop):
        """Background thread: prepares batches ahead; an error is handed to the consumer, not lost."""
        while not stop.is_set():
            try:
                item = self._make_batch(state)
            except Exception as error:
                item = error
            while not stop.is_set():
                try:
                    batches.put(item, timeout=0.1)
                    break
                except queue.Full:
                    pass
            if isinstance(item, Exception):
                return

    def next_batch(self):
        """(inputs, targets) for this process: int64 [rows, seq_len] tensors on the device."""
        if self._queue is None:  # start the background thread from the current state
            self._queue, self._stop = queue.Queue(maxsize=2), threading.Event()
            self._thread = threading.Thread(target=self._producer, args=(dict(self.state), self._queue, self._stop),
                                            daemon=True)
            self._thread.start()
            atexit.register(self.close)  # on every way out, before the interpreter tears threads down
        item = self._queue.get()
        if isinstance(item, Exception):
            raise item
        batch, self.state = item
        batch = batch.to(self.device, non_blocking=True)
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self):
        """The position, and the shards it is a position in (by name and size)."""
        return {**self.state, "shards": [[os.path.basename(f), n] for f, n in zip(self.files, self.shard_tokens)]}

    def load_state_dict(self, state):
        """Restores a position; batches already prepared from the old one are dropped. A position in other shards
        (one added, removed or re-tokenized: the shard order and rows would differ) is refused."""
        state = dict(state)
        saved, now = state.pop("shards", None), self.state_dict()["shards"]
        if saved is not None and [tuple(s) for s in saved] != [tuple(s) for s in now]:
            changed = next((f"{a[0]} ({a[1]:,} tokens) then, {b[0]} ({b[1]:,} tokens) now" for a, b in zip(saved, now)
                            if tuple(a) != tuple(b)), f"{len(saved)} shards then, {len(now)} now")
            raise ConfigError(f"the training shards changed since the checkpoint ({changed}); resume with the shards "
                              "it was made with, or start a new run")
        self.close()
        self.state = state

    def close(self):
        """Stops the background thread (a thread still inside numpy or torch at exit can abort the process)."""
        if self._queue is not None:
            self._stop.set()
            self._thread.join()
            self._queue = None


def find_files(pattern, what):
    files = sorted(glob.glob(pattern))
    if not files:
        raise ConfigError(f"no {what} shards match {pattern!r}; make them with `bash speedrun.sh` (or "
                          "python -m data.download / data.tokenize), or point --train_files/--val_files at them")
    for path in files:
        read_header(path)  # a corrupt shard fails now, naming the file, not hours into the run
    return files


def load_val_tokens(pattern, count, seq_len, vocab_size=None):
    """The first count tokens of the val shards (whole rows of seq_len, plus one token for the last target); with
    vocab_size, every one of them is checked to be a token id of the vocab."""
    files = find_files(pattern, "validation")
    rows = count // seq_len
    if rows == 0:
        raise ConfigError(f"--val_tokens={count} is less than one row of --seq_len={seq_len}")
    pieces, have = [], 0
    for path in files:
        tokens = read_shard(path)
        pieces.append(np.asarray(tokens[:rows * seq_len + 1 - have]))
        if vocab_size:
            check_token_ids(pieces[-1], vocab_size, path)
        have += len(pieces[-1])
        if have == rows * seq_len + 1:
            return torch.from_numpy(np.concatenate(pieces).astype(np.int64))
    raise ConfigError(f"the val shards hold {have:,} tokens, fewer than --val_tokens={count:,} (+1); "
                      "lower --val_tokens or tokenize a larger val file")


def check_token_ids(tokens, vocab_size, path):
    """Every id must index the embedding; one pass over the tokens (a max), cheap next to training on them."""
    top = int(tokens.max()) if len(tokens) else -1
    if top >= vocab_size:
        raise ShardError(f"{path}: token id {top} is outside the tokenizer's vocab of {vocab_size}; the shard is "
                         "corrupt or comes from another tokenizer: tokenize again (python -m data.tokenize re-makes "
                         "corrupt shards), or point --tokenizer at the one that made it")


def load_tokenizer_info(folder):
    """What training needs from a tokenizer folder (data/tokenizer.py): BOS id, vocab size, byte lengths, identity."""
    try:
        tok = load_tokenizer(folder)
    except TokenizerError as e:
        raise ConfigError(str(e)) from None
    return {"bos_id": tok.bos_id, "vocab_size": tok.vocab_size, "token_bytes": torch.from_numpy(tok.token_bytes()),
            "sha256": sha256_file(os.path.join(folder, "tokenizer.json"))}


def recorded_tokenizers(files):
    """For each shard, the sha256 of the tokenizer that made it: from its header, else from the tokenize.json
    beside it when that lists the shard, else None (llm.c / modded-nanogpt shards record none)."""
    manifests, recorded = {}, []
    for path in files:
        folder = os.path.dirname(path)
        if folder not in manifests:
            manifest_path = os.path.join(folder, "tokenize.json")
            try:
                with open(manifest_path) as f:
                    manifest = json.load(f)
                manifests[folder] = {shard["name"]: manifest["config"]["tokenizer_sha256"]
                                     for split in manifest["splits"].values() for shard in split["shards"]}
            except FileNotFoundError:
                manifests[folder] = {}
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"{manifest_path}: not a readable tokenize.json ({e}); run python -m data.tokenize "
                                  "again on this folder") from None
        recorded.append(read_tokenizer_sha256(path) or manifests[folder].get(os.path.basename(path)))
    return recorded


def check_data_matches_tokenizer(config, tokenizer):
    """Train and val shards alike must come from this tokenizer, by the identity they record (header or
    tokenize.json); returns notices for the log about shards that record none (their token ids are still checked
    against the vocab as they are read)."""
    notices = []
    for what, pattern in (("training", config.train_files), ("validation", config.val_files)):
        files = find_files(pattern, what)
        recorded = recorded_tokenizers(files)
        for path, sha256 in zip(files, recorded):
            if sha256 is not None and sha256 != tokenizer["sha256"]:
                raise ConfigError(f"{path} was tokenized with another tokenizer (sha256 {sha256[:12]}...) than "
                                  f"--tokenizer={config.tokenizer} (sha256 {tokenizer['sha256'][:12]}...); point "
                                  "--tokenizer at the one that made the shards, or tokenize again with this one")
        unknown = sum(sha256 is None for sha256 in recorded)
        if unknown:
            notices.append(f"notice: {unknown} of {len(files)} {what} shards ({pattern}) record no tokenizer "
                           "(llm.c-format shards); they are assumed to match "
                           f"{config.tokenizer}, and only their token ids are checked against its vocab")
    return notices


# -----------------------------------------------------------------------------
# Model


def rms_norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len, head_dim, base):
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]  # [1, T, 1, head_dim / 2]


def apply_rotary(x, cos, sin):
    x1, x2 = x.float().chunk(2, dim=-1)
    T = x.size(1)
    cos, sin = cos[:, :T], sin[:, :T]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


def flex_mask(window, docs):
    """FlexAttention's mask function for one window: causal, within the last `window` positions and, when docs
    (document number per position) is given, within the same document. The window and docs are closed over, not
    default arguments: Dynamo (torch 2.13) cannot trace create_block_mask on a function with defaults."""
    def allowed(b, h, q, k):
        near = (q >= k) & (q - k < window)
        return near & (docs[b, q] == docs[b, k]) if docs is not None else near
    return allowed


def attention_masks(idx, windows, bos_id, backend):
    """For each distinct window, what `attention` needs: causal, within the last `window` positions and, when
    bos_id is given, within the same document (documents start at BOS). For SDPA a boolean mask (None when plain
    causal suffices), for FlexAttention a block mask."""
    B, T = idx.shape
    docs = (idx == bos_id).cumsum(1) if bos_id is not None else None
    masks = {}
    for window in sorted(set(windows)):
        if backend == "flex":
            from torch.nn.attention.flex_attention import create_block_mask
            allowed = flex_mask(window, docs)
            masks[window] = create_block_mask(allowed, B if docs is not None else None, None, T, T, device=idx.device)
        elif docs is None and window >= T:
            masks[window] = None
        else:
            i = torch.arange(T, device=idx.device)
            near = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
            masks[window] = (near & (docs[:, :, None] == docs[:, None, :]))[:, None] if docs is not None else near
    return masks


def attention(q, k, v, mask, backend):
    """Attention of q, k, v [B, T, heads, head_dim] under a mask from attention_masks. One function, two paths:
    PyTorch's scaled_dot_product_attention (everywhere) and FlexAttention (fused kernels under torch.compile)."""
    if torch.is_autocast_enabled(q.device.type):  # rms_norm and rotary hand fp32 over; fp32 attention is slow
        dtype = torch.get_autocast_dtype(q.device.type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if backend == "flex":
        from torch.nn.attention.flex_attention import flex_attention
        y = flex_attention(q, k, v, block_mask=mask)
    elif mask is None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return y.transpose(1, 2)


class Linear(nn.Linear):
    """nn.Linear without bias whose training-time matmul runs in FP8 when use_fp8 is set (evaluation: bf16).
    What the model knows about the Linear fixes FP8 scales (speedups.py): normed_input, its input is rms-normed;
    mean_loss_head, its output feeds the mean soft-capped cross-entropy."""

    def __init__(self, in_features, out_features, normed_input=False, mean_loss_head=False):
        super().__init__(in_features, out_features, bias=False)
        self.use_fp8, self.normed_input, self.mean_loss_head = False, normed_input, mean_loss_head

    def forward(self, x):
        if self.use_fp8 and self.training:
            return fp8_linear(x, self.weight, self.normed_input, self.mean_loss_head)
        return F.linear(x, self.weight.type_as(x))


def enable_fp8(model, device):
    """FP8 for every large Linear (attention, MLP, head) where the hardware has FP8 matmuls; a notice otherwise."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        print(f"notice: --fp8 needs FP8 tensor cores (Hopper or Ada); {torch.cuda.get_device_name(device)} trains "
              "in bf16")
        return False
    for module in model.modules():
        if isinstance(module, Linear):
            module.use_fp8 = True
    return True


class CausalSelfAttention(nn.Module):
    def __init__(self, dim, heads, head_dim, window, value_embed):
        super().__init__()
        self.heads, self.head_dim, self.window = heads, head_dim, window
        self.qkv = Linear(dim, 3 * heads * head_dim, normed_input=True)
        self.proj = Linear(heads * head_dim, dim)
        # how much of the value embedding goes into the values: [keep v, add value embedding]
        self.value_mix = nn.Parameter(torch.tensor([0.5, 0.5])) if value_embed else None

    def forward(self, x, cos, sin, value_embed, masks, backend):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).unbind(2)
        q, k = apply_rotary(rms_norm(q), cos, sin) * 1.2, apply_rotary(rms_norm(k), cos, sin) * 1.2  # QK-norm
        if value_embed is not None:
            v = self.value_mix[0] * v + self.value_mix[1] * value_embed.view_as(v)
        y = attention(q, k, v, masks[self.window], backend)
        return self.proj(y.reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = Linear(dim, 4 * dim, normed_input=True)
        self.proj = Linear(4 * dim, dim)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())  # ReLU squared


class Block(nn.Module):
    def __init__(self, dim, heads, head_dim, window, value_embed):
        super().__init__()
        self.attn = CausalSelfAttention(dim, heads, head_dim, window, value_embed)
        self.mlp = MLP(dim)

    def forward(self, x, cos, sin, value_embed, masks, backend):
        x = x + self.attn(rms_norm(x), cos, sin, value_embed, masks, backend)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, config, vocab_size, bos_id=None):
        super().__init__()
        dim, heads, windows = derived(config)
        self.vocab_size, self.logit_cap, self.windows = vocab_size, config.logit_cap, windows
        self.loss, self.loss_chunk = config.loss, config.loss_chunk
        if config.doc_mask and bos_id is None:
            raise ConfigError("--doc_mask needs the BOS id (the tokenizer's)")
        self.doc_bos = bos_id if config.doc_mask else None
        self.attention_backend = "sdpa"  # or "flex": set_attention_backend
        padded_vocab = math.ceil(vocab_size / 128) * 128  # tensor-core friendly shapes
        self.embed = nn.Embedding(padded_vocab, dim)
        # layers with value embeddings: every other one, counting back from the last
        self.value_layers = [i for i in range(config.depth) if config.value_embeds and (config.depth - 1 - i) % 2 == 0]
        self.value_embeds = nn.ModuleList(nn.Embedding(padded_vocab, heads * config.head_dim) for _ in self.value_layers)
        self.blocks = nn.ModuleList(Block(dim, heads, config.head_dim, windows[i], i in self.value_layers)
                                    for i in range(config.depth))
        self.head = Linear(dim, padded_vocab, normed_input=True, mean_loss_head=True)  # untied from the embedding
        cos, sin = rotary_tables(config.seq_len, config.head_dim, config.rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()
        if config.embed_dtype == "bf16":  # initialized in fp32 first, so that both dtypes start from the same draw
            for emb in [self.embed, *self.value_embeds]:
                emb.to(torch.bfloat16)

    @torch.no_grad()
    def reset_parameters(self):
        dim = self.embed.embedding_dim
        bound = 3 ** 0.5 * dim ** -0.5  # uniform with std dim ** -0.5
        for emb in [self.embed, *self.value_embeds]:
            nn.init.normal_(emb.weight, std=1.0)
        for block in self.blocks:
            nn.init.uniform_(block.attn.qkv.weight, -bound, bound)
            nn.init.uniform_(block.mlp.fc.weight, -bound, bound)
            nn.init.zeros_(block.attn.proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.proj.weight)
            if block.attn.value_mix is not None:
                block.attn.value_mix.fill_(0.5)
        nn.init.normal_(self.head.weight, std=0.001)

    def forward(self, idx, targets=None, reduction="mean"):
        """Logits [B, T, vocab] without targets; else the cross-entropy (mean, or per token with reduction='none')."""
        x = rms_norm(self.embed(idx).float())  # the residual stream stays fp32 whatever the table's dtype
        value_embeds = dict(zip(self.value_layers, self.value_embeds))
        masks = self.masks(idx)
        for i, block in enumerate(self.blocks):
            # looked up here, not before the loop: autograd runs, among the ready nodes, the one made last in the
            # forward first, so a table's backward (and its gradient's bucket) follows its block's, not the end
            value_embed = value_embeds[i](idx) if i in value_embeds else None
            x = block(x, self.cos, self.sin, value_embed, masks, self.attention_backend)
        return self.head_and_loss(x, targets, reduction)

    # GPT.forward's parts that Trainer compiles on their own with --compile=blocks (beside each block)
    def masks(self, idx):
        return attention_masks(idx, self.windows, self.doc_bos, self.attention_backend)

    def head_and_loss(self, x, targets, reduction):
        x = rms_norm(x)
        if targets is not None and self.loss == "chunked":
            losses = chunked_softcapped_cross_entropy(x.flatten(0, -2), self.head.weight, targets.reshape(-1),
                                                      self.logit_cap, self.vocab_size, self.loss_chunk)
            return losses.mean() if reduction == "mean" else losses.view_as(targets)
        logits = self.head(x)[..., :self.vocab_size].float()
        logits = self.logit_cap * torch.tanh(logits / self.logit_cap)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
        return loss if reduction == "mean" else loss.view_as(targets)


def hidden_matrices(model):
    """The 2-D weights inside the blocks: Muon's parameters."""
    return [p for p in model.blocks.parameters() if p.ndim == 2]


def scaling_params(model):
    """Hidden matrices plus LM head: the parameter count that tokens_per_param multiplies."""
    return sum(p.numel() for p in hidden_matrices(model)) + model.head.weight.numel()


def flops_per_token(config, vocab_size):
    """Training FLOPs per token: 6 x matmul parameters + 12 x heads x head_dim x attended length per layer.
    Embedding lookups (token and value embeddings) are not matmuls and are not counted; the head is counted at
    the padded vocab it computes."""
    dim, heads, windows = derived(config)
    padded_vocab = math.ceil(vocab_size / 128) * 128
    attn = dim * 3 * heads * config.head_dim + heads * config.head_dim * dim
    mlp = 2 * dim * 4 * dim
    matmul_params = config.depth * (attn + mlp) + dim * padded_vocab
    attention_flops = sum(12 * heads * config.head_dim * min(w, config.seq_len) for w in windows)
    return 6 * matmul_params + attention_flops


# -----------------------------------------------------------------------------
# Optimizer


def newton_schulz(X, steps):
    """Newton-Schulz iteration of a wide bf16 stack [count, rows <= cols] towards the nearest semi-orthogonal
    matrices. The function compiled for Muon: it sees one layout only, so one graph serves every stack."""
    a, b, c = 3.4445, -4.7750, 2.0315  # quintic coefficients that push singular values quickly to about 1
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X


def compile_newton_schulz(backend="inductor"):
    """newton_schulz compiled once for every stack Muon meets: shapes dynamic, and sizes that happen to be equal (a
    square stack) not taken to be equal, which would compile another graph for the next stack that is not."""
    import torch.fx.experimental._config as shape_config
    compiled = torch.compile(newton_schulz, dynamic=True, backend=backend)

    def iterate(X, steps):
        with shape_config.patch(use_duck_shape=False):  # read when a graph is traced
            return compiled(X, steps)
    return iterate


def orthogonalize(G, steps, iterate=newton_schulz):
    """Muon's update direction in bf16, for a matrix or a stack [count, rows, cols] of them. Tall matrices are
    transposed (iterating on the smaller Gram matrix) and copied contiguous in bf16 here, outside `iterate` (the
    compiled newton_schulz), and a stack's count is left symbolic even when it is 1: otherwise tall against wide,
    the strides and a count of 1 would each compile another graph."""
    tall = G.size(-2) > G.size(-1)
    X = (G.mT if tall else G).to(torch.bfloat16, memory_format=torch.contiguous_format)
    if X.dim() == 3:
        torch._dynamo.decorators.mark_unbacked(X, 0)
    X = iterate(X, steps)
    return X.mT if tall else X


class AdamWShard:
    """AdamW on this process's slice of a bucket split by elements; the new values are all-gathered straight into
    the parameters, which become views of the bucket's flat buffer of values (so the gather needs no copy after)."""

    def __init__(self, bucket, lrs, config, fused):
        layout, rank, shard = bucket.layout, bucket.comm.rank, bucket.layout.shard
        self.bucket, self.handle = bucket, None
        self.values = torch.zeros(layout.numel, dtype=bucket.params[0].dtype, device=bucket.grads.device)
        for p, offset in zip(bucket.params, layout.offsets):
            view = self.values[offset:offset + p.numel()]
            view.copy_(p.detach().view(-1))
            p.data = view.view_as(p)
        self.mine = self.values[rank * shard:(rank + 1) * shard]
        # fp32 state and fp32 math always: bf16 parameters are updated through an fp32 copy of the slice
        self.work = self.mine if self.mine.dtype == torch.float32 else torch.zeros(shard, device=self.mine.device)
        self.segments, groups, start = [], {}, rank * shard  # segment: (parameter index, its slice, the tensor)
        for i, (p, offset, lr) in enumerate(zip(bucket.params, layout.offsets, lrs)):
            lo, hi = max(offset, start), min(offset + p.numel(), start + shard)
            if lo < hi:
                segment = self.work[lo - start:hi - start]
                segment.grad = bucket.mean[lo - start:hi - start]
                self.segments.append((i, lo - offset, hi - offset, segment))
                groups.setdefault(lr, []).append(segment)
        self.adam = torch.optim.AdamW([dict(params=s, lr=lr, initial_lr=lr) for lr, s in groups.items()],
                                      betas=config.adam_betas, eps=config.adam_eps, weight_decay=0.0,
                                      fused=fused) if groups else None

    def step(self):
        self.bucket.mean_gradient()  # the segments' .grad are views of it
        if self.adam is not None:
            if self.work is not self.mine:
                self.work.copy_(self.mine)
            self.adam.step()
            if self.work is not self.mine:
                self.mine.copy_(self.work)
        self.handle = self.bucket.comm.all_gather(self.values, self.mine)

    def finish(self):
        if self.handle is not None:
            self.handle.wait()


class MuonShard:
    """Muon on this process's whole matrices of a bucket: momentum, Nesterov, then each stack of same-shape matrices
    orthogonalized in one call; the bf16 updates of every process are all-gathered and every process applies all
    of them (bf16 is what Newton-Schulz returns, so gathering updates loses nothing and halves the bytes)."""

    def __init__(self, bucket, parts, iterate, ns_steps):
        layout, rank, shard, device = bucket.layout, bucket.comm.rank, bucket.layout.shard, bucket.grads.device
        self.bucket, self.iterate, self.ns_steps, self.handle = bucket, iterate, ns_steps, None
        self.updates = torch.zeros(layout.numel, dtype=torch.bfloat16, device=device)
        self.mine = self.updates[rank * shard:(rank + 1) * shard]
        self.stacks = [(offset - rank * shard, shape) for offset, _, shape in layout.stacks[rank]]
        self.owned = max((offset + math.prod(shape) for offset, shape in self.stacks), default=0)
        self.momentum = torch.zeros(self.owned, device=device)  # of this process's matrices only
        self.by_scale = {}  # every matrix's update in the gathered buffer, grouped by its scale (one foreach each)
        for p, offset, n in zip(bucket.params, layout.offsets, parts):
            params, updates = self.by_scale.setdefault(max(1.0, p.size(0) / n / p.size(1)) ** 0.5, ([], []))
            params.append(p)
            updates.append(self.updates[offset:offset + p.numel()].view_as(p))

    def step(self, momentum):
        grad = self.bucket.mean_gradient()[:self.owned]
        self.momentum.lerp_(grad, 1 - momentum)
        nesterov = grad.lerp_(self.momentum, momentum)  # in place: the gradient is not needed after
        for offset, shape in self.stacks:
            size = math.prod(shape)
            self.mine[offset:offset + size].view(shape).copy_(
                orthogonalize(nesterov[offset:offset + size].view(shape), self.ns_steps, self.iterate))
        self.handle = self.bucket.comm.all_gather(self.updates, self.mine)

    def finish(self, lr, weight_decay):
        if self.handle is not None:
            self.handle.wait()
        for scale, (params, updates) in self.by_scale.items():
            if weight_decay:
                torch._foreach_mul_(params, 1 - lr * weight_decay)
            torch._foreach_add_(params, updates, alpha=-lr * scale)


class ShardedOptimizer:
    """Muon for the hidden matrices, AdamW for embeddings, head and scalars; each process updates only its shard.

    The gradients arrive in flat buckets (speedups.GradientBucket), each reduce-scattered as soon as the backward
    has finished it. Then, bucket by bucket, this process updates its shard (AdamWShard, MuonShard) and starts the
    all-gather of the results, so that gathers overlap the next bucket's math. The math is one process's on any
    number of processes (the mean gradient, the same AdamW and Muon), and each process keeps 1/world of the
    optimizer state. Muon orthogonalizes the fused qkv as one matrix, as before; --muon_split_qkv orthogonalizes
    q, k and v separately as the references do (a change of the math, hence a switch)."""

    def __init__(self, buckets, config, comm, accum_steps, iterate, fused_adam):
        reduce_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[config.reduce_dtype]
        self.config, self.comm, self.steps = config, comm, 0
        self.matrix_lr, self.momentum = config.matrix_lr, config.muon_momentum
        self.buckets, self.shards, self.names, muon_load = [], [], [], [0] * comm.world
        for kind, params, extra, names in buckets:
            shapes = [tuple(p.shape) for p in params]
            layout = element_layout(shapes, comm.world) if kind == "adam" else \
                matrix_layout(shapes, comm.world, extra, muon_load)
            bucket = GradientBucket(layout, params, comm, reduce_dtype, accum_steps, (self.buckets or [None])[-1])
            self.buckets.append(bucket)
            self.names.append(names)
            self.shards.append(AdamWShard(bucket, extra, config, fused_adam) if kind == "adam" else
                               MuonShard(bucket, extra, iterate, config.ns_steps))
        self.adam = [s for s in self.shards if isinstance(s, AdamWShard)]
        self.muon = [s for s in self.shards if isinstance(s, MuonShard)]

    def set_schedule(self, lr_multiplier, momentum):
        for shard in self.adam:
            for group in shard.adam.param_groups if shard.adam else []:
                group["lr"] = group["initial_lr"] * lr_multiplier
        self.matrix_lr, self.momentum = self.config.matrix_lr * lr_multiplier, momentum

    @torch.no_grad()
    def step(self):
        for bucket in self.buckets:  # any bucket the hooks did not start (a parameter without a gradient)
            if not bucket.launched:
                bucket.launch()
        for shard in self.shards:  # wait for the bucket's gradients, update this process's shard, start the gather
            shard.step() if isinstance(shard, AdamWShard) else shard.step(self.momentum)
        for shard in self.adam:
            shard.finish()
        for shard in self.muon:
            shard.finish(self.matrix_lr, self.config.weight_decay)
        for bucket in self.buckets:
            bucket.reset()
        self.steps += 1

    def state_dict(self):
        """This process's shard of the state (snapshots within a run; checkpoints use full_state_dict)."""
        return {"steps": self.steps, "adam": [s.adam.state_dict() if s.adam else None for s in self.adam],
                "momentum": [s.momentum for s in self.muon]}

    def load_state_dict(self, state):
        self.steps = state["steps"]
        for shard, adam_state in zip(self.adam, state["adam"]):
            if shard.adam:
                shard.adam.load_state_dict(adam_state)
        for shard, momentum in zip(self.muon, state["momentum"]):
            shard.momentum.copy_(momentum)

    def full_state_dict(self):
        """The whole state by parameter name, the same for any world size: gathered to rank 0 (None elsewhere).
        Every process must call it: one gather per bucket and state tensor."""
        out = {"steps": self.steps, "adam": {}, "muon": {}}
        for shard in self.adam:
            for key in ("exp_avg", "exp_avg_sq"):
                mine = torch.zeros(shard.bucket.layout.shard, device=shard.mine.device)
                start = self.comm.rank * shard.bucket.layout.shard
                for i, lo, hi, segment in shard.segments:
                    if segment in shard.adam.state:
                        at = shard.bucket.layout.offsets[i] + lo - start
                        mine[at:at + hi - lo] = shard.adam.state[segment][key]
                self._unflatten(self.comm.gather_to_first(mine), shard.bucket, out["adam"], key)
        for shard in self.muon:
            mine = torch.zeros(shard.bucket.layout.shard, device=shard.momentum.device)
            mine[:shard.owned] = shard.momentum
            self._unflatten(self.comm.gather_to_first(mine), shard.bucket, out["muon"], "momentum")
        return out if self.comm.rank == 0 else None

    def _unflatten(self, full, bucket, into, key):
        if full is not None:
            for name, p, offset in zip(self.names[self.buckets.index(bucket)], bucket.params, bucket.layout.offsets):
                into.setdefault(name, {})[key] = full[offset:offset + p.numel()].view_as(p).cpu().clone()

    def _flatten(self, bucket, source, key):
        """This process's shard of a bucket-wide flat tensor built from per-name full tensors."""
        full = torch.zeros(bucket.layout.numel)
        for name, p, offset in zip(self.names[self.buckets.index(bucket)], bucket.params, bucket.layout.offsets):
            full[offset:offset + p.numel()] = source[name][key].reshape(-1)
        shard, rank = bucket.layout.shard, self.comm.rank
        return full[rank * shard:(rank + 1) * shard]

    def load_full_state_dict(self, state):
        """Takes this process's shard of a full_state_dict (made on any number of processes)."""
        self.steps = state["steps"]
        for shard in self.adam:
            if shard.adam is None or self.steps == 0:
                continue
            flat = {key: self._flatten(shard.bucket, state["adam"], key) for key in ("exp_avg", "exp_avg_sq")}
            index = {segment: i for i, segment in
                     enumerate(s for group in shard.adam.param_groups for s in group["params"])}
            start = shard.bucket.comm.rank * shard.bucket.layout.shard
            adam_state = shard.adam.state_dict()
            for i, lo, hi, segment in shard.segments:
                at = shard.bucket.layout.offsets[i] + lo - start
                adam_state["state"][index[segment]] = {"step": torch.tensor(float(self.steps)),
                                                       **{k: v[at:at + hi - lo].clone() for k, v in flat.items()}}
            shard.adam.load_state_dict(adam_state)
        for shard in self.muon:
            shard.momentum.copy_(self._flatten(shard.bucket, state["muon"], "momentum")[:shard.owned])

    def state_bytes(self):
        """Optimizer state held by this process."""
        tensors = [s.momentum for s in self.muon] + [v for s in self.adam if s.adam for st in s.adam.state.values()
                                                     for v in st.values() if v.dim() > 0]
        return sum(t.numel() * t.element_size() for t in tensors)


def build_optimizers(model, config, comm, accum_steps=1, compile=False):
    """The sharded optimizer and its gradient buckets, in the order the backward finishes them: the head; the hidden
    matrices from the last block back, cut at --bucket_mb, and each value-embedding table in a bucket of its own
    right after its block's matrices (GPT.forward looks it up in the block loop, so that its backward runs there);
    then the token embedding and the scalars (one bucket per dtype)."""
    adam_scale = (model.embed.embedding_dim / 768) ** -0.5
    lrs = {"embed": config.embed_lr * adam_scale, "head": config.head_lr * adam_scale, "scalar": config.scalar_lr}
    names = {p: name for name, p in model.named_parameters()}
    qkv = {block.attn.qkv.weight for block in model.blocks}
    backward_order = hidden_matrices(model)[::-1]
    position = {p: i for i, p in enumerate(backward_order)}

    def muon_bucket(matrices):  # with the position where the backward has finished it: its last matrix's
        return position[matrices[-1]], ("muon", matrices, [3 if config.muon_split_qkv and m in qkv else 1
                                                           for m in matrices])
    ready, matrices, size = [], [], 0
    for p in backward_order:
        if matrices and size + p.numel() * p.element_size() > config.bucket_mb * 2**20:
            ready.append(muon_bucket(matrices))
            matrices, size = [], 0
        matrices.append(p)
        size += p.numel() * p.element_size()
    ready.append(muon_bucket(matrices))
    # a table's gradient is ready just after its block's qkv, the last of the block's matrices the backward reaches
    ready += [(position[model.blocks[i].attn.qkv.weight] + 0.5, ("adam", [table.weight], [lrs["embed"]]))
              for i, table in zip(model.value_layers, model.value_embeds)]
    ready.sort(key=lambda r: r[0])
    buckets = [("adam", [model.head.weight], [lrs["head"]])] + [bucket for _, bucket in ready]
    rest = [(model.embed.weight, lrs["embed"])] + [(p, lrs["scalar"]) for p in model.parameters() if p.ndim < 2]
    for dtype in dict.fromkeys(p.dtype for p, _ in rest):
        buckets.append(("adam", [p for p, _ in rest if p.dtype == dtype], [lr for p, lr in rest if p.dtype == dtype]))
    covered = [p for _, params, _ in buckets for p in params]
    assert len(set(covered)) == len(covered) == len(names), "every parameter belongs to exactly one bucket"
    device = next(model.parameters()).device
    fused_adam = config.fused_adam == "true" or (config.fused_adam == "auto" and device.type == "cuda")
    iterate = compile_newton_schulz() if compile else newton_schulz
    return ShardedOptimizer([(kind, params, extra, [names[p] for p in params]) for kind, params, extra in buckets],
                            config, comm, accum_steps, iterate, fused_adam)


# -----------------------------------------------------------------------------
# Schedule and horizon


def lr_multiplier(step, num_steps, config):
    """Linear warm-up over warmup_steps, flat, then linear warm-down over the last warmdown_frac of the run; where
    the two overlap (a short run), the lower of them, so that the lr never jumps."""
    warmup = (step + 1) / config.warmup_steps if step < config.warmup_steps else 1.0
    warmdown_steps = round(config.warmdown_frac * num_steps)
    if step < num_steps - warmdown_steps:
        return warmup
    progress = (num_steps - step) / max(warmdown_steps, 1)
    return min(warmup, progress + (1 - progress) * config.final_lr_frac)


def muon_momentum(step, config):
    frac = min(step / max(config.muon_momentum_warmup, 1), 1.0)
    return (1 - frac) * config.muon_momentum_start + frac * config.muon_momentum


def num_training_steps(config, scaling_param_count, step_flops):
    if config.steps > 0:
        return config.steps
    if config.tokens_per_param > 0:
        return math.ceil(config.tokens_per_param * scaling_param_count / config.total_batch_tokens)
    if config.flops_budget > 0:
        steps = int(config.flops_budget // step_flops)
        if steps < 1:
            raise ConfigError(f"--flops_budget={config.flops_budget:.3g} is less than one step ({step_flops:.3g} FLOPs)")
        return steps
    raise ConfigError("no horizon: set one of --steps, --tokens_per_param or --flops_budget")


# -----------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def val_totals(model, val_tokens, token_bytes, config, rank, world, device, autocast):
    """This process's share of the val rows (dealt round-robin), as sums: nats, tokens, nats of the tokens that
    have bytes (specials excluded), and their UTF-8 bytes."""
    T = config.seq_len
    rows = list(range(rank, (len(val_tokens) - 1) // T, world))
    batch = config.val_batch or config.device_batch
    token_bytes = token_bytes.to(device)
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    for i in range(0, len(rows), batch):
        starts = torch.tensor(rows[i:i + batch])[:, None] * T
        chunk = val_tokens[starts + torch.arange(T + 1)].to(device)
        with autocast:
            losses = model(chunk[:, :-1], chunk[:, 1:], reduction="none").double()
        nbytes = token_bytes[chunk[:, 1:]]
        totals += torch.stack([losses.sum(), losses.new_tensor(losses.numel()), (losses * (nbytes > 0)).sum(),
                               nbytes.sum().double()])
    return totals


def evaluate(model, val_tokens, token_bytes, config, rank, world, device, autocast):
    """Val loss (nats per token) and bits per byte over the fixed val rows. Sums, not means, are reduced over
    the processes, so the result does not depend on the world size or the batch."""
    model.eval()
    totals = val_totals(model, val_tokens, token_bytes, config, rank, world, device, autocast)
    if world > 1:
        dist.all_reduce(totals)
    model.train()
    nats, tokens, byte_nats, nbytes = totals.tolist()
    return nats / tokens, byte_nats / nbytes / math.log(2)


# -----------------------------------------------------------------------------
# Logging: a log that is also the record (source, commit, command, config, environment, then the steps)

# Dense bf16 FLOP/s by device name: the first key the name contains wins, so the PCIe and NVL cards (lower clocks
# and power) come before the SXM parts that share their prefix.
PEAK_BF16_FLOPS = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H200 NVL": 835e12,
                   "H100": 989.5e12, "H200": 989.5e12, "A100": 312e12}


def peak_flops(config, device):
    if config.peak_flops > 0:
        return config.peak_flops
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
    return None  # no MFU on a CPU


def git_info():
    """The commit, whether the tree differs from it, and that difference (`git diff HEAD`, kept beside the log as
    git.diff so that a record can show exactly what ran) and its sha256."""
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=os.path.dirname(__file__) or ".")
    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return {"commit": None, "dirty": None, "diff_sha256": None}, ""
    diff = git("diff", "HEAD").stdout
    return ({"commit": head.stdout.strip(), "dirty": bool(diff), "diff_sha256": hashlib.sha256(diff.encode()).hexdigest()},
            diff)


def environment(device, world):
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": str(device), "world_size": world, "gpu": None, "driver": None}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True)
        env["driver"] = smi.stdout.split("\n")[0].strip() or None
    return env


def data_identity(config, tokenizer, train_files, val_tokens):
    """What the run trained and evaluated on, for the `data:` log line that records check (records/README.md):
    the tokenizer, every train and val shard and the corpus files they were made from (by sha256), and the val
    tokens and UTF-8 bytes scored (bits per byte's denominator)."""
    def files(paths):  # a full read of the corpus: threads (hashlib lets go of the GIL) take it at disk speed
        with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
            digests = list(pool.map(sha256_file, paths))
        return [{"name": os.path.basename(p), "sha256": digest} for p, digest in zip(paths, digests)]

    def sources(shard_pattern, split):  # tokenize.json beside the shards; none for shards downloaded as tokens
        manifest = os.path.join(os.path.dirname(shard_pattern), "tokenize.json")
        if not os.path.exists(manifest):
            return None
        with open(manifest) as f:
            inputs = json.load(f)["config"]["inputs"][split]
        return [{"name": i["name"], "sha256": i.get("sha256")} for i in inputs]

    return {"tokenizer_sha256": tokenizer["sha256"], "train_shards": files(train_files),
            "val_shards": files(sorted(glob.glob(config.val_files))), "train_source": sources(config.train_files, "train"),
            "val_source": sources(config.val_files, "val"), "val_tokens": len(val_tokens) - 1,
            "val_bytes": int(tokenizer["token_bytes"][val_tokens[1:]].sum())}


class RunLog:
    """log.txt in the run folder, written by rank 0 (other ranks stay quiet); lines are also printed. A resumed run
    appends; a last line cut short (a full disk, a kill in the middle of a write) is dropped first, so that every
    line of the log is whole."""

    def __init__(self, path, enabled):
        self.file = None
        if enabled:
            if os.path.exists(path):
                with open(path, "rb+") as f:
                    text = f.read()
                    if text and not text.endswith(b"\n"):
                        f.truncate(text.rfind(b"\n") + 1)
            self.file = open(path, "a")

    def write(self, text, echo=True):
        if self.file is None:
            return
        if echo:
            print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()


# -----------------------------------------------------------------------------
# Checkpoints: everything needed to continue exactly, as tensors and plain containers (weights_only loads it)


def save_checkpoint(path, model, optimizer, loader, progress, config, rank=0):
    """Every process calls it (the sharded optimizer state is gathered); rank 0 writes. Weights that are not finite
    are never written: the loss read before a save is that of the weights before the last update, which may be
    the one that broke them, and the checkpoint they would replace is the one to go back to."""
    kept = f"{path} is kept as it was" if os.path.exists(path) else "no checkpoint was written"
    if not torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all():  # the same on every rank
        raise FloatingPointError(f"step {progress['step']}: the weights are not finite after this step's update; "
                                 f"{kept}. Try a lower lr")
    optimizer_state = optimizer.full_state_dict()
    if rank != 0:
        return
    state = {"model": model.state_dict(), "optimizer": optimizer_state,
             "loader": loader.state_dict(), "progress": dict(progress), "config": dataclasses.asdict(config),
             "rng": {"cpu": torch.get_rng_state(),  # the GPU's: this process's device only (any GPU count resumes)
                     "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_initialized() else []}}
    try:
        torch.save(state, path + ".tmp")
    except (OSError, RuntimeError) as e:  # a full disk: torch reports it as either
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
        raise CheckpointError(f"could not write {path} ({' '.join(str(e).split())[:200]}); {kept}. Free disk space "
                              "and resume") from None
    os.replace(path + ".tmp", path)  # a crash while saving leaves the previous checkpoint intact


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written; the message says what to do."""


RESUMABLE_CHANGES = {"resume", "stop_after", "save_every", "save_final", "log_every", "val_every", "wandb",
                     "run_id", "out_dir", "compile", "warmup_timing_steps", "val_batch", "device", "bucket_mb",
                     "fused_adam"}


CHECKPOINT_KEYS = {"model", "optimizer", "loader", "progress", "config", "rng"}


def load_checkpoint(path, config):
    if not os.path.isfile(path):
        raise ConfigError(f"--resume={path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises several types for a truncated, empty or foreign file
        why = "an empty file" if os.path.getsize(path) == 0 else f"torch.load: {type(e).__name__}"
        raise ConfigError(f"--resume={path}: not a readable checkpoint ({why}); resume from another checkpoint.pt, "
                          "or start the run again without --resume") from None
    if isinstance(state, dict) and "optimizers" in state and "optimizer" not in state:
        raise ConfigError(f"--resume={path}: the checkpoint predates the sharded optimizer (its optimizer state "
                          "has another form); it cannot be resumed: start a new run")
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= state.keys():
        raise ConfigError(f"--resume={path}: not a train_gpt.py checkpoint (it lacks "
                          f"{', '.join(sorted(CHECKPOINT_KEYS))}); resume from the checkpoint.pt of a run folder")
    check_same_settings(config, state["config"], f"--resume={path}: the checkpoint")
    return state


def check_same_settings(config, saved, what):
    """A run continues only with the settings it was made with (but for those in RESUMABLE_CHANGES); a setting
    added to Config since then counts as its default, which is what the run had."""
    saved = {**dataclasses.asdict(Config()), **saved}
    changed = [k for k, v in dataclasses.asdict(config).items()
               if k not in RESUMABLE_CHANGES and (tuple(v) if isinstance(v, tuple) else v) !=
               (tuple(saved[k]) if isinstance(saved[k], list) else saved[k])]
    if changed:
        raise ConfigError(f"{what} was made with other settings ({', '.join(changed)}); resume with the same options")


# -----------------------------------------------------------------------------
# Training


def compile_by_block(model, backend="inductor"):
    """--compile=blocks: each block compiled on its own (blocks of one kind share a graph), and the attention masks
    and the head and loss, while the embedding lookups and the loop stay eager. The backward is then one autograd
    node per block, which hands out the block's gradients when it is done, so a gradient bucket's reduce-scatter
    starts while the blocks below are still in their backward (a whole-model compile hands out every gradient at
    its end). The masks get a compiled function of their own, not eager code: eager create_block_mask evaluates
    the mask function into a [B, 1, T, T] boolean tensor per window and micro-batch before reducing it to blocks,
    and torch advises compiling it (a whole-model compile does so implicitly). Not yet timed on a GPU."""
    # the blocks share Block.forward's code, whose cache keeps a graph per kind of block (window, value embedding)
    # for training, for evaluation (no grad) and for evaluation's last, shorter batch: more than Dynamo's default 8
    kinds = {(block.attn.window, block.attn.value_mix is not None) for block in model.blocks}
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(kinds))
    for block in model.blocks:
        block.compile(backend=backend)  # in place: the parameters' names, and so the checkpoints, do not change
    model.masks = torch.compile(model.masks, backend=backend)
    model.head_and_loss = torch.compile(model.head_and_loss, backend=backend)


class Trainer:
    """The model, its optimizers and its data for one process, and one training step."""

    def __init__(self, config, tokenizer, rank, world, device):
        self.config, self.rank, self.world, self.device = config, rank, world, device
        torch.manual_seed(config.seed)
        self.model = GPT(config, tokenizer["vocab_size"], tokenizer["bos_id"]).to(device)
        self.fp8 = config.fp8 and enable_fp8(self.model, device)
        rows_per_step = config.total_batch_tokens // config.seq_len
        self.accum_steps = rows_per_step // (world * config.device_batch)
        use_compile = config.compile in ("true", "blocks") or (config.compile == "auto" and device.type == "cuda")
        self.comm = Comm(rank, world)
        self.optimizer = build_optimizers(self.model, config, self.comm, self.accum_steps, use_compile)
        self.loader = DataLoader(config.train_files, config.seq_len, rows_per_step, rank, world, config.seed, device,
                                 tokenizer["vocab_size"])
        # one graph: its backward hands out every gradient at its end, so no gradient bucket's reduce-scatter
        # overlaps the backward (eager, they do; speedups.py, Communication). --compile=blocks: compile_by_block
        self.forward = torch.compile(self.model) if use_compile and config.compile != "blocks" else self.model
        if config.compile == "blocks":
            compile_by_block(self.model)
        self.model.attention_backend = ("flex" if config.attention == "auto" and use_compile and device.type == "cuda"
                                        else "sdpa" if config.attention == "auto" else config.attention)
        self.autocast = autocast_for(device)

    def step(self, step, num_steps):
        """One optimizer step over the global batch; returns the mean train loss (a tensor, not yet synced)."""
        multiplier = lr_multiplier(step, num_steps, self.config)
        self.optimizer.set_schedule(multiplier, muon_momentum(step, self.config))
        inputs, targets = self.loader.next_batch()
        B = self.config.device_batch
        total = torch.zeros((), device=self.device)
        for micro in range(self.accum_steps):
            with self.autocast:
                loss = self.forward(inputs[micro * B:(micro + 1) * B], targets[micro * B:(micro + 1) * B])
            (loss / self.accum_steps).backward()
            total += loss.detach()
        if self.world > 1:  # the mean loss over processes (the gradients travel in the optimizer's buckets)
            self.comm.all_reduce(total)
            total /= self.world
        self.optimizer.step()  # gradient buckets were reduce-scattered during the last backward; see ShardedOptimizer
        return total / self.accum_steps, multiplier

    def snapshot(self):
        """A copy of everything a step changes, kept in CPU memory (the GPU's is for training)."""
        return copy_state({"model": self.model.state_dict(), "loader": self.loader.state_dict(),
                           "optimizer": self.optimizer.state_dict()})

    def restore(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loader.load_state_dict(state["loader"])


def read_results(path):
    """A finished run's results.json (train_gpt.py writes it last, whole)."""
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        results = f"not readable: {e}"
    if not isinstance(results, dict) or not isinstance(results.get("config"), dict):
        why = results if isinstance(results, str) else "no config"
        raise ConfigError(f"{path} is not a train_gpt.py results.json ({why}); it marks the run as finished: "
                          "restore it, or move the run folder away to train again")
    return results


def copy_state(obj):
    """A deep copy of a state dict, its tensors copied to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: copy_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(copy_state(v) for v in obj)
    return obj


def autocast_for(device):
    """bf16 autocast on GPUs; full precision on CPUs (CPU bf16 matmuls are slow and the tests compare exactly)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# options that have no meaning at zero (or below zero): one line each, before anything is built or written
POSITIVE_FIELDS = ("depth", "head_dim", "seq_len", "device_batch", "total_batch_tokens", "val_tokens", "log_every")
NON_NEGATIVE_FIELDS = ("model_dim", "short_window", "steps", "tokens_per_param", "flops_budget", "warmup_steps",
                       "val_every", "val_batch", "save_every", "stop_after", "warmup_timing_steps",
                       "muon_momentum_warmup", "ns_steps", "seed")
CHOICES = {"attention": ("auto", "sdpa", "flex"), "compile": ("auto", "true", "false", "blocks"),
           "embed_dtype": ("fp32", "bf16"), "reduce_dtype": ("fp32", "bf16"), "fused_adam": ("auto", "true", "false"),
           "wandb": ("", "online", "offline")}


def check_config(config, world, device=None):
    """Bad values and combinations, caught before any model or data is built (and before any run folder); a notice
    for a combination that works but wastes the GPU."""
    for key in POSITIVE_FIELDS:
        if getattr(config, key) <= 0:
            raise ConfigError(f"--{key}={getattr(config, key)}: must be at least 1")
    for key in NON_NEGATIVE_FIELDS:
        if getattr(config, key) < 0:
            raise ConfigError(f"--{key}={getattr(config, key)}: must be 0 or more")
    if len(config.adam_betas) != 2 or not all(0 <= beta < 1 for beta in config.adam_betas):
        raise ConfigError(f"--adam_betas={','.join(map(str, config.adam_betas))}: give two values in [0, 1), "
                          "e.g. --adam_betas=0.8,0.95")
    for key, choices in CHOICES.items():
        if getattr(config, key) not in choices:
            *most, last = [c for c in choices if c]
            raise ConfigError(f"--{key}={getattr(config, key)}: use {', '.join(most)} or {last}")
    for key in ("warmdown_frac", "final_lr_frac"):
        if not 0 <= getattr(config, key) <= 1:
            raise ConfigError(f"--{key}={getattr(config, key)}: must be in [0, 1] (a fraction)")
    if config.logit_cap <= 0:
        raise ConfigError(f"--logit_cap={config.logit_cap}: must be above 0 (logits = cap x tanh(logits / cap))")
    dim, heads, _ = derived(config)
    if dim % config.head_dim or config.head_dim % 2:
        raise ConfigError(f"--model_dim={dim}, --head_dim={config.head_dim}: the head dim must be even (rotary "
                          "pairs its channels) and divide the model dim")
    if not config.window_pattern or set(config.window_pattern) - {"S", "L"}:
        raise ConfigError(f"--window_pattern={config.window_pattern!r}: use only S (short window) and L (full)")
    per_pass = world * config.device_batch * config.seq_len
    if config.total_batch_tokens % per_pass:
        raise ConfigError(f"--total_batch_tokens={config.total_batch_tokens:,} is not a multiple of world size x "
                          f"device_batch x seq_len = {world} x {config.device_batch} x {config.seq_len} = "
                          f"{per_pass:,}; change one of them (the global batch is kept by gradient accumulation)")
    if config.loss not in ("plain", "chunked") or config.loss_chunk < 1:
        raise ConfigError(f"--loss={config.loss} --loss_chunk={config.loss_chunk}: use plain or chunked, and a "
                          "positive number of rows per chunk")
    if config.attention == "flex" and config.compile == "false" and device is not None and device.type == "cuda":
        print("notice: --attention=flex without --compile materializes every attention score (slow, memory-hungry); "
              "use --compile=true, or --attention=sdpa")


def resolve_device(config, local_rank=0):
    if config.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(config.device)
    except RuntimeError:
        raise ConfigError(f"--device={config.device}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device={config.device}: no CUDA GPU is visible to torch here; use --device=cpu (or "
                          "auto), or check the driver and CUDA_VISIBLE_DEVICES")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device={config.device}: this machine has {torch.cuda.device_count()} GPU(s); use "
                          "cuda:0 to cuda:N-1, or auto")
    return device


def init_distributed(config):
    """This process's rank, world size and device, from torchrun's RANK, WORLD_SIZE and LOCAL_RANK; joins the
    process group (NCCL on GPUs, gloo on CPUs) when there is more than one process."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(config, int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def train(config, rank=0, world=1, device=None):
    """The whole run for one process; returns the results (rank 0) after writing them."""
    wall_start = time.perf_counter()
    device = device or resolve_device(config)
    check_config(config, world, device)
    run_dir = os.path.dirname(os.path.abspath(config.resume)) if config.resume else os.path.join(
        config.out_dir, config.run_id or time.strftime("%Y%m%d_%H%M%S") + (f"_{config.preset}" if config.preset else ""))
    results_path, checkpoint_path = os.path.join(run_dir, "results.json"), os.path.join(run_dir, "checkpoint.pt")
    if config.resume and os.path.exists(results_path):  # finished: a resume would only rewrite what is there
        results = read_results(results_path)
        check_same_settings(config, results["config"], f"--resume={config.resume}: the finished run")
        if rank == 0:
            print(f"{run_dir} is finished ({results_path} is there): nothing to resume, nothing changed", flush=True)
        return results
    if not config.resume and os.path.exists(os.path.join(run_dir, "log.txt")):
        raise ConfigError(f"{run_dir} holds a run already; choose another --run_id, or " + (
            f"continue it with --resume={checkpoint_path}" if os.path.exists(checkpoint_path) else
            "move that folder aside (it has no checkpoint to continue from) to start it again"))
    tokenizer = load_tokenizer_info(config.tokenizer)
    data_notices = check_data_matches_tokenizer(config, tokenizer)
    val_tokens = load_val_tokens(config.val_files, config.val_tokens, config.seq_len, tokenizer["vocab_size"])
    checkpoint = load_checkpoint(config.resume, config) if config.resume else None
    trainer = Trainer(config, tokenizer, rank, world, device)
    if checkpoint is not None:  # first: a position in other shards stops the run before anything is written
        trainer.loader.load_state_dict(checkpoint["loader"])
    model = trainer.model
    tokens_flops = flops_per_token(config, tokenizer["vocab_size"])
    step_flops = tokens_flops * config.total_batch_tokens
    num_steps = num_training_steps(config, scaling_params(model), step_flops)
    peak = peak_flops(config, device)

    if world > 1:
        dist.barrier()  # every process has looked before the first one writes
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
    log = RunLog(os.path.join(run_dir, "log.txt"), enabled=rank == 0)
    (git, diff), env = git_info(), environment(device, world)
    diff_path = os.path.join(run_dir, "git.diff")
    if diff and rank == 0 and not os.path.exists(diff_path):  # the first start's; a resume never overwrites it
        with open(diff_path, "w") as f:
            f.write(diff)
    if checkpoint is None:
        with open(__file__) as f:
            log.write(f.read(), echo=False)
        log.write("=" * 100, echo=False)
    log.write(f"git: {json.dumps(git)}")
    log.write(f"command: {' '.join([sys.executable, *sys.argv])}")
    log.write(f"config: {json.dumps(dataclasses.asdict(config))}")
    log.write(f"environment: {json.dumps(env)}")
    if rank == 0:  # hashing every shard takes a while on big corpora; only the log's writer needs it
        log.write(f"data: {json.dumps(data_identity(config, tokenizer, trainer.loader.files, val_tokens))}")
    log.write(f"model: {sum(p.numel() for p in model.parameters()):,} parameters, {scaling_params(model):,} in hidden "
              f"matrices and head; vocab {tokenizer['vocab_size']}; {tokens_flops:,} FLOPs/token; {num_steps} steps of {config.total_batch_tokens:,} "
              f"tokens; gradient accumulation {trainer.accum_steps}, world size {world}; fp8 {trainer.fp8}; attention "
              f"{model.attention_backend}")
    for line in (*data_notices, trainer.loader.describe(num_steps)):
        log.write(line)
    wandb_run = None
    if config.wandb and rank == 0:
        import wandb
        wandb_run = wandb.init(project="speedrun", name=os.path.basename(run_dir), mode=config.wandb,
                               config=dataclasses.asdict(config))

    # the totals of the run so far; a checkpoint carries them, so that a resumed run's results cover all of it
    progress = {"step": 0, "training_time": 0.0, "eval_time": 0.0, "warmup_time": 0.0, "wall_time": 0.0, "tokens": 0}
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        trainer.optimizer.load_full_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["rng"]["cpu"])
        if device.type == "cuda" and checkpoint["rng"]["cuda"]:
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"][0], device)
        progress.update(checkpoint["progress"])
        log.write(f"resumed from {config.resume} at step {progress['step']}")
    earlier_wall_time = progress["wall_time"]  # of the starts before this one, up to their last checkpoint

    # Compile and warm up on real steps, then put everything back: the timed run starts from a clean state.
    warmup_start = time.perf_counter()
    start_state = trainer.snapshot()
    for i in range(min(config.warmup_timing_steps, num_steps - progress["step"])):
        trainer.step(progress["step"] + i, num_steps)
    trainer.restore(start_state)
    synchronize(device)
    progress["warmup_time"] += time.perf_counter() - warmup_start

    def save(state):  # on every process; with the wall time so far
        state["wall_time"] = earlier_wall_time + time.perf_counter() - wall_start
        save_checkpoint(checkpoint_path, model, trainer.optimizer, trainer.loader, state, config, rank)

    def validate(step):
        synchronize(device)
        t0 = time.perf_counter()
        val_loss, val_bpb = evaluate(trainer.forward, val_tokens, tokenizer["token_bytes"], config, rank, world,
                                     device, trainer.autocast)
        progress["eval_time"] += time.perf_counter() - t0
        log.write(f"step:{step}/{num_steps} val_loss:{val_loss:.6f} val_bpb:{val_bpb:.6f} "
                  f"train_time_ms:{1000 * progress['training_time']:.0f}")
        if wandb_run:
            wandb_run.log({"val_loss": val_loss, "val_bpb": val_bpb}, step=step)
        return val_loss, val_bpb

    # a final checkpoint knows how its run ended: resumed before results.json was written, it only validates
    status, steps_here, val_loss, val_bpb = progress.pop("status", "finished"), 0, None, None
    # The loss stays on the device until a read: a log line, a validation, a checkpoint, a stop. Between reads no
    # step waits for the device (a sync every step idles the GPU while the CPU queues the next step's work). The
    # clock starts after a sync and stops after the sync at the read, so the timed windows cover exactly the
    # steps; each read is logged, with the window's mean step time. log_every=1 (the default) reads, and syncs,
    # every step. A non-finite loss is caught at the first read after it (at most log_every - 1 steps later),
    # always before a checkpoint is written, and the step where it first appeared is named.
    window_start, window_losses = None, []
    while progress["step"] < num_steps and status == "finished":
        step = progress["step"]
        if window_start is None:
            synchronize(device)
            window_start = time.perf_counter()
        loss, multiplier = trainer.step(step, num_steps)
        window_losses.append(loss)
        progress["tokens"] += config.total_batch_tokens
        progress["step"] = step = step + 1
        steps_here += 1
        val_due = (config.val_every and step % config.val_every == 0) or step == num_steps
        save_due = (config.save_every and step % config.save_every == 0  # on every rank: all read at the same steps
                    and not (step == num_steps and config.save_final))  # the final save follows: not twice
        stop_due = config.stop_after and steps_here == config.stop_after and step < num_steps
        if not (step % config.log_every == 0 or val_due or save_due or stop_due):
            continue
        synchronize(device)
        window_time = time.perf_counter() - window_start  # the timed region: training steps only
        progress["training_time"] += window_time
        step_time = window_time / len(window_losses)
        values = torch.stack(window_losses).tolist()
        window_start, window_losses = None, []
        bad = next((i for i, value in enumerate(values) if not math.isfinite(value)), None)
        if bad is not None:
            bad_step, loss = step - len(values) + 1 + bad, values[bad]
            saved = f"the last checkpoint is {checkpoint_path}" if os.path.exists(checkpoint_path) else "no checkpoint was saved"
            log.write(f"step:{bad_step}/{num_steps} train_loss:{loss} -- stopping: the loss is not finite (read after "
                      f"step {step}); {saved}")
            raise FloatingPointError(f"step {bad_step}: train loss is {loss}; stopped ({saved}). Try a lower lr or "
                                     "check the data")
        loss = values[-1]
        tok_per_s = config.total_batch_tokens / step_time
        mfu = f"{100 * tokens_flops * tok_per_s / (peak * world):.1f}%" if peak else "n/a"
        log.write(f"step:{step}/{num_steps} train_loss:{loss:.6f} lr:{multiplier:.4f} step_ms:{1000 * step_time:.2f} "
                  f"tok/s:{tok_per_s:.0f} mfu:{mfu} train_time_ms:{1000 * progress['training_time']:.0f}")
        if wandb_run:
            wandb_run.log({"train_loss": loss, "lr_multiplier": multiplier, "tok_per_s": tok_per_s}, step=step)
        if val_due:
            val_loss, val_bpb = validate(step)
            if config.target_val_loss and val_loss <= config.target_val_loss:
                status = "target_reached"
                log.write(f"step:{step}/{num_steps} reached the target val loss {config.target_val_loss}")
                break
        if save_due or stop_due:
            save(progress)
        if stop_due:
            log.write(f"step:{step}/{num_steps} stopping after {steps_here} steps (--stop_after); resume with "
                      f"--resume={checkpoint_path}")
            return None
    if val_loss is None:
        val_loss, val_bpb = validate(progress["step"])
    if config.save_final:
        save(dict(progress, status=status))

    training_time = progress["training_time"]
    results = {
        "schema_version": RESULTS_SCHEMA, "run_id": os.path.basename(run_dir), "status": status,
        "preset": config.preset, "seed": config.seed, "config": dataclasses.asdict(config),
        "params": sum(p.numel() for p in model.parameters()), "scaling_params": scaling_params(model),
        "vocab_size": tokenizer["vocab_size"], "total_batch_tokens": config.total_batch_tokens,
        "steps": progress["step"], "tokens": progress["tokens"],
        "model_flops_per_token": tokens_flops, "model_flops": tokens_flops * progress["tokens"],
        "hardware_flops": training_time * world * peak if peak else None,
        "mfu": tokens_flops * progress["tokens"] / (training_time * world * peak) if peak else None,
        "training_time_s": training_time, "warmup_time_s": progress["warmup_time"],
        "eval_time_s": progress["eval_time"], "wall_time_s": earlier_wall_time + time.perf_counter() - wall_start,
        "val_loss": val_loss, "val_bpb": val_bpb, "val_tokens": (len(val_tokens) - 1) // config.seq_len * config.seq_len,
        "git": git, "environment": env,
        "data": {"train_files": [os.path.basename(f) for f in trainer.loader.files], "val_files": config.val_files,
                 "tokenizer": config.tokenizer, "tokenizer_sha256": tokenizer["sha256"]},
    }
    log.write(f"loader: epoch {trainer.loader.epochs():.3f} reached ({progress['tokens']:,} tokens trained on)")
    log.write(f"done: {status}, val_loss:{val_loss:.6f} val_bpb:{val_bpb:.6f} training_time:{training_time:.2f}s "
              f"warmup_time:{progress['warmup_time']:.2f}s eval_time:{progress['eval_time']:.2f}s")
    if rank == 0:  # written whole or not at all: a results.json marks a finished run
        with open(results_path + ".tmp", "w") as f:
            json.dump(results, f, indent=2)
        os.replace(results_path + ".tmp", results_path)
    if wandb_run:
        wandb_run.finish()
    trainer.loader.close()
    return results


# -----------------------------------------------------------------------------
# Main


def out_of_memory(config, error):
    """The one line for a run that ran out of GPU memory: what it asked for, and the options that need less."""
    asked = next(iter(re.findall(r"Tried to allocate [\d.]+ \w+", str(error))), "")
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if torch.cuda.is_initialized() else "unknown"
    return (f"out of GPU memory ({asked + '; ' if asked else ''}peak allocated {peak}) at --device_batch="
            f"{config.device_batch} (--val_batch={config.val_batch or config.device_batch} in evaluation): lower "
            f"--device_batch to a divisor of it (gradient accumulation keeps the {config.total_batch_tokens:,} tokens "
            "a step), or --val_batch if it ran out in evaluation; --loss=chunked never holds the whole logits")


def main(argv=None):
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    try:
        rank, world, device = init_distributed(config)
        train(config, rank, world, device)
    except (ConfigError, ShardError, FloatingPointError, CheckpointError) as e:
        sys.exit(f"error: {e}")
    except torch.OutOfMemoryError as e:
        sys.exit(f"error: {out_of_memory(config, e)}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
