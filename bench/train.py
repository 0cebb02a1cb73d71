"""Training speed: tokens/s, step time, MFU, peak memory and compile time of train_gpt.py on one device.

    python -m bench.train --preset=tiny                                        # after bash speedrun.sh (CPU)
    python -m bench.train --synthetic --depth=12 --model_dim=768 --vocab=50257 --seq_len=2048 --device_batch=16 \\
        --total_batch_tokens=32768                                             # GPT-2 small class, random tokens
    python -m bench.train --synthetic --depth=24 --vocab=32768 --fp8 --steps=30

Options other than the ones below are train_gpt.py's (--key=value). --synthetic trains on random tokens (BOS
every 1,000 tokens) so that no data is needed: the speed does not depend on the text. The first --warmup steps
are untimed (compile, allocator); the next --steps are timed one by one, with device synchronization.
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

import train_gpt
from bench.record import record
from data.shards import write_shard


def synthetic_data(folder, vocab, tokens=4_000_000, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, vocab - 1, size=tokens)
    data[::1000] = vocab - 1  # BOS
    for split in ("train", "val"):
        write_shard(os.path.join(folder, f"{split}_000000.bin"), data)
    return {"vocab_size": vocab, "bos_id": vocab - 1, "token_bytes": torch.ones(vocab, dtype=torch.long), "sha256": ""}


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", action="store_true", help="random tokens instead of the preset's data")
    parser.add_argument("--vocab", type=int, default=32768, help="vocab size with --synthetic")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--no-record", action="store_true")
    args, rest = parser.parse_known_args()
    config = train_gpt.parse_args(rest)
    device = train_gpt.resolve_device(config)
    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic:
            tokenizer = synthetic_data(tmp, args.vocab)
            config.train_files, config.val_files = f"{tmp}/train_*.bin", f"{tmp}/val_*.bin"
        else:
            tokenizer = train_gpt.load_tokenizer_info(config.tokenizer)
        train_gpt.check_config(config, 1)
        trainer = train_gpt.Trainer(config, tokenizer, 0, 1, device)
        num_steps = args.warmup + args.steps
        times = []
        for step in range(num_steps):
            train_gpt.synchronize(device)
            t0 = time.perf_counter()
            loss, _ = trainer.step(step, num_steps)
            loss.item()
            train_gpt.synchronize(device)
            times.append(time.perf_counter() - t0)
    timed = times[args.warmup:]
    step_s = statistics.median(timed)
    tok_per_s = config.total_batch_tokens / step_s
    flops = train_gpt.flops_per_token(config, tokenizer["vocab_size"])
    peak = train_gpt.peak_flops(config, device)
    mfu = flops * tok_per_s / peak if peak else None
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    dim, heads, _ = train_gpt.derived(config)
    shape = (f"depth {config.depth}, width {dim}, {heads} heads, seq {config.seq_len}, vocab {tokenizer['vocab_size']}, "
             f"batch {config.total_batch_tokens:,} tokens ({config.device_batch} rows/pass), fp8 {trainer.fp8}, "
             f"compile {trainer.forward is not trainer.model}")
    line = (f"{shape}: {tok_per_s:,.0f} tok/s, step {1000 * step_s:.1f} ms (median of {len(timed)}; min "
            f"{1000 * min(timed):.1f}), MFU {f'{100 * mfu:.1f}%' if mfu else 'n/a'} of {peak or 0:.4g} FLOP/s, "
            f"{flops:,} FLOPs/token, peak memory {f'{memory:.1f} GiB' if memory else 'n/a'}, first step "
            f"(compile) {times[0]:.1f} s, device {train_gpt.environment(device, 1)['gpu'] or 'cpu'}")
    print(line)
    if not args.no_record:
        figure = f"{tok_per_s:,.0f} tok/s, MFU {f'{100 * mfu:.1f}%' if mfu else 'n/a'}, compile {times[0]:.0f} s; {shape}"
        print(f"raw output in {record('train-throughput', figure, f'torch {torch.__version__}', line + chr(10))}")


if __name__ == "__main__":
    main()
