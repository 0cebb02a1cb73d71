"""Val against train: how much of the validation text also stands in the training shards.

    python -m data.overlap --train 'data/tokens/x/train_*.bin' --val 'data/tokens/x/val_*.bin'

A val set the model has trained on measures memory, not language modelling. File hashes show only that no shard is
the same file; text can be copied under any hash. This finds long token n-grams (NGRAM tokens: 100-150 characters of
English) of the val tokens that also stand in the train shards. Every val n-gram is hashed, train n-grams at every
STRIDE-th position, so that a copied passage of NGRAM + STRIDE - 1 tokens or more is found wherever it starts (and a
shorter one often). The figure is the fraction of val tokens inside a shared n-gram: common phrases are far shorter
than NGRAM, so it counts copies (boilerplate such as licences, and contamination). The first VAL_TOKENS val tokens are
checked (every track scores fewer). data.tokenize runs it and writes overlap.json beside the shards, naming every
shard it read by sha256; train_gpt.py's data line carries it when those are the run's shards, and records refuse a
run above records.record's limit (records/README.md).
"""

import argparse
import glob
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from data.shards import ShardError, read_shard
from data.tokenizer import sha256_file

NGRAM = 32                # tokens an n-gram spans
STRIDE = 16               # train positions hashed: one in STRIDE
VAL_TOKENS = 1 << 24      # val tokens checked (16.8 M; the tracks score at most 10.5 M)
CHUNK = 1 << 20           # positions hashed at a time (memory: CHUNK x 8 bytes a few times)
FILE = "overlap.json"
MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # a polynomial hash mod 2^64 of the token ids; collisions are ~n^2/2^64


def hash_ngrams(tokens, starts):
    """The hash of the NGRAM tokens from each of `starts` (wrapping uint64 arithmetic)."""
    h = np.zeros(len(starts), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(NGRAM):
            h = h * MULTIPLIER + tokens[starts + j].astype(np.uint64)
    return h


def chunked_hashes(tokens, stride):
    """Hashes of the n-grams of tokens at every stride-th position, CHUNK positions at a time."""
    positions = np.arange(0, max(len(tokens) - NGRAM + 1, 0), stride)
    return np.concatenate([hash_ngrams(tokens, positions[i:i + CHUNK]) for i in range(0, len(positions), CHUNK)]
                          or [np.zeros(0, dtype=np.uint64)])


def sorted_unique(values):
    """np.unique by a sort (numpy 2.4's np.unique and np.isin on 10^7 uint64 take 20-40 s; a sort takes 1.5 s)."""
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if len(values) else values


def contained(queries, sorted_set):
    """Which of queries stand in sorted_set (a binary search each; sorted queries keep it in cache)."""
    if not len(sorted_set):
        return np.zeros(len(queries), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_set, queries), len(sorted_set) - 1)
    return sorted_set[at] == queries


def shared_in_shard(path, val_set):
    """The val n-gram hashes (of the sorted val_set) that the train shard at path also holds, sorted."""
    found = sorted_unique(chunked_hashes(read_shard(path), STRIDE))
    return found[contained(found, val_set)]


def covered_fraction(val_hashes, shared, num_tokens):
    """The fraction of the checked val tokens that lie inside an n-gram the train shards share."""
    starts = np.nonzero(contained(val_hashes, shared))[0]
    covered = np.zeros(num_tokens, dtype=bool)
    for j in range(NGRAM):
        covered[starts + j] = True
    return float(covered.mean()) if num_tokens else 0.0


def val_tokens(val_paths):
    """The first VAL_TOKENS tokens of the val shards, in order."""
    pieces, total = [], 0
    for path in val_paths:
        piece = np.asarray(read_shard(path)[:VAL_TOKENS - total])
        pieces.append(piece)
        total += len(piece)
        if total >= VAL_TOKENS:
            break
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)


def identities(paths):
    return [{"name": os.path.basename(p), "sha256": sha256_file(p)} for p in paths]


def measure(train_paths, val_paths, workers=None, progress=True, known=None):
    """The overlap of the val shards with the train shards, as overlap.json holds it. known: (train, val) shard
    identities ([{name, sha256}]) already computed, so that the shards are not read again to hash them."""
    val = val_tokens(val_paths)
    val_hashes = chunked_hashes(val, 1)
    val_set = sorted_unique(val_hashes)
    shared = []
    # numpy lets go of the GIL in its array loops: threads overlap the shards' reads and hashing
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool, \
            tqdm(total=len(train_paths), unit="shard", desc="val/train overlap", disable=not progress) as bar:
        for found in pool.map(lambda path: shared_in_shard(path, val_set), train_paths):
            shared.append(found)
            bar.update(1)
    shared = sorted_unique(np.concatenate(shared)) if shared else np.zeros(0, dtype=np.uint64)
    return {"ngram": NGRAM, "stride": STRIDE, "val_tokens_checked": int(len(val)),
            "shared_ngrams": int(len(shared)), "fraction": covered_fraction(val_hashes, shared, len(val)),
            "train_shards": known[0] if known else identities(train_paths),
            "val_shards": known[1] if known else identities(val_paths)}


def summary(result):
    return (f"val/train overlap: {result['fraction']:.4%} of {result['val_tokens_checked']:,} val tokens lie in "
            f"{result['ngram']}-token n-grams that the train shards also hold ({result['shared_ngrams']:,} shared)")


def write(folder, result):
    path = os.path.join(folder, FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    return path


def recorded(folder, train_shards, val_shards):
    """overlap.json of folder when it covers exactly these shards ([{name, sha256}] each), else None."""
    try:
        with open(os.path.join(folder, FILE)) as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None
    same = result.get("train_shards") == train_shards and result.get("val_shards") == val_shards
    return result if same else None


def ensure(folder, train_shards, val_shards):
    """overlap.json of the shards in folder named by train_shards and val_shards ([{name, sha256}], as a manifest
    lists them): measured only when it does not cover exactly these; its summary printed."""
    result = recorded(folder, train_shards, val_shards)
    if result is None:
        paths = lambda shards: [os.path.join(folder, s["name"]) for s in shards]
        result = measure(paths(train_shards), paths(val_shards), known=(train_shards, val_shards))
        write(folder, result)
    print(summary(result))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m data.overlap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="glob of the train shards")
    parser.add_argument("--val", required=True, help="glob of the val shards")
    parser.add_argument("--out", default=None, help="folder for overlap.json (default: the train shards' folder)")
    args = parser.parse_args(argv)
    train_paths, val_paths = sorted(glob.glob(args.train)), sorted(glob.glob(args.val))
    if not train_paths or not val_paths:
        print(f"error: no shards match {args.train if not train_paths else args.val}; tokenize or download first",
              file=sys.stderr)
        return 2
    try:
        result = measure(train_paths, val_paths)
    except ShardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(result))
    print(f"wrote {write(args.out or os.path.dirname(train_paths[0]), result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
