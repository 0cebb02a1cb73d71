"""Peak memory of the soft-capped cross-entropy, forward and backward: the plain loss of GPT.forward against
harness/speedups.py's chunked one (--loss=chunked), for one micro-batch of hidden states and a head.

    python -m bench.loss_memory --rows=8192 --dim=256 --vocab=32768 --chunk=1024

On a GPU: torch.cuda.max_memory_allocated above what the inputs and their gradients hold. On a CPU (Linux):
the process's peak resident memory (VmHWM, reset through /proc/self/clear_refs after a first, untimed forward
and backward that loads every kernel) above the resident memory before the measured calls; each variant runs in
a fresh process whose allocations of 64 KiB or more are mapped and unmapped one by one (MALLOC_MMAP_THRESHOLD_),
so that the resident memory follows the live tensors. Also the time of one forward and backward (median of --repeats), in eager mode.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from harness.speedups import chunked_softcapped_cross_entropy

CAP = 15.0


def plain(h, w, targets, vocab):
    logits = F.linear(h, w)[:, :vocab].float()
    return F.cross_entropy(CAP * torch.tanh(logits / CAP), targets)


def chunked(h, w, targets, vocab, chunk):
    return chunked_softcapped_cross_entropy(h, w, targets, CAP, vocab, chunk).mean()


def resident_bytes(key):
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, from /proc/self/status."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    return resident_bytes("VmRSS")


def peak_bytes(device):
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else resident_bytes("VmHWM")


def measure(variant, args):
    """In this process: the peak memory above the inputs and the median time of forward + backward."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    h = torch.randn(args.rows, args.dim, device=device).requires_grad_()
    w = (torch.randn(args.vocab, args.dim, device=device) * args.dim ** -0.5).requires_grad_()
    targets = torch.randint(0, args.vocab, (args.rows,), device=device)
    loss_fn = (lambda: plain(h, w, targets, args.vocab)) if variant == "plain" else (
        lambda: chunked(h, w, targets, args.vocab, args.chunk))
    loss_fn().backward()  # first call: kernels loaded, gradients allocated (they count as inputs)
    base = reset_peak(device)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return {"variant": variant, "peak_mib": (peak_bytes(device) - base) / 2**20, "loss": loss.item(),
            "ms": 1000 * statistics.median(times)}


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.loss_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variant", choices=["plain", "chunked"], help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args)))
        return
    results = []
    for variant in ("plain", "chunked"):
        child = [sys.executable, "-m", "bench.loss_memory", *sys.argv[1:], f"--variant={variant}"]
        done = subprocess.run(child, capture_output=True, text=True,
                              env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
        if done.returncode:
            sys.exit(f"error: the {variant} measurement failed:\n{done.stderr[-2000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    plain_r, chunked_r = results
    fp32_logits_mib = args.rows * args.vocab * 4 / 2**20
    lines = [f"rows {args.rows}, dim {args.dim}, vocab {args.vocab}, chunk {args.chunk}, device {args.device}; "
             f"one fp32 logits tensor = {fp32_logits_mib:.0f} MiB"]
    lines += [f"{r['variant']}: peak {r['peak_mib']:.0f} MiB above the inputs, {r['ms']:.0f} ms forward+backward "
              f"(median of {args.repeats}), loss {r['loss']:.6f}" for r in results]
    print("\n".join(lines))
    if not args.no_record:
        from bench.record import record
        figure = (f"peak {chunked_r['peak_mib']:.0f} MiB chunked vs {plain_r['peak_mib']:.0f} MiB plain above the "
                  f"inputs ({fp32_logits_mib:.0f} MiB = one fp32 logits tensor); {chunked_r['ms']:.0f} vs "
                  f"{plain_r['ms']:.0f} ms fwd+bwd eager; rows {args.rows}, vocab {args.vocab}, chunk {args.chunk}")
        print(f"raw output in {record('loss-memory', figure, f'torch {torch.__version__}', chr(10).join(lines) + chr(10))}")


if __name__ == "__main__":
    main()
