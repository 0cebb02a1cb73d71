"""Shared fixtures: a small synthetic corpus in the hub's parquet layout, and a 512-token tokenizer on it."""

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

WORDS = ("the of and to in is was he for it with as his on be at by had are but from or have an they which one "
         "you were her all she there would their we him been has when who will more no if out so said what up its "
         "about into than them can only other new some could time these two may then do first any my now such like "
         "café naïve über straße Москва 東京 don't it's we'll they've I'm").split()


def make_documents(count, seed, mean_words=60):
    """Deterministic pseudo-English documents with punctuation, numbers, newlines and non-ASCII words."""
    rng = random.Random(seed)
    documents = []
    for _ in range(count):
        words = []
        for _ in range(max(1, int(rng.expovariate(1 / mean_words)))):
            word = rng.choice(WORDS)
            roll = rng.random()
            if roll < 0.05:
                word = str(rng.randint(0, 99999))
            elif roll < 0.10:
                word += rng.choice([".", ",", "!", "?", ";", ":\n", ".\n\n"])
            words.append(word)
        documents.append(" ".join(words))
    return documents


def write_corpus(folder, files=4, docs_per_file=200, row_group_size=50, seed=0):
    """A corpus folder: files parquet shards with a text column; the last one is the validation file."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        table = pa.table({"text": make_documents(docs_per_file, seed=seed * 1000 + i)})
        pq.write_table(table, folder / f"shard_{i:05d}.parquet", row_group_size=row_group_size)
    return folder


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def tokenizer_dir(corpus, tmp_path_factory):
    from data.tokenizer import main
    out = tmp_path_factory.mktemp("tok") / "tok512"
    main(["train", "--corpus", str(corpus), "--out", str(out), "--vocab-size", "512"])
    return out
