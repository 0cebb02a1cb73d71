"""Data pipeline speed: tokenizer training and tokenization on a corpus folder.

    python -m bench.data --corpus ../shared/corpus            # the shared 99 M-character corpus
    python -m bench.data --corpus data/raw/shakespeare --repeats 5 --no-record

Goals on a 2-core machine: training a 32k tokenizer on the whole corpus in at most 10 s, and tokenizing it
(parquet in, shards out) at 15 M chars/s or more. Each figure is the median of --repeats runs.
"""

import argparse
import io
import os
import statistics
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout

from importlib.metadata import version

from bench.record import record
from data.corpus import corpus_files, iter_documents
from data.tokenize import tokenize_corpus
from data.tokenizer import GPT4_SPELLING, SPLIT_PATTERN, Tokenizer, save_tokenizer, train_tokenizer


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to bench/results.md")
    args = parser.parse_args()

    train_files, val_file = corpus_files(args.corpus)
    every_file = train_files + [val_file]
    chars = sum(map(len, iter_documents(every_file)))
    lines = [f"corpus {args.corpus}: {len(every_file)} files, {chars:,} characters; {os.cpu_count()} cores; "
             f"rustbpe {version('rustbpe')}, tiktoken {version('tiktoken')}"]
    print(lines[0])

    # Tokenizer training: the whole corpus, every character of every file (no per-document cap), read included.
    result = {}
    train_s, train_runs = median_time(lambda: result.update(tok=train_tokenizer(iter_documents(every_file),
                                                                                args.vocab_size)), args.repeats)
    lines.append(f"tokenizer training ({args.vocab_size} vocab, {chars:,} chars): median {train_s:.2f} s "
                 f"({chars / train_s / 1e6:.1f} M chars/s); runs {', '.join(f'{t:.2f}' for t in train_runs)} s")
    print(lines[-1])

    # Tokenization: the library call behind `python -m data.tokenize`, default settings, into a fresh folder.
    with tempfile.TemporaryDirectory() as tmp:
        save_tokenizer(result["tok"], os.path.join(tmp, "tok"))
        runs = iter(range(args.repeats))

        def tokenize_once():
            with redirect_stderr(io.StringIO()), redirect_stdout(io.StringIO()):  # no progress bars in the figures
                tokenize_corpus(args.corpus, os.path.join(tmp, "tok"), os.path.join(tmp, f"out{next(runs)}"))
        tok_s, tok_runs = median_time(tokenize_once, args.repeats)
    lines.append(f"tokenization (parquet -> shards, all {len(every_file)} files, {os.cpu_count()} workers): median "
                 f"{tok_s:.2f} s ({chars / tok_s / 1e6:.1f} M chars/s); runs {', '.join(f'{t:.2f}' for t in tok_runs)} s")
    print(lines[-1])

    # Split pattern: one process encoding the first train file with each spelling of the pattern, the two
    # interleaved (order alternating) so that warm-up and machine noise fall on both alike.
    documents = list(iter_documents(train_files[:1]))
    doc_chars = sum(map(len, documents))
    tok = result["tok"]
    encoders = {name: Tokenizer(tok.ranks, pattern, tok.special_tokens, tok.bos_token)
                for name, pattern in (("ours", SPLIT_PATTERN), ("possessive", GPT4_SPELLING))}
    times = {name: [] for name in encoders}
    for repeat in range(2 * args.repeats + 1):
        for name in sorted(encoders, reverse=repeat % 2 == 1):
            t0 = time.perf_counter()
            for doc in documents:
                encoders[name].encode_to_numpy(doc)
            times[name].append(time.perf_counter() - t0)
    speeds = {name: doc_chars / statistics.median(t) / 1e6 for name, t in times.items()}
    lines.append(f"split pattern, 1 process, {doc_chars:,} chars, median of {2 * args.repeats + 1} interleaved: ours "
                 f"{speeds['ours']:.1f} M chars/s, GPT-4's possessive spelling {speeds['possessive']:.1f} M chars/s "
                 f"({speeds['ours'] / speeds['possessive']:.2f}x)")
    print(lines[-1])

    if not args.no_record:
        software = f"rustbpe {version('rustbpe')}, tiktoken {version('tiktoken')}"
        raw = "\n".join(lines) + "\n"
        name = os.path.basename(os.path.normpath(args.corpus))
        record(f"tokenizer-train-{name}", f"{train_s:.2f} s for {chars / 1e6:.1f} M chars ({chars / train_s / 1e6:.1f} "
               f"M chars/s), vocab {args.vocab_size}, median of {args.repeats}", software, raw)
        path = record(f"tokenize-{name}", f"{chars / tok_s / 1e6:.1f} M chars/s ({tok_s:.2f} s for {chars / 1e6:.1f} "
                      f"M chars), median of {args.repeats}", software, raw)
        record(f"split-pattern-{name}", f"{speeds['ours'] / speeds['possessive']:.2f}x encode speed without possessive "
               f"quantifiers ({speeds['ours']:.1f} vs {speeds['possessive']:.1f} M chars/s, 1 process)", software, raw)
        print(f"appended to bench/results.md; raw output in {path}")


if __name__ == "__main__":
    main()
