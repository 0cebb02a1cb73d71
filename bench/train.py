"""Training speed: tokens/s, step time, MFU, peak memory and compile time of train_gpt.py on one device.

    python -m bench.train --preset=tiny                                        # after bash speedrun.sh (CPU)
    python -m bench.train --synthetic --depth=12 --model_dim=768 --vocab=50304 --seq_len=2048 --device_batch=16
                                                         # GPT-2-small shape, random tokens, 524,288 tokens a step
    python -m bench.train --synthetic --preset=gpt2-core --vocab=32768 --fp8 --steps=5

Options other than the ones below are train_gpt.py's (--key=value); the step is the config's whole
total_batch_tokens (default 524,288: the optimizer and gradient sync run once per step, as in training, so a
smaller total_batch_tokens overstates their share). --synthetic trains on random tokens (BOS every 1,000 tokens)
so that no data is needed: the speed does not depend on the text. The first --warmup steps are untimed (compile,
allocator); the next --steps are timed one by one, with device synchronization. Running out of memory is a
result ("does not fit"), printed and written to --json, not a crash.
"""

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time

import numpy as np
import torch

import train_gpt
from bench.record import record
from data.shards import write_shard
from harness.config import parse_args
from harness.data import load_tokenizer_info
from harness.device import resolve_device, synchronize
from harness.loop import Trainer, check_config
from harness.runlog import environment, peak_flops


# Config fields the summary's shape shows already; those that say what data, how long and where to; and values fed
# to the same kernels (learning rates, schedule, momenta). The others are how a step computes: where they differ
# from Config's defaults, the summary and the results row name them.
SHOWN = {"depth", "model_dim", "head_dim", "seq_len", "total_batch_tokens", "device_batch", "fp8", "attention",
         "compile"}
NOT_SETTINGS = {"train_files", "val_files", "tokenizer", "steps", "tokens_per_param", "flops_budget",
                "target_val_loss", "val_tokens", "val_every", "val_batch", "seed", "run_id", "out_dir", "log_every",
                "save_every", "save_final", "resume", "stop_after", "warmup_timing_steps", "device", "peak_flops",
                "wandb", "preset", "warmup_steps", "warmdown_frac", "final_lr_frac", "matrix_lr", "embed_lr",
                "head_lr", "scalar_lr", "adam_betas", "adam_eps", "muon_momentum", "muon_momentum_start",
                "muon_momentum_warmup"}


def settings(config):
    """The train_gpt settings beyond the shape that differ from the defaults (loss, embed_dtype, reduce_dtype, ...),
    so that rows of one shape measured with different switches can be told apart."""
    default = train_gpt.Config()
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.name not in SHOWN | NOT_SETTINGS and getattr(config, f.name) != getattr(default, f.name)}


def synthetic_data(folder, vocab, tokens=4_000_000, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, vocab - 1, size=tokens)
    data[::1000] = vocab - 1  # BOS
    for split in ("train", "val"):
        write_shard(os.path.join(folder, f"{split}_000000.bin"), data)
    return {"vocab_size": vocab, "bos_id": vocab - 1, "token_bytes": torch.ones(vocab, dtype=torch.long), "sha256": ""}


def profile_step(trainer, step, num_steps, device, rows=20):
    """One more training step under torch.profiler: the table of the `rows` ops and kernels with the most self
    device time (CPU time on a CPU), and the same as (name, microseconds, calls) rows."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        trainer.step(step, num_steps)
        synchronize(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    top = sorted(averages, key=lambda e: getattr(e, key), reverse=True)[:rows]
    return averages.table(sort_by=key, row_limit=rows), [[e.key, getattr(e, key), e.count] for e in top]


def measure(config, args, device):
    """The figures of --warmup + --steps training steps (and a profiled one with --profile), as a dict."""
    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic:
            tokenizer = synthetic_data(tmp, args.vocab)
            config.train_files, config.val_files = f"{tmp}/train_*.bin", f"{tmp}/val_*.bin"
        else:
            tokenizer = load_tokenizer_info(config.tokenizer)
        check_config(train_gpt, config, 1, device)
        trainer = Trainer(train_gpt, config, tokenizer, 0, 1, device)
        num_steps = args.warmup + args.steps
        times = []
        for step in range(num_steps):
            synchronize(device)
            t0 = time.perf_counter()
            loss, _ = trainer.step(step, num_steps)
            loss.item()
            synchronize(device)
            times.append(time.perf_counter() - t0)
            print(f"step {step + 1}/{num_steps}: {1000 * times[-1]:.1f} ms", flush=True)
        profile = profile_step(trainer, num_steps - 1, num_steps, device) if args.profile else None
        trainer.loader.close()
    timed = times[args.warmup:]
    step_s = statistics.median(timed)
    flops = trainer.flops_per_token  # harness/trace.py's count, as the run's log has it
    peak = peak_flops(config, device)
    dim, heads, _ = train_gpt.derived(config)
    figures = {
        "fits": True, "tokens_per_s": config.total_batch_tokens / step_s, "step_ms": 1000 * step_s,
        "step_ms_min": 1000 * min(timed), "timed_steps": len(timed), "first_step_s": times[0],
        "mfu": flops * config.total_batch_tokens / step_s / peak if peak else None, "peak_flops": peak or None,
        "flops_per_token": flops, "fp8": trainer.fp8,
        "compiled": "blocks" if config.compile == "blocks" else trainer.forward is not trainer.model,
        "attention": trainer.model.attention_backend, "depth": config.depth, "width": dim, "heads": heads,
        "head_dim": config.head_dim, "seq_len": config.seq_len, "vocab": tokenizer["vocab_size"],
        "total_batch_tokens": config.total_batch_tokens, "device_batch": config.device_batch,
        "accum_steps": trainer.accum_steps, "settings": settings(config)}
    figures.update(memory_figures(device))
    return figures, profile


def memory_figures(device):
    if device.type != "cuda":
        return {"peak_memory_gib": None, "peak_reserved_gib": None}
    return {"peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
            "device_memory_gib": torch.cuda.get_device_properties(device).total_memory / 2**30}


def summary_line(f, device):
    shape = (f"depth {f['depth']}, width {f['width']}, {f['heads']} heads, seq {f['seq_len']}, vocab {f['vocab']}, "
             f"batch {f['total_batch_tokens']:,} tokens ({f['device_batch']} rows/pass), fp8 {f['fp8']}, "
             f"compile {f['compiled']}, attention {f['attention']}" +
             "".join(f", {name} {value}" for name, value in f["settings"].items()))
    memory = f"{f['peak_memory_gib']:.1f} GiB" if f["peak_memory_gib"] else "n/a"
    mfu = f"{100 * f['mfu']:.1f}%" if f["mfu"] else "n/a"
    line = (f"{shape}: {f['tokens_per_s']:,.0f} tok/s, step {f['step_ms']:.1f} ms (median of {f['timed_steps']}; min "
            f"{f['step_ms_min']:.1f}), MFU {mfu} of "
            f"{f['peak_flops'] or 0:.4g} FLOP/s, {f['flops_per_token']:,} FLOPs/token, peak memory {memory}, first "
            f"step (compile) {f['first_step_s']:.1f} s, device {environment(device, 1)['gpu'] or 'cpu'}")
    return shape, line


def make_parser():
    """This tool's own options; the others are train_gpt.py's (bench.calibrate reads a command the same way)."""
    parser = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", action="store_true", help="random tokens instead of the preset's data")
    parser.add_argument("--vocab", type=int, default=32768, help="vocab size with --synthetic")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--profile", default="", help="write a torch.profiler table of one more step to this file")
    parser.add_argument("--json", default="", help="write the figures to this file as JSON")
    parser.add_argument("--no-record", action="store_true")
    return parser


def main():
    args, rest = make_parser().parse_known_args()
    config = parse_args(train_gpt.Config, train_gpt.PRESETS, rest)
    device = resolve_device(config)
    try:
        figures, profile = measure(config, args, device)
    except torch.cuda.OutOfMemoryError as e:
        figures, profile = {"fits": False, "error": str(e).splitlines()[0], **memory_figures(device)}, None
        print(f"out of memory (does not fit at device_batch {config.device_batch}): {figures['error']}")
    if profile:
        figures["top_kernels"] = profile[1]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    if profile:
        with open(args.profile, "w") as f:
            f.write(profile[0] + "\n")
        print(profile[0])
    if not figures["fits"]:
        return
    shape, line = summary_line(figures, device)
    print(line)
    if not args.no_record:
        mfu = f"{100 * figures['mfu']:.1f}%" if figures["mfu"] else "n/a"
        figure = f"{figures['tokens_per_s']:,.0f} tok/s, MFU {mfu}, compile {figures['first_step_s']:.0f} s; {shape}"
        print(f"raw output in {record('train-throughput', figure, f'torch {torch.__version__}', line + chr(10))}")


if __name__ == "__main__":
    main()
