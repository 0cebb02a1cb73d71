"""Appends a benchmark's figures to bench/results.md, with the date, device, software and commit."""

import datetime
import os
import platform
import subprocess
import sys

RESULTS = os.path.join(os.path.dirname(__file__), "results.md")
RAW = os.path.join(os.path.dirname(__file__), "raw")
HEADER = ("# Benchmark results\n\nOne row per measurement, appended by the benchmarks themselves; the raw output "
          "behind each row is in bench/raw/.\n\n| date | benchmark | figure | device | software | commit | command |\n"
          "|---|---|---|---|---|---|---|\n")


def git_commit():
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!bench/results.md", ":!bench/raw"],  # the results themselves do not count
                               capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def this_device():
    try:
        import torch
        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name()}"
    except ImportError:
        pass
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return f"CPU {os.cpu_count()} cores ({model})"


def record(benchmark, figure, software, raw_output, device=None, command=None, commit=None):
    """Appends one row to results.md and writes the raw output beside it; returns the raw file's path. device,
    command and commit default to this machine, this process's command line and the checkout's commit (give them
    for figures measured elsewhere, such as bench.gpu's on the GPU machine)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    raw_name = f"{now:%Y-%m-%d_%H%M%S}_{benchmark}.txt"
    raw_path = os.path.join(RAW, raw_name)
    os.makedirs(os.path.dirname(raw_path), exist_ok=True)
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    command = command or " ".join([f"python -m {spec.name}" if spec else f"python {sys.argv[0]}"] + sys.argv[1:])
    with open(raw_path, "w") as f:
        f.write(raw_output)
    if not os.path.exists(RESULTS):
        with open(RESULTS, "w") as f:
            f.write(HEADER)
    row = [f"{now:%Y-%m-%d}", benchmark, figure, device or this_device(), software, commit or git_commit(),
           f"`{command}` ([raw](raw/{raw_name}))"]
    with open(RESULTS, "a") as f:
        f.write("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |\n")
    return raw_path
