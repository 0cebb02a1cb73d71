"""BPE tokenizer: trained with rustbpe, encoded with tiktoken, stored as plain data.

    python -m data.tokenizer train --corpus data/climbmix --out data/tokenizer        # 32k vocab
    python -m data.tokenizer report --tokenizer data/tokenizer --corpus data/climbmix --gpt2 gpt2.tiktoken
    python -m data.tokenizer import-gpt2 --out data/tokenizer_gpt2 [--ranks gpt2.tiktoken]

A tokenizer folder holds (never a pickle):
    tokenizer.tiktoken   the merge ranks, one "base64(token bytes) rank" line per token (tiktoken's format)
    tokenizer.json       split pattern, special tokens, BOS token, vocab size, sha256 of the ranks file
    token_bytes.npy      int32 per token id: its length in UTF-8 bytes, 0 for special tokens (for bits per byte)
    report.json          compression (bytes per token) on the validation file, beside GPT-2 when given
"""

import argparse
import base64
import hashlib
import json
import os
import shutil
import sys
import time

import numpy as np
import tiktoken

from data.corpus import CorpusError, corpus_files, iter_documents

# GPT-4's split pattern with numbers in groups of 1-2 (not 1-3: slightly better for small vocabularies).
# GPT-4 spells two quantifiers possessive (`?+`, `++`); that never changes a match here, because the classes
# around them are disjoint, and the plain spelling encodes faster (bench/results.md, split-pattern rows).
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                 r"""\s*[\r\n]|\s+(?!\S)|\s+""")
GPT4_SPELLING = SPLIT_PATTERN.replace(r"]?\p{L}+", r"]?+\p{L}+").replace(r"\p{N}]+[\r\n]*", r"\p{N}]++[\r\n]*")
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
BOS = "<|bos|>"
NUM_SPECIAL_SLOTS = 8  # <|bos|> plus 7 reserved ids, so later special tokens do not change the vocab size
# The special tokens after the merge ranks, by set: "reserved" (the default), or nanochat's nine ("chat": BOS and the
# conversation and tool delimiters its fine-tuning uses), whose 32,768 ids then hold nanochat's 32,759 merges.
SPECIAL_SETS = {
    "reserved": [BOS] + [f"<|reserved_{i}|>" for i in range(1, NUM_SPECIAL_SLOTS)],
    "chat": [BOS, "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>", "<|python_start|>",
             "<|python_end|>", "<|output_start|>", "<|output_end|>"],
}
DEFAULT_VOCAB_SIZE = 32768
MAX_VOCAB_SIZE = 1 << 16  # token shards store uint16
FORMAT_VERSION = 1


class TokenizerError(ValueError):
    """Bad tokenizer arguments or files; the message says what to do."""


# -----------------------------------------------------------------------------
# The tokenizer as used everywhere else

class Tokenizer:
    """A tiktoken encoding plus what training and evaluation need: the BOS id and per-token byte lengths."""

    def __init__(self, ranks, pattern, special_tokens, bos_token, name="tokenizer"):
        self.ranks, self.pattern, self.special_tokens = ranks, pattern, dict(special_tokens)
        self.vocab_size = len(ranks) + len(special_tokens)
        if bos_token not in special_tokens:
            raise TokenizerError(f"BOS token {bos_token!r} is not among the special tokens {list(special_tokens)}")
        self.bos_token, self.bos_id = bos_token, special_tokens[bos_token]
        self.enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special_tokens,
                                     explicit_n_vocab=self.vocab_size)

    def encode(self, text, bos=False):
        """Token ids of a text; special-token strings in the text are encoded as plain text, never as specials."""
        ids = self.enc.encode_ordinary(text)
        return [self.bos_id] + ids if bos else ids

    def encode_to_numpy(self, text):
        """Like encode, as a uint32 array, without building a Python list (the fast path for tokenization)."""
        return self.enc.encode_to_numpy(text, disallowed_special=())

    def decode(self, ids):
        return self.enc.decode(list(ids))

    def token_bytes(self):
        """int32 array over token ids: UTF-8 byte length of each token, 0 for special tokens."""
        lengths = np.zeros(self.vocab_size, dtype=np.int32)
        for token, rank in self.ranks.items():
            lengths[rank] = len(token)
        return lengths


def save_tokenizer(tok, folder):
    """Writes the tokenizer files into folder (created, or replaced file by file)."""
    os.makedirs(folder, exist_ok=True)
    ranks_path = os.path.join(folder, "tokenizer.tiktoken")
    with open(ranks_path, "wb") as f:
        for token, rank in sorted(tok.ranks.items(), key=lambda item: item[1]):
            f.write(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
    np.save(os.path.join(folder, "token_bytes.npy"), tok.token_bytes(), allow_pickle=False)
    meta = {"format_version": FORMAT_VERSION, "name": tok.enc.name, "pattern": tok.pattern,
            "special_tokens": tok.special_tokens, "bos_token": tok.bos_token, "vocab_size": tok.vocab_size,
            "ranks_sha256": sha256_file(ranks_path)}
    with open(os.path.join(folder, "tokenizer.json"), "w") as f:
        json.dump(meta, f, indent=2)


def load_tokenizer(folder):
    """Loads a tokenizer folder written by save_tokenizer, checking that its files agree."""
    meta_path = os.path.join(folder, "tokenizer.json")
    ranks_path = os.path.join(folder, "tokenizer.tiktoken")
    for path in (meta_path, ranks_path):
        if not os.path.isfile(path):
            raise TokenizerError(f"{path}: missing; train a tokenizer first (python -m data.tokenizer train)")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format_version") != FORMAT_VERSION:
        raise TokenizerError(f"{meta_path}: format_version {meta.get('format_version')} is not {FORMAT_VERSION}")
    if sha256_file(ranks_path) != meta["ranks_sha256"]:
        raise TokenizerError(f"{ranks_path}: sha256 does not match {meta_path}; the tokenizer files were changed "
                             "or mixed: retrain it")
    tok = Tokenizer(read_ranks(ranks_path), meta["pattern"], meta["special_tokens"], meta["bos_token"], meta["name"])
    if tok.vocab_size != meta["vocab_size"]:
        raise TokenizerError(f"{folder}: vocab size {tok.vocab_size} does not match tokenizer.json's "
                             f"{meta['vocab_size']}")
    return tok


def read_ranks(path):
    """Reads tiktoken's ranks format: one 'base64(token) rank' line per token."""
    ranks = {}
    with open(path, "rb") as f:
        for line_number, line in enumerate(f, 1):
            if line.strip():
                try:
                    token, rank = line.split()
                    ranks[base64.b64decode(token, validate=True)] = int(rank)
                except ValueError:
                    raise TokenizerError(f"{path}:{line_number}: not a 'base64 rank' line") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{path}: ranks are not exactly 0..{len(ranks) - 1}")
    return ranks


def sha256_file(path, chunk_size=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# -----------------------------------------------------------------------------
# Training

def check_vocab_size(vocab_size, specials="reserved"):
    """Rejects vocab sizes rustbpe cannot train (it panics under 256, which no `except Exception` catches)."""
    slots = len(SPECIAL_SETS[specials])
    smallest = 256 + slots
    if not isinstance(vocab_size, int) or not smallest <= vocab_size <= MAX_VOCAB_SIZE:
        raise TokenizerError(f"vocab size {vocab_size} must be an integer in [{smallest}, {MAX_VOCAB_SIZE}]: 256 "
                             f"byte tokens + {slots} special slots at least, and uint16 shards at most")


def special_tokens_for(num_ranks, specials="reserved"):
    """A set of special tokens (SPECIAL_SETS), <|bos|> first, numbered after the merge ranks."""
    return {name: num_ranks + i for i, name in enumerate(SPECIAL_SETS[specials])}


def byte_tokenizer(pattern=SPLIT_PATTERN):
    """The 256 byte values and no merges: a tokenizer that needs no training (nor rustbpe), for tests and
    benchmarks on machines without it."""
    ranks = {bytes([i]): i for i in range(256)}
    return Tokenizer(ranks, pattern, special_tokens_for(len(ranks)), BOS, name="bytes")


def train_tokenizer(documents, vocab_size=DEFAULT_VOCAB_SIZE, pattern=SPLIT_PATTERN, specials="reserved"):
    """Trains BPE with rustbpe on an iterable of strings; returns a Tokenizer of exactly vocab_size ids, the last
    of them the special tokens of the set `specials`."""
    check_vocab_size(vocab_size, specials)
    import rustbpe
    num_ranks = vocab_size - len(SPECIAL_SETS[specials])
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(documents), num_ranks, pattern=pattern)
    ranks = {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}
    if len(ranks) != num_ranks:
        raise TokenizerError(f"the training text supports only {len(ranks)} merge ranks, fewer than the "
                             f"{num_ranks} asked for: give more text or a smaller vocab")
    return Tokenizer(ranks, pattern, special_tokens_for(len(ranks), specials), BOS, name=f"bpe{vocab_size}")


def gpt2_tokenizer(ranks_path=None):
    """GPT-2's tokenizer (<|endoftext|> = 50256 serves as BOS) from a ranks file, or from tiktoken's download."""
    if ranks_path is None:
        ranks = tiktoken.get_encoding("gpt2")._mergeable_ranks  # needs the network once
    else:
        ranks = read_ranks(ranks_path)
    if len(ranks) != 50256:
        raise TokenizerError(f"{ranks_path}: {len(ranks)} ranks, but GPT-2 has 50256; is this gpt2.tiktoken?")
    return Tokenizer(ranks, GPT2_SPLIT_PATTERN, {"<|endoftext|>": 50256}, "<|endoftext|>", name="gpt2")


# -----------------------------------------------------------------------------
# Compression report

def compression(tok, documents):
    """UTF-8 bytes per token over the documents (no BOS counted)."""
    num_bytes = num_tokens = 0
    for doc in documents:
        num_bytes += len(doc.encode("utf-8"))
        num_tokens += len(tok.encode_to_numpy(doc))
    return {"bytes": num_bytes, "tokens": num_tokens, "bytes_per_token": num_bytes / max(num_tokens, 1)}


def compression_report(tok, val_file, gpt2=None, max_chars=10_000_000):
    documents = list(iter_documents([val_file], max_chars=max_chars))
    report = {"val_file": os.path.basename(val_file), "chars": sum(map(len, documents)),
              "tokenizers": {tok.enc.name: compression(tok, documents)}}
    if gpt2 is not None:
        report["tokenizers"]["gpt2"] = compression(gpt2, documents)
    return report


def format_report(report):
    lines = [f"compression on {report['val_file']} ({report['chars']:,} chars):"]
    for name, row in report["tokenizers"].items():
        lines.append(f"  {name:>10}: {row['bytes_per_token']:.3f} bytes/token ({row['tokens']:,} tokens)")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# Command line

TOKENIZER_FILES = {"tokenizer.json", "tokenizer.tiktoken", "token_bytes.npy", "report.json"}


def check_out_folder(out, force):
    """A tokenizer goes into a new folder, an empty one, or one that holds only a tokenizer's files (a finished one
    is replaced with --force; an interrupted one, without tokenizer.json, always): never into a folder that holds
    anything else, which `train` would replace whole."""
    if os.path.isfile(out):
        raise TokenizerError(f"{out}: a file, not a folder; give a new or empty folder for the tokenizer")
    others = sorted(set(os.listdir(out)) - TOKENIZER_FILES) if os.path.isdir(out) else []
    if others:
        raise TokenizerError(f"{out}: holds other things than a tokenizer ({others[0]}{', ...' if others[1:] else ''}); "
                             "give a new or empty folder for the tokenizer")
    if os.path.exists(os.path.join(out, "tokenizer.json")) and not force:
        raise TokenizerError(f"{out}: a tokenizer is already there; pass --force to replace it")


def cmd_train(args):
    check_vocab_size(args.vocab_size, args.special_tokens)
    if args.max_train_files is not None and args.max_train_files < 1:
        raise TokenizerError(f"--max-train-files must be positive, got {args.max_train_files}")
    train_files, val_file = corpus_files(args.corpus, args.max_train_files)
    gpt2 = gpt2_tokenizer(args.gpt2) if args.gpt2 else None  # fail on a bad GPT-2 file before training
    check_out_folder(args.out, args.force)
    fed = [0]

    def documents():
        for doc in iter_documents(train_files, max_chars=args.max_chars, doc_cap=args.doc_cap):
            fed[0] += len(doc)
            yield doc

    print(f"training a {args.vocab_size}-token BPE on up to {args.max_chars:,} chars of {len(train_files)} files")
    t0 = time.perf_counter()
    tok = train_tokenizer(documents(), args.vocab_size, specials=args.special_tokens)
    train_s = time.perf_counter() - t0
    print(f"trained on {fed[0]:,} chars in {train_s:.1f}s ({fed[0] / train_s / 1e6:.1f} M chars/s)")
    staging = args.out.rstrip("/") + ".tmp"  # build beside, then swap in: a crash never leaves half a tokenizer
    shutil.rmtree(staging, ignore_errors=True)
    save_tokenizer(tok, staging)
    report = compression_report(tok, val_file, gpt2)
    report.update(train_chars=fed[0], train_seconds=round(train_s, 2), vocab_size=tok.vocab_size)
    with open(os.path.join(staging, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    os.replace(staging, args.out)
    print(format_report(report))
    print(f"saved to {args.out}")


def cmd_report(args):
    tok = load_tokenizer(args.tokenizer)
    _, val_file = corpus_files(args.corpus)
    gpt2 = gpt2_tokenizer(args.gpt2) if args.gpt2 else None
    print(format_report(compression_report(tok, val_file, gpt2, args.max_chars)))


def cmd_import_gpt2(args):
    check_out_folder(args.out, args.force)
    save_tokenizer(gpt2_tokenizer(args.ranks), args.out)
    print(f"saved GPT-2's tokenizer to {args.out}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m data.tokenizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a BPE tokenizer on a corpus folder's train files")
    train.add_argument("--corpus", required=True, help="corpus folder (parquet or .txt; the last file is val)")
    train.add_argument("--out", required=True, help="tokenizer folder to write")
    train.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    train.add_argument("--max-chars", type=int, default=2_000_000_000, help="train on the first N characters")
    train.add_argument("--doc-cap", type=int, default=10_000, help="use at most N characters of each document (a "
                       ".txt file: pieces of N characters)")
    train.add_argument("--max-train-files", type=int, default=None, help="train on the first N train files only "
                       "(default: all)")
    train.add_argument("--gpt2", metavar="RANKS", help="gpt2.tiktoken file, to compare compression with GPT-2")
    train.add_argument("--special-tokens", choices=sorted(SPECIAL_SETS), default="reserved",
                       help="the special tokens after the merges: <|bos|> and 7 reserved ids, or nanochat's nine "
                            "(chat)")
    train.add_argument("--force", action="store_true", help="replace an existing tokenizer")
    train.set_defaults(run=cmd_train)
    report = commands.add_parser("report", help="bytes per token on a corpus's validation file")
    report.add_argument("--tokenizer", required=True)
    report.add_argument("--corpus", required=True)
    report.add_argument("--gpt2", metavar="RANKS", help="gpt2.tiktoken file, to compare with GPT-2")
    report.add_argument("--max-chars", type=int, default=10_000_000)
    report.set_defaults(run=cmd_report)
    gpt2 = commands.add_parser("import-gpt2", help="write GPT-2's tokenizer as a tokenizer folder")
    gpt2.add_argument("--out", required=True)
    gpt2.add_argument("--ranks", help="gpt2.tiktoken file (default: tiktoken's download, needs the network)")
    gpt2.add_argument("--force", action="store_true")
    gpt2.set_defaults(run=cmd_import_gpt2)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (TokenizerError, CorpusError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
