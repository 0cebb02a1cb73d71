"""harness/data.py: training rows from token shards, the val tokens, and the tokenizer a run checks them against."""

import atexit
import glob
import json
import os
import queue
import threading

import numpy as np
import torch

from data.shards import ShardError, read_header, read_shard, read_tokenizer_sha256
from data.tokenizer import TokenizerError, load_tokenizer, sha256_file
from harness.config import ConfigError


class DataLoader:
    """Rows of seq_len + 1 tokens cut from the training shards so that every token is used once per epoch.

    Row k of a shard is its tokens k x seq_len ... (k + 1) x seq_len: consecutive slices that share one token (a
    row's last target is the next row's first input), so every token of a shard but its first is a target once
    per epoch and only the last (tokens - 1) mod seq_len are never used (`fraction_used`, logged). A row begins
    anywhere in a document; --doc_mask keeps attention inside documents (each starts at BOS).
    The rows form one global sequence, the same for every process: the shards in a seeded order that changes
    every epoch, each shard's rows in a seeded order of their own (so that a step mixes many documents). A step
    takes the next world x accumulation x device_batch rows (rows_per_step: a number, or a function of the step for
    a batch schedule); this process takes its own slice, so ranks never overlap and the step's rows do not depend on
    the world size. The state (epoch, shard, row, and the step it serves next) is where the next step begins; a background thread prepares the next step's batch in pinned memory. A shard's token ids are
    checked against the vocab when it is first read (one pass), so a bad id stops the run with a message instead
    of failing in the embedding.
    """

    def __init__(self, pattern, seq_len, rows_per_step, rank, world, seed, device, vocab_size):
        self.files = find_files(pattern, "training")
        self.seq_len, self.seed, self.device, self.vocab_size = seq_len, seed, device, vocab_size
        self.rows_of = rows_per_step if callable(rows_per_step) else (lambda step: rows_per_step)
        self.rank, self.world = rank, world
        self.shard_tokens = [read_header(path) for path in self.files]
        self.shard_rows = [max(n - 1, 0) // seq_len for n in self.shard_tokens]
        if not sum(self.shard_rows):
            raise ConfigError(f"{pattern}: no shard holds a row of --seq_len + 1 = {seq_len + 1} tokens; lower "
                              "--seq_len or tokenize more data")
        self.state = {"epoch": 0, "shard": 0, "row": 0, "step": 0}
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
                f"targets once per epoch; {num_steps} steps of {rows_text(self.rows_of, num_steps)} rows are "
                f"{sum(self.rows_of(s) for s in range(num_steps)) / sum(self.shard_rows):.3f} epochs")

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
        rows = self._next_rows(state, self.rows_of(state.get("step", 0)))
        state["step"] = state.get("step", 0) + 1
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


class DocumentLoader(DataLoader):
    """Rows that start at BOS (--rows=documents): whole documents packed best fit into rows of seq_len + 1 tokens.

    The documents (each from its BOS to the next) come in one global order, the same for every process: the shards
    in a seeded order per epoch, each shard's documents in a seeded order of their own. A pool of the next `pool`
    documents waits; each row takes the longest pooled document that fits in what is left of it, until none fits,
    and then the oldest pooled document (crop="oldest"), or the shortest (crop="shortest", nanochat's), cropped to
    fill it exactly (its tail dropped, counted: `dropped`). So every
    row starts at a BOS, no token is padding, and a document longer than a row is cut to the row. The pool and the
    position are the state (by shard and document index), so a resume continues exactly; the rows of a step are
    dealt to processes as the slices loader deals them."""

    def __init__(self, pattern, seq_len, rows_per_step, rank, world, seed, device, vocab_size, bos_id,
                 seq_len_of=None, pool=256, crop="oldest"):
        self.bos_id, self._starts, self.pool_size, self.crop = bos_id, {}, pool, crop
        self.seq_len_of = seq_len_of or (lambda step: seq_len)  # a stage schedule's row length (harness/schedule.py)
        super().__init__(pattern, seq_len, rows_per_step, rank, world, seed, device, vocab_size)
        self.shard_docs = [len(self.doc_starts(i)) for i in range(len(self.files))]
        if not sum(self.shard_docs):
            raise ConfigError(f"{pattern}: no document starts with the BOS token ({bos_id}); --rows=documents needs "
                              "shards of BOS-prefixed documents (python -m data.tokenize writes them)")
        self.state = {"epoch": 0, "shard": 0, "doc": 0, "step": 0, "pool": [], "dropped": 0, "used": 0}

    def doc_starts(self, index):
        """Where each document of a shard starts (its BOS), and one past its end."""
        if index not in self._starts:
            tokens = self._shard(index)
            starts = np.flatnonzero(np.asarray(tokens) == self.bos_id)
            self._starts[index] = np.append(starts, len(tokens))
        return self._starts[index][:-1]

    def document(self, index, doc):
        starts = self.doc_starts(index)
        end = self._starts[index][doc + 1]
        return self._shard(index)[starts[doc]:end]

    def _shard(self, index):
        if not hasattr(self, "_cache"):
            self._cache = {}
        if index not in self._cache:
            tokens = read_shard(self.files[index])
            if index not in self._checked:
                check_token_ids(tokens, self.vocab_size, self.files[index])
                self._checked.add(index)
            if len(self._cache) >= 3:  # the pool spans a few consecutive shards at most
                self._cache.pop(next(iter(self._cache)))
            self._cache[index] = tokens
        return self._cache[index]

    def doc_order(self, epoch, index):
        return np.random.default_rng([self.seed, epoch, index, 1]).permutation(self.shard_docs[index])

    def _next_doc(self, state):
        """The next document of the stream as [shard index, document index, length]; the state advances."""
        while True:
            index = int(self.shard_order(state["epoch"])[state["shard"]])
            if state["doc"] < self.shard_docs[index]:
                doc = int(self.doc_order(state["epoch"], index)[state["doc"]])
                state["doc"] += 1
                return [index, doc, len(self.document(index, doc))]
            state["shard"], state["doc"] = state["shard"] + 1, 0
            if state["shard"] == len(self.files):
                state["epoch"], state["shard"] = state["epoch"] + 1, 0

    def _make_batch(self, state):
        pool = [list(entry) for entry in state["pool"]]
        while len(pool) < self.pool_size:
            pool.append(self._next_doc(state))
        lengths = np.array([length for *_, length in pool])
        rows, step = [], state.get("step", 0)
        for _ in range(self.rows_of(step)):
            rows.append(self._pack_row(state, pool, lengths, self.seq_len_of(step) + 1))
        state["step"] = state.get("step", 0) + 1
        state["pool"] = pool
        mine = rows[self.rank::self.world]
        batch = torch.from_numpy(np.stack(mine).astype(np.int64))
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        return batch, {**state, "pool": [list(entry) for entry in pool]}

    def _pack_row(self, state, pool, lengths, need):
        """One row of `need` tokens: the longest pooled documents that fit, then the oldest (or shortest) one cropped;
        the pool (and its lengths, in place) refilled from the stream."""
        pieces, left = [], need
        while left:
            fits = np.flatnonzero(lengths <= left)
            pick = int(fits[np.argmax(lengths[fits])]) if len(fits) else \
                int(np.argmin(lengths)) if self.crop == "shortest" else 0
            index, doc, length = pool.pop(pick)
            take = min(length, left)
            pieces.append(np.asarray(self.document(index, doc)[:take]))
            state["dropped"] += length - take
            state["used"] += take
            left -= take
            pool.append(self._next_doc(state))
            lengths[pick:-1] = lengths[pick + 1:]
            lengths[-1] = pool[-1][2]
        return np.concatenate(pieces)

    @property
    def fraction_used(self):
        seen = self.state["used"] + self.state["dropped"]
        return self.state["used"] / seen if seen else 1.0

    def epochs(self, state=None):
        state = state or self.state
        docs_before = sum(self.shard_docs[i] for i in self.shard_order(state["epoch"])[:state["shard"]])
        return state["epoch"] + (docs_before + state["doc"] - len(state["pool"])) / sum(self.shard_docs)

    def describe(self, num_steps):
        return (f"loader: {sum(self.shard_tokens):,} training tokens in {len(self.files)} shards, "
                f"{sum(self.shard_docs):,} documents; rows start at BOS: documents packed best fit into rows of "
                f"{self.seq_len + 1} tokens, the one that fills a row cropped (its tail dropped, counted); "
                f"{num_steps} steps of {rows_text(self.rows_of, num_steps)} rows")

    def dropped_text(self):
        seen = self.state["used"] + self.state["dropped"]
        return (f"{self.state['dropped']:,} of {seen:,} document tokens dropped by cropping "
                f"({100 * self.state['dropped'] / max(seen, 1):.1f}%)")


def rows_text(rows_of, num_steps):
    """"R" for a constant batch, "R1 to R2" for a schedule."""
    first, last = rows_of(0), rows_of(max(num_steps - 1, 0))
    return f"{first}" if all(rows_of(s) == first for s in range(num_steps)) else f"{first} to {last}"


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

