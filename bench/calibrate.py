"""The dry run against a GPU's measurements: each bf16 training part of a `bench.gpu --out DIR` run, planned by the
dry run (harness/dryrun.py) for the same config on that GPU at world 1, and the ratios measured / modelled of the
step time and of the peak memory.

    python -m bench.calibrate DIR            # the comparison, one line per part
    python -m bench.calibrate DIR --write    # and the GPU's step-time factor into bench/calibration.json
    python -m bench.calibrate --published [--write]  # no GPU: the H100 factor from published figures (PUBLISHED)

The factor written is the median over the parts of measured step time / the dry run's uncalibrated modelled one; the
dry run then multiplies its modelled step time by it (so that it reproduces the measured step of a calibrating
part). The memory ratio is written beside it and printed by the dry run, not applied: peak memory is modelled
from the graph, a ratio away from 1 says where that model is wrong. FP8 parts are left out (the dry run models
bf16), as is a --smoke run (tiny shapes calibrate nothing) or one without a GPU.
"""

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import sys

import train_gpt
from bench.train import make_parser
from harness import dryrun
from harness.config import parse_args

CALIBRATING = ("train_small_bf16", "train_core_bf16", "train_small_blocks")  # bench.gpu's bf16 training parts

# Where no GPU has measured the dry run: a published step of the same math (../shared/ANCHORS.md). nanochat's depth 24
# (the gpt2-core preset's recipe) trains about 0.98 M tokens/s on 8 x H100 with FP8; FP8 gives +17% tokens/s, so
# about 0.84 M in bf16, which is what the dry run models. A factor from this is labelled "calibrated on published
# figures" and a GPU's own measurement (DIR --write) replaces it.
PUBLISHED = {"gpu": "H100", "world": 8, "preset": "gpt2-core", "fp8_tokens_per_s": 0.98e6, "fp8_speedup": 1.17,
             "source": "nanochat depth 24 with FP8, about 0.98 M tok/s on 8 x H100, FP8 +17% tok/s "
                       "(../shared/ANCHORS.md)"}


def published_comparison(published=None):
    """The dry run's uncalibrated step of the published run's config against its published step (in bf16)."""
    published = published or PUBLISHED
    config = parse_args(train_gpt.Config, train_gpt.PRESETS, [f"--preset={published['preset']}",
                                                                 f"--gpu={published['gpu']}",
                                                                 f"--world={published['world']}"])
    planned = dryrun.plan(train_gpt, config, vocab=published.get("vocab"), calibrated=False)
    bf16_tokens_per_s = published["fp8_tokens_per_s"] / published["fp8_speedup"]
    step_ms = 1000 * config.total_batch_tokens / bf16_tokens_per_s
    modelled = 1000 * planned["step_s"][0]
    return {"part": f"published: {published['preset']} on {published['world']} x {published['gpu']}",
            "step_ms": step_ms, "modelled_step_ms": modelled, "step_ratio": step_ms / modelled,
            "peak_bytes": None, "modelled_peak_bytes": planned["peak"], "memory_ratio": None}


def gpu_kind(name):
    """The dry run's GPU kind of a device name ('NVIDIA H100 80GB HBM3' -> 'H100'), or None."""
    return next((kind for kind in dryrun.GPUS if kind in (name or "")), None)


def part_config(command):
    """(train_gpt Config, vocab size) of a bench.train command line, read as bench.train reads it."""
    words = shlex.split(command)
    args, rest = make_parser().parse_known_args(words[words.index("bench.train") + 1:])
    return parse_args(train_gpt.Config, train_gpt.PRESETS, rest), args.vocab


def compare(name, entry, gpu):
    """One part's measured figures against the dry run's uncalibrated plan of its config on `gpu` at world 1."""
    config, vocab = part_config(entry["command"])
    horizon = {} if config.steps or config.tokens_per_param or config.flops_budget else {"steps": 1}  # bench.train
    # times steps without a horizon; a step's time and memory do not depend on it
    planned = dryrun.plan(train_gpt, dataclasses.replace(config, gpu=gpu, world=1, **horizon), vocab=vocab,
                          calibrated=False)
    figures = entry["figures"]
    measured_peak = figures["peak_memory_gib"] * 2**30 if figures.get("peak_memory_gib") else None
    return {"part": name, "step_ms": figures["step_ms"], "modelled_step_ms": 1000 * planned["step_s"][0],
            "step_ratio": figures["step_ms"] / (1000 * planned["step_s"][0]),
            "peak_bytes": measured_peak, "modelled_peak_bytes": planned["peak"],
            "memory_ratio": measured_peak / planned["peak"] if measured_peak else None}


def comparisons(folder):
    """(GPU kind or None, [compare() of every calibrating part that ran], the summary)."""
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    gpu_name = summary["parts"].get("versions", {}).get("figures", {}).get("gpu")
    gpu = gpu_kind(gpu_name) or "H100"  # a CPU run is planned as on an H100: the machinery, not a calibration
    rows = [compare(name, entry, gpu) for name, entry in summary["parts"].items()
            if name in CALIBRATING and entry["status"] == "ok" and entry["figures"].get("step_ms")]
    return (gpu_kind(gpu_name), rows, summary)


def line(row):
    memory = (f"peak {row['peak_bytes'] / 1e9:.2f} GB measured, {row['modelled_peak_bytes'] / 1e9:.2f} GB modelled "
              f"(x{row['memory_ratio']:.3f})" if row["peak_bytes"] else
              f"peak n/a measured (no GPU), {row['modelled_peak_bytes'] / 1e9:.2f} GB modelled")
    return (f"{row['part']}: step {row['step_ms']:.1f} ms measured, {row['modelled_step_ms']:.1f} ms modelled "
            f"(x{row['step_ratio']:.3f}); {memory}")


def calibration_entry(rows, note):
    """bench/calibration.json's entry for a GPU: the median step ratio, the memory ratio, and where they came from."""
    memory = [r["memory_ratio"] for r in rows if r["memory_ratio"]]
    return {"factor": round(statistics.median(r["step_ratio"] for r in rows), 4), "measured_by": note,
            "memory_ratio": round(statistics.median(memory), 4) if memory else None,
            "parts": {r["part"]: {"step_ratio": round(r["step_ratio"], 4),
                                  "memory_ratio": r["memory_ratio"] and round(r["memory_ratio"], 4)} for r in rows}}


def write_calibration(gpu, entry, path=dryrun.CALIBRATION):
    with open(path) as f:
        table = json.load(f)
    table[gpu] = entry
    with open(path + ".tmp", "w") as f:
        json.dump(table, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", help="a bench.gpu --out folder (its summary.json and the parts' figures)")
    parser.add_argument("--published", action="store_true", help="no GPU run: the factor from PUBLISHED figures")
    parser.add_argument("--write", action="store_true", help="record the GPU's factor in bench/calibration.json")
    parser.add_argument("--calibration", default=dryrun.CALIBRATION, help=argparse.SUPPRESS)  # tests
    args = parser.parse_args(argv)
    if args.published:
        return calibrate_on_published(args)
    if not args.folder:
        parser.error("give a bench.gpu --out folder, or --published")
    gpu, rows, summary = comparisons(args.folder)
    for row in rows:
        print(line(row))
    if not args.write:
        return 0
    why_not = ("no bf16 training part ran" if not rows else "a --smoke run (tiny shapes)" if summary.get("smoke")
               else "no GPU the dry run knows (H100, H200, A100)" if gpu is None else None)
    if why_not:
        print(f"error: nothing written to {args.calibration}: {why_not}", file=sys.stderr)
        return 1
    note = (f"bench.calibrate of {os.path.basename(os.path.normpath(args.folder))} (commit "
            f"{str(summary.get('commit'))[:12]}; parts {', '.join(r['part'] for r in rows)})")
    entry = calibration_entry(rows, note)
    write_calibration(gpu, entry, args.calibration)
    print(f"{gpu}: step-time factor x{entry['factor']:g} written to {args.calibration}")
    return 0


def calibrate_on_published(args):
    row = published_comparison()
    print(f"{row['part']}: step {row['step_ms']:.1f} ms published (bf16: {PUBLISHED['source']}), "
          f"{row['modelled_step_ms']:.1f} ms modelled (x{row['step_ratio']:.3f})")
    if not args.write:
        return 0
    with open(args.calibration) as f:
        current = json.load(f).get(PUBLISHED["gpu"], {})
    if current.get("measured_by"):
        print(f"error: nothing written: {PUBLISHED['gpu']} is calibrated by a GPU's measurement "
              f"({current['measured_by']}), which published figures do not replace", file=sys.stderr)
        return 1
    entry = {"factor": round(row["step_ratio"], 4), "measured_by": None, "published_by": PUBLISHED["source"],
             "published_step_ms": round(row["step_ms"], 1), "modelled_step_ms": round(row["modelled_step_ms"], 1)}
    write_calibration(PUBLISHED["gpu"], entry, args.calibration)
    print(f"{PUBLISHED['gpu']}: step-time factor x{entry['factor']:g} (calibrated on published figures) written to "
          f"{args.calibration}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
