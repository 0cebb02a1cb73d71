"""harness/runlog.py: a run's log (that is also its record), its identity (commit, environment, data) and results."""

import glob
import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import torch

from data import overlap
from data.tokenizer import sha256_file
from harness.config import ConfigError

RESULTS_SCHEMA = 1

# Dense bf16 FLOP/s by device name: the first key the name contains wins, so the PCIe and NVL cards (lower clocks
# and power) come before the SXM parts that share their prefix.
PEAK_BF16_FLOPS = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H200 NVL": 835e12,
                   "H100": 989.5e12, "H200": 989.5e12, "A100": 312e12}


def peak_flops(config, device):
    if config.peak_flops > 0:
        return config.peak_flops
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
    return None  # no MFU on a CPU


def git_info():
    """The commit, whether the tree differs from it, and that difference (`git diff HEAD` and the files git does not
    track, kept beside the log as git.diff so that a record can show exactly what ran) and its sha256."""
    def git(*args, cwd=os.path.dirname(os.path.abspath(__file__))):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=cwd)
    head, top = git("rev-parse", "HEAD"), git("rev-parse", "--show-toplevel").stdout.strip()
    if head.returncode != 0:
        return {"commit": None, "dirty": None, "diff_sha256": None}, ""
    diff = git("diff", "HEAD", cwd=top).stdout
    # files git does not track (and does not ignore) can change what runs, as a module that shadows another: they
    # are part of the difference, as new files
    for path in filter(None, git("ls-files", "--others", "--exclude-standard", "-z", cwd=top).stdout.split("\0")):
        diff += git("diff", "--no-index", "--binary", "--", "/dev/null", path, cwd=top).stdout
    return ({"commit": head.stdout.strip(), "dirty": bool(diff), "diff_sha256": hashlib.sha256(diff.encode()).hexdigest()},
            diff)


def cpu_name():
    """The CPU's model name (Linux), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        import platform
        return platform.processor() or None


def environment(device, world):
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": str(device), "world_size": world, "gpu": None, "driver": None, "cpu": cpu_name(),
           "threads": torch.get_num_threads(),  # a CPU run's sums depend on these three: a replay needs them
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}  # the kernels ATen picks (AVX2, AVX512, ...)
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True)
        env["driver"] = smi.stdout.split("\n")[0].strip() or None
    return env


def data_identity(config, tokenizer, train_files, val_tokens):
    """What the run trained and evaluated on, for the `data:` log line that records check (records/README.md):
    the tokenizer, every train and val shard and the corpus files they were made from (by sha256), and the val
    tokens and UTF-8 bytes scored (bits per byte's denominator)."""
    def files(paths):  # a full read of the corpus: threads (hashlib lets go of the GIL) take it at disk speed
        with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
            digests = list(pool.map(sha256_file, paths))
        return [{"name": os.path.basename(p), "sha256": digest} for p, digest in zip(paths, digests)]

    def sources(shard_pattern, split):  # tokenize.json beside the shards; none for shards downloaded as tokens
        manifest = os.path.join(os.path.dirname(shard_pattern), "tokenize.json")
        if not os.path.exists(manifest):
            return None
        with open(manifest) as f:
            inputs = json.load(f)["config"]["inputs"][split]
        return [{"name": i["name"], "sha256": i.get("sha256")} for i in inputs]

    train_shards, val_shards = files(train_files), files(sorted(glob.glob(config.val_files)))
    return {"tokenizer_sha256": tokenizer["sha256"], "train_shards": train_shards, "val_shards": val_shards,
            "train_source": sources(config.train_files, "train"), "val_source": sources(config.val_files, "val"),
            "val_tokens": len(val_tokens) - 1, "val_bytes": int(tokenizer["token_bytes"][val_tokens[1:]].sum()),
            "val_overlap": val_overlap(train_files, train_shards, val_shards)}


def val_overlap(train_files, train_shards, val_shards):
    """data/overlap.py's figure (overlap.json beside the train shards), when it was measured on these val shards and
    on train shards that include every one of this run's (a superset's overlap bounds a subset's); else None."""
    if not train_files:
        return None
    try:
        with open(os.path.join(os.path.dirname(train_files[0]), overlap.FILE)) as f:
            measured = json.load(f)
        covers = measured["val_shards"] == val_shards and all(s in measured["train_shards"] for s in train_shards)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {key: measured[key] for key in ("fraction", "ngram", "stride", "val_tokens_checked")} if covers else None


class RunLog:
    """log.txt in the run folder, written by rank 0 (other ranks stay quiet); lines are also printed. A resumed run
    appends; a last line cut short (a full disk, a kill in the middle of a write) is dropped first, so that every
    line of the log is whole."""

    def __init__(self, path, enabled):
        self.file = None
        if enabled:
            if os.path.exists(path):
                with open(path, "rb+") as f:
                    text = f.read()
                    if text and not text.endswith(b"\n"):
                        f.truncate(text.rfind(b"\n") + 1)
            self.file = open(path, "a")

    def write(self, text, echo=True):
        if self.file is None:
            return
        if echo:
            print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()



def read_results(path):
    """A finished run's results.json (written last, whole)."""
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        results = f"not readable: {e}"
    if not isinstance(results, dict) or not isinstance(results.get("config"), dict):
        why = results if isinstance(results, str) else "no config"
        raise ConfigError(f"{path} is not a train_gpt.py results.json ({why}); it marks the run as finished: "
                          "restore it, or move the run folder away to train again")
    return results


def write_results(path, results):
    """Written whole or not at all: a results.json marks a finished run."""
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(path + ".tmp", path)
