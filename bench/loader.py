"""Token usage of the training loader: the fraction of the training tokens that are targets once per epoch.

    python -m bench.loader --preset=tiny                                         # the embedded sample, seq 128
    python -m bench.loader --train_files='DIR/train_*.bin' --tokenizer=TOKENIZER --seq_len=2048

Options are train_gpt.py's (--key=value). Beside the loader's own figure (rows are consecutive slices), two
layouts that start every row at a BOS, counted on the same shards for comparison: the earlier loader's (a row
at the first BOS after the previous row's end) and best-fit packing of whole documents from a 1,000-document
buffer, a document that fits nowhere cropped to fill the row and its rest dropped.
"""

import argparse
import bisect

import numpy as np
import torch

import train_gpt
from bench.record import record
from data.shards import read_shard
from harness.config import parse_args
from harness.data import DataLoader, load_tokenizer_info


def document_lengths(tokens, bos_id):
    starts = np.flatnonzero(tokens == bos_id)
    return np.diff(np.append(starts, len(tokens))), starts


def bos_aligned_targets(tokens, bos_id, row):
    """Targets of the earlier loader: each row at the first BOS at or after the end of the previous one."""
    rows, end = 0, 0
    for start in document_lengths(tokens, bos_id)[1]:
        if start >= end and start + row <= len(tokens):
            rows, end = rows + 1, start + row
    return rows * (row - 1)


def best_fit_targets(tokens, bos_id, row, buffer_docs=1000):
    """Targets of best-fit packing with cropping: whole documents into rows that each start at a BOS."""
    lengths, _ = document_lengths(tokens, bos_id)
    pending, buffer, targets = iter(lengths.tolist()), [], 0
    while True:
        buffer += [n for _, n in zip(range(buffer_docs - len(buffer)), pending)]
        buffer.sort()
        if not buffer:
            return targets
        space = row
        while space and buffer:
            i = bisect.bisect_right(buffer, space) - 1
            if i >= 0:
                space -= buffer.pop(i)
            else:  # nothing fits: the shortest document is cropped to fill the row, and its rest dropped
                buffer.pop(0)
                space = 0
        if not space:
            targets += row - 1


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.loader", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-record", action="store_true")
    args, rest = parser.parse_known_args()
    config = parse_args(train_gpt.Config, train_gpt.PRESETS, rest)
    tokenizer = load_tokenizer_info(config.tokenizer)
    loader = DataLoader(config.train_files, config.seq_len, 1, 0, 1, 0, torch.device("cpu"), tokenizer["vocab_size"])
    total = sum(loader.shard_tokens)
    row = config.seq_len + 1
    bos_aligned = best_fit = 0
    lengths = []
    for path in loader.files:
        tokens = np.asarray(read_shard(path))
        bos_aligned += bos_aligned_targets(tokens, tokenizer["bos_id"], row)
        best_fit += best_fit_targets(tokens, tokenizer["bos_id"], row)
        lengths.append(document_lengths(tokens, tokenizer["bos_id"])[0])
    lengths = np.concatenate(lengths)
    line = (f"{config.train_files}, seq_len {config.seq_len}: {total:,} tokens, {len(lengths):,} documents (median "
            f"{int(np.median(lengths)):,} tokens, {100 * (lengths > row).mean():.1f}% longer than a row, holding "
            f"{100 * lengths[lengths > row].sum() / total:.1f}% of the tokens); targets once per epoch: slices (the "
            f"loader) {100 * loader.fraction_used:.3f}%, earlier BOS-aligned rows {100 * bos_aligned / total:.1f}%, "
            f"best-fit packing with cropping {100 * best_fit / total:.1f}%")
    print(line)
    if not args.no_record:
        figure = (f"{100 * loader.fraction_used:.3f}% of {total:,} tokens used by the loader at seq_len "
                  f"{config.seq_len} (BOS-aligned rows {100 * bos_aligned / total:.1f}%, best-fit with cropping "
                  f"{100 * best_fit / total:.1f}%)")
        print(f"raw output: {record('loader-token-usage', figure, f'numpy {np.__version__}', line + chr(10))}")


if __name__ == "__main__":
    main()
