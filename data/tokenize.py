"""Tokenize a corpus folder into token shards (data/shards.py's format), in parallel, resumably.

    python -m data.tokenize --corpus data/climbmix --tokenizer data/tokenizer --out data/climbmix_32k

Every document is prefixed with the tokenizer's BOS token and the documents are concatenated in file order
into shards of --shard-tokens tokens (a document may span two shards); the last shard of a split is shorter.
The corpus's last file becomes val_*.bin, the others train_*.bin. The same inputs give byte-identical shards
whatever the number of workers. Each shard's header and tokenize.json name the tokenizer (its sha256), so
training refuses shards from another tokenizer. Progress is saved in tokenize.json after every shard, with the
shard's sha256: a re-run verifies every recorded shard against it, keeps the leading ones that are intact and
carries on from the first one that is not. Last, the val tokens are checked against the train shards for copied
text (data/overlap.py: long shared n-grams), and the result goes into overlap.json, which training logs.
"""

import argparse
import json
import multiprocessing
import os
import sys
import time

import numpy as np
from tqdm import tqdm

from data import overlap
from data.corpus import CorpusError, corpus_files, file_blocks, read_block
from data.shards import MAX_VOCAB, ShardError, read_header, write_shard
from data.tokenizer import TokenizerError, load_tokenizer, sha256_file

MANIFEST = "tokenize.json"
FORMAT_VERSION = 1


def encode_block(tok, block):
    """Tokens of a block's documents, each prefixed with BOS, as one uint16 array; and each document's length."""
    bos = np.array([tok.bos_id], dtype=np.uint32)
    pieces = []
    for doc in read_block(block):
        pieces += (bos, tok.encode_to_numpy(doc))
    lengths = np.array([len(piece) for piece in pieces[1::2]], dtype=np.int64) + 1
    return np.concatenate(pieces).astype(np.uint16), lengths


_worker_tokenizer = None


def _start_worker(tokenizer):
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(tokenizer)


def _encode_in_worker(item):
    return encode_block(_worker_tokenizer, item[1])


def blocks_from(files, position):
    """Blocks of the files from position (file index, row) on."""
    file_index, row = position
    for i in range(file_index, len(files)):
        yield from ((i, block) for block in file_blocks(files[i], row if i == file_index else 0))


class ShardWriter:
    """Cuts a stream of tokens into fixed-size shards, remembering where in the corpus each shard starts."""

    def __init__(self, out, prefix, state, shard_tokens, tokenizer_sha256, on_shard):
        self.out, self.prefix, self.state, self.on_shard = out, prefix, state, on_shard
        self.tokenizer_sha256 = tokenizer_sha256
        self.buffer = np.empty(shard_tokens, dtype=np.uint16)
        self.fill = 0

    def add(self, tokens, lengths, file_index, first_row, start=0):
        """Appends a block's tokens from token `start` on (a resume inside its first document: what the previous
        shard already holds is skipped); first_row is the row (in file file_index) of the block's first document."""
        ends = np.cumsum(lengths)
        taken = start
        while taken < len(tokens):
            n = min(len(self.buffer) - self.fill, len(tokens) - taken)
            self.buffer[self.fill:self.fill + n] = tokens[taken:taken + n]
            self.fill, taken = self.fill + n, taken + n
            if self.fill == len(self.buffer):
                doc = int(np.searchsorted(ends, taken, side="right"))  # the document holding token `taken`
                offset = taken - (int(ends[doc - 1]) if doc else 0)
                self.flush(next_position=[file_index, first_row + doc, offset])

    def flush(self, next_position):
        if self.fill == 0:
            return
        name = f"{self.prefix}_{len(self.state['shards']):06d}.bin"
        path = os.path.join(self.out, name)
        write_shard(path, self.buffer[:self.fill], tokenizer_sha256=self.tokenizer_sha256)
        self.state["shards"].append({"name": name, "tokens": self.fill, "sha256": sha256_file(path),
                                     "start": self.state["next"]})
        self.state["next"] = next_position
        self.fill = 0
        self.on_shard()


def tokenize_split(encode, files, out, prefix, state, shard_tokens, tokenizer_sha256, save, progress):
    """Tokenizes files into prefix_*.bin shards, from state['next'] on; encode maps blocks to tokens in order."""
    file_index, row, skip = state["next"]
    writer = ShardWriter(out, prefix, state, shard_tokens, tokenizer_sha256, save)
    blocks = list(blocks_from(files, (file_index, row)))
    for (i, block), (tokens, lengths) in zip(blocks, encode(blocks)):
        writer.add(tokens, lengths, i, block.first_row + block.start, start=skip)
        skip = 0  # only the first block resumes inside a document
        progress.update(block.stop - block.start)
    writer.flush(next_position=[len(files), 0, 0])
    state["done"] = True
    save()


def intact_shards(out, state):
    """Keeps the leading shards whose files are intact (header, size and the sha256 recorded when each was
    written); resumes from the first one that is not."""
    for k, shard in enumerate(state["shards"]):
        path = os.path.join(out, shard["name"])
        try:
            problem = None if read_header(path) == shard["tokens"] else "incomplete"
        except ShardError:
            problem = "missing or incomplete"
        if problem is None and sha256_file(path) != shard["sha256"]:
            problem = "corrupt (its sha256 differs from the one tokenize.json recorded)"
        if problem:
            print(f"{path}: {problem}; tokenizing again from there")
            state["next"], state["done"] = shard["start"], False
            del state["shards"][k:]
            return


def describe_inputs(files):
    """Each input file by name, size and sha256 (training logs name the text a run's shards came from)."""
    return [{"name": os.path.basename(path), "bytes": os.path.getsize(path), "sha256": sha256_file(path)}
            for path in files]


def without_input_sha256(config):
    return {**config, "inputs": {split: [{k: v for k, v in i.items() if k != "sha256"} for i in inputs]
                                 for split, inputs in config["inputs"].items()}}


def count_rows(files):
    return sum(block.stop - block.start for path in files for block in file_blocks(path))


def tokenize_corpus(corpus, tokenizer, out, shard_tokens=100_000_000, workers=None, force=False,
                    max_train_files=None):
    """Tokenizes a corpus folder into out/train_*.bin and out/val_*.bin; returns the manifest."""
    tok = load_tokenizer(tokenizer)
    if tok.vocab_size > MAX_VOCAB:
        raise TokenizerError(f"{tokenizer}: vocab size {tok.vocab_size} does not fit uint16 shards (max {MAX_VOCAB})")
    if shard_tokens < 1:
        raise ValueError(f"--shard-tokens must be positive, got {shard_tokens}")
    if max_train_files is not None and max_train_files < 1:
        raise ValueError(f"--max-train-files must be positive, got {max_train_files}")
    train_files, val_file = corpus_files(corpus, max_train_files)
    splits = {"train": train_files, "val": [val_file]}
    rows = {split: count_rows(files) for split, files in splits.items()}  # also checks every file opens
    tokenizer_sha256 = sha256_file(os.path.join(tokenizer, "tokenizer.json"))
    config = {"format_version": FORMAT_VERSION, "tokenizer_sha256": tokenizer_sha256,
              "bos_id": tok.bos_id, "vocab_size": tok.vocab_size, "shard_tokens": shard_tokens,
              "inputs": {split: describe_inputs(files) for split, files in splits.items()}}
    manifest_path = os.path.join(out, MANIFEST)
    manifest, unsaved = None, False
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        if manifest["config"] == without_input_sha256(config):  # made before inputs carried their sha256
            manifest["config"], unsaved = config, True
        if manifest["config"] != config and not force:
            raise ValueError(f"{out} holds shards from other inputs or settings (see {manifest_path}); choose "
                             "another --out, or pass --force to replace them")
        if manifest["config"] != config:
            manifest = None
    if manifest is None:
        os.makedirs(out, exist_ok=True)
        stale = sorted(name for name in os.listdir(out) if name.endswith(".bin") and name.startswith(tuple(splits)))
        if stale and not force and not os.path.exists(manifest_path):
            raise ValueError(f"{out} holds shards that no {MANIFEST} describes ({stale[0]}, ...); choose another "
                             "--out, or pass --force to replace them")
        for name in stale:  # --force or a fresh folder: no stale shard may survive
            os.remove(os.path.join(out, name))
        manifest = {"config": config, "splits": {s: {"shards": [], "next": [0, 0, 0], "done": False} for s in splits}}
        unsaved = True  # before the first shard: a folder with shards and no manifest is never one of ours

    def save():
        tmp = manifest_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=1)
        os.replace(tmp, manifest_path)

    if unsaved:
        save()
    workers = workers or os.cpu_count()
    if workers > 1:  # processes, not threads: tiktoken holds the GIL while it encodes (threads gained nothing)
        pool = multiprocessing.get_context("spawn").Pool(workers, _start_worker, (tokenizer,))
        encode = lambda blocks: pool.imap(_encode_in_worker, blocks)
    else:
        pool, encode = None, lambda blocks: (encode_block(tok, block) for _, block in blocks)
    try:
        for split, files in splits.items():
            state = manifest["splits"][split]
            intact_shards(out, state)
            if state["done"]:
                print(f"{split}: {len(state['shards'])} shards already complete")
                continue
            t0 = time.perf_counter()
            with tqdm(total=rows[split], unit="doc", desc=f"tokenizing {split}", dynamic_ncols=True) as progress:
                file_index, row, _ = state["next"]
                progress.update(count_rows(files[:file_index]) + row)
                tokenize_split(encode, files, out, split, state, shard_tokens, tokenizer_sha256, save, progress)
            num_tokens = sum(shard["tokens"] for shard in state["shards"])
            print(f"{split}: {num_tokens:,} tokens in {len(state['shards'])} shards, {time.perf_counter() - t0:.1f}s")
    finally:
        if pool is not None:
            pool.terminate()
    check_overlap(out, manifest)
    return manifest


def check_overlap(out, manifest):
    """overlap.json for the shards in the manifest (measured again only when the shards changed); prints it."""
    listed = lambda split: [{"name": s["name"], "sha256": s["sha256"]} for s in manifest["splits"][split]["shards"]]
    overlap.ensure(out, listed("train"), listed("val"))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m data.tokenize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="corpus folder (parquet or .txt; the last file is val)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder (python -m data.tokenizer train)")
    parser.add_argument("--out", required=True, help="folder for the .bin shards")
    parser.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard")
    parser.add_argument("--workers", type=int, default=None, help="threads (default: all cores)")
    parser.add_argument("--force", action="store_true", help="replace shards made from other inputs")
    parser.add_argument("--max-train-files", type=int, default=None, help="the first N train files only (default: "
                        "all)")
    args = parser.parse_args(argv)
    try:
        tokenize_corpus(args.corpus, args.tokenizer, args.out, args.shard_tokens, args.workers, args.force,
                        args.max_train_files)
    except (TokenizerError, CorpusError, ShardError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
