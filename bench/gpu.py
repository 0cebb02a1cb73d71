"""GPU check in one command: versions, the GPU tests, training throughput at GPT-2-small and gpt2-core shapes
(bf16 and FP8), a profile of one step, which SDPA kernel the masked path uses, and CORE prompts per second.

    python -m bench.gpu --out DIR             # on one GPU: every part, all within --budget seconds (default 530)
    python -m bench.gpu --out DIR --smoke     # the same machinery with tiny shapes (on a CPU: the tests use it)
    python -m bench.gpu --out DIR --sweep     # issue 10's speed switches one by one against a baseline
    python -m bench.gpu --to-results DIR      # afterwards, here: DIR's figures into bench/raw/ and bench/results.md

It needs only what the bare GPU machine has (python3 with torch, numpy, tiktoken, pyarrow, pytest; no venv, no
rustbpe). Every part runs in its own process with its own time limit (the whole process group is killed when
it runs over), writes its output to DIR/<part>.txt as it runs and its figures to DIR/<part>.json; after every
part DIR/summary.json is rewritten with every part's status (ok, oom, failed, timed out, skipped), its error
line and its figures. The command always exits 0 and ends with a table. The parts run most important first;
one that would start with less than --min-part seconds of the budget left is skipped. How to run it through
the device tool and record its figures: bench/README.md.
"""

import argparse
import datetime
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_LOGS = "recompiles,graph_breaks"

# GPT-2-small shape: depth 12, width 768, head_dim 128, vocab 50,304, seq 2048, 524,288 tokens a step.
SMALL = ["--depth=12", "--model_dim=768", "--head_dim=128", "--seq_len=2048", "--device_batch=16",
         "--total_batch_tokens=524288", "--vocab=50304"]
# gpt2-core preset (depth 24, vocab 32,768, its device batch of 8 rows); a step of 8 micro-batches instead of the
# preset's 64 at world 1, so that compile plus timed steps fit the budget: the optimizer's share is overstated 8x.
CORE = ["--preset=gpt2-core", "--vocab=32768", "--total_batch_tokens=131072"]
TINY = ["--depth=2", "--model_dim=32", "--head_dim=16", "--seq_len=64", "--device_batch=2",
        "--total_batch_tokens=256", "--vocab=512"]
TINY_CORE = TINY[:-1] + ["--vocab=384", "--short_window=16"]


def train_part(args, name, small, extra, limit, warmup=2, steps=5):
    """A bench.train part on random tokens: GPT-2-small shape (small) or gpt2-core's, tiny ones with --smoke."""
    shape = (TINY if small else TINY_CORE) if args.smoke else (SMALL if small else CORE)
    device = [f"--device={args.device}"] if args.device != "auto" else []
    return name, limit, [sys.executable, "-m", "bench.train", "--synthetic", *shape, *extra, *device, "--no-record",
                         f"--warmup={1 if args.smoke else warmup}", f"--steps={2 if args.smoke else steps}",
                         f"--json={os.path.join(args.out, name + '.json')}"]


def smoke_part(args):
    """speedrun.sh's smoke test (harness/smoke.py) on this GPU at GPT-2-small shape (tiny ones with --smoke): its
    one line, the compile and the peak memory in it; no data, no tokenizer (the vocab given)."""
    *shape, vocab = TINY if args.smoke else SMALL
    device = [f"--device={args.device}"] if args.device != "auto" else []
    return "smoke_test", 150, [sys.executable, "-m", "harness.smoke", *shape, "--steps=1000", "--smoke_steps=2",
                               f"--smoke_vocab={vocab.split('=')[1]}", "--tokenizer=/nonexistent", *device]


def parts(args):
    """(name, time limit in seconds, command) for every part, most important first."""
    out, smoke = args.out, args.smoke
    gpt2_ranks = os.path.join(REPO, ".device", "gpt2.tiktoken")
    core_shape = (["--depth=2", "--model-dim=32", "--head-dim=16", "--seq-len=128", "--vocab=512",
                   "--tasks=copa,winograd,lambada_openai", "--max-per-task=4", "--attention=sdpa"] if smoke else
                  ["--depth=12", "--model-dim=768", "--head-dim=128", "--seq-len=2048", "--vocab=50304",
                   "--repeat-rows=4", "--attention=sdpa,flex"])
    return [
        ("versions", 60, [sys.executable, "-m", "bench.gpu", "--part=versions", f"--out={out}"]),
        train_part(args, "train_small_bf16", True, [], 240),
        ("gpu_tests", 150, [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-rA",
                            "-p", "no:cacheprovider"]),
        train_part(args, "train_core_bf16", False, [], 210, steps=3),
        train_part(args, "train_core_fp8", False, ["--fp8"], 180, steps=3),
        ("sdpa_kernels", 90, [sys.executable, "-m", "bench.gpu", "--part=sdpa_kernels", f"--out={out}",
                              *(["--smoke"] if smoke else []), f"--device={args.device}"]),
        train_part(args, "train_small_fp8", True, ["--fp8"], 120),
        train_part(args, "profile_small", True,
                   [f"--profile={os.path.join(out, 'profile_small.table.txt')}"], 100, steps=1),
        ("core_eval", 150, [sys.executable, "-m", "bench.core", *core_shape, "--no-reference", "--no-record",
                            f"--tokenizer={gpt2_ranks if os.path.exists(gpt2_ranks) else 'bytes'}",
                            f"--json={os.path.join(out, 'core_eval.json')}"]),
        # train_small_bf16 with each block compiled on its own (gradients ready block by block, for overlapping
        # communication) against its whole-model compile; last, so that it takes only what the budget leaves
        train_part(args, "train_small_blocks", True, ["--compile=blocks"], 150),
        smoke_part(args),
    ]


# --sweep: issue 10's single-GPU switches at GPT-2-small shape against a baseline measured in the same call (the same
# machine and clocks): the memory and compute ones together first, then each alone; last, at depth 24, the memory
# with the chunked loss and the compile time with one compile per kind of block (whole-model: train_core_bf16).
SWEEP = [("baseline", []), ("lean", ["--loss=chunked", "--embed_dtype=bf16"]), ("loss_chunked", ["--loss=chunked"]),
         ("embed_bf16", ["--embed_dtype=bf16"]), ("adam_foreach", ["--fused_adam=false"]),
         ("split_qkv", ["--muon_split_qkv"]), ("doc_mask", ["--doc_mask"])]


def sweep_parts(args):
    """(name, time limit, command) for --sweep, most telling first."""
    # the baseline compiles on a cold machine (each call of the device tool gets a fresh one); the others then find
    # most of their kernels in Inductor's cache
    return ([train_part(args, f"sweep_{name}", True, extra, 240 if name == "baseline" else 150)
             for name, extra in SWEEP] +
            [train_part(args, "sweep_core_chunked", False, ["--loss=chunked"], 150),
             train_part(args, "sweep_core_blocks", False, ["--compile=blocks"], 150)])


# -----------------------------------------------------------------------------
# Running the parts


def error_line(text):
    """The line that says what went wrong: the last exception line, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line)
              or re.search(r"\d+ (failed|error)", line)]
    return (errors or lines or [""])[-1][:500]


def compile_events(text):
    """Recompiles and graph breaks in a part's TORCH_LOGS=recompiles,graph_breaks output, in all and by where they
    happened ("function (file:line)" and "file:line"): some recompiles are expected (one graph per kind of block
    with --compile=blocks), others are bugs."""
    recompiled, broken = {}, {}
    for function, path in re.findall(r"\[__recompiles\] Recompiling function (\S+) in (\S+)", text):
        key = f"{function} ({os.path.basename(path)})"
        recompiled[key] = recompiled.get(key, 0) + 1
    for path in re.findall(r"\[__graph_breaks\] Graph break (?:\(user stack suppressed[^)]*\) )?in user code at (\S+)",
                           text):
        broken[os.path.basename(path)] = broken.get(os.path.basename(path), 0) + 1
    return {"recompiles": sum(recompiled.values()), "recompiled": recompiled,
            "graph_breaks": sum(broken.values()), "graph_breaks_at": broken}


def run_part(name, limit, command, out):
    """Runs one part in its own process group, its output going to DIR/<name>.txt; returns its summary entry."""
    text_path, json_path = os.path.join(out, name + ".txt"), os.path.join(out, name + ".json")
    env = dict(os.environ, TORCH_LOGS=TORCH_LOGS, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    with open(text_path, "w") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                   start_new_session=True)
        try:
            rc = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the compile workers too
            process.wait()
            rc = None
    seconds = time.perf_counter() - t0
    with open(text_path, errors="replace") as f:
        text = f.read()
    figures = {}
    if os.path.exists(json_path):
        with open(json_path) as f:
            figures = json.load(f)
    if name == "gpu_tests":
        counts = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", text)
        figures = {word.rstrip("s") if word.startswith("error") else word: int(n) for n, word in counts}
    figures.update(compile_events(text))
    if name == "smoke_test":  # its figures are its one line
        figures["line"] = next((line for line in text.splitlines() if line.startswith("smoke test: ")), "")
    if rc is None:
        status, error = "timed out", f"no result within {limit:.0f} s"
    elif rc != 0 and not (name == "gpu_tests" and rc == 5):
        status, error = "failed", error_line(text)
    elif figures.get("fits") is False:
        status, error = "oom", figures.get("error", "")
    else:
        status, error = "ok", ""
    return {"status": status, "error": error, "seconds": round(seconds, 1), "limit_s": limit, "figures": figures,
            "output": os.path.basename(text_path), "command": " ".join(command)}


def headline(name, entry):
    """A short figure for the table."""
    f = entry["figures"]
    if entry["status"] != "ok":
        return entry["error"][:90]
    if name == "versions":
        return f"torch {f.get('torch')}, CUDA {f.get('cuda')}, {f.get('gpu') or 'no GPU'}, driver {f.get('driver')}"
    if name == "gpu_tests":
        return ", ".join(f"{v} {k}" for k, v in f.items() if isinstance(v, int) and k not in
                         ("recompiles", "graph_breaks")) + f"; {compile_line(f)}"
    if name.startswith(("train", "profile", "sweep")) and "tokens_per_s" in f:
        mfu = f"{100 * f['mfu']:.1f}% MFU" if f.get("mfu") else "MFU n/a"
        memory = f"{f['peak_memory_gib']:.1f} GiB" if f.get("peak_memory_gib") else "memory n/a"
        top = f"; top: {f['top_kernels'][0][0][:40]}" if f.get("top_kernels") else ""
        switches = "".join(f"; {key}={value}" for key, value in f.get("settings", {}).items())
        events = f"; {compile_line(f)}" if f.get("recompiles") or f.get("graph_breaks") else ""
        return (f"{f['tokens_per_s']:,.0f} tok/s, {f['step_ms']:.0f} ms, {mfu}, {memory}, first step "
                f"{f['first_step_s']:.0f} s{top}{switches}{events}")
    if name == "smoke_test":
        return f.get("line", "").removeprefix("smoke test: OK: ")
    if name == "sdpa_kernels":
        return "; ".join(f"{case}: {c.get('default_kernel')} (ok: {','.join(c['works'])})"
                         for case, c in f.get("cases", {}).items())
    if name == "core_eval":
        return "; ".join(f"{a}: {c['prompts_per_s']:.1f} prompts/s" for a, c in f.get("attention", {}).items())
    return ""


def compile_line(f):
    """'2 recompiles (forward (train_gpt.py:568) x2), 0 graph breaks'"""
    def where(counts):
        return f" ({', '.join(f'{key} x{n}' for key, n in counts.items())})" if counts else ""
    return (f"{f.get('recompiles', 0)} recompiles{where(f.get('recompiled'))}, "
            f"{f.get('graph_breaks', 0)} graph breaks{where(f.get('graph_breaks_at'))}")


def run_all(args):
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    summary = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "budget_s": args.budget, "smoke": args.smoke, "sweep": args.sweep, "commit": git_commit(), "parts": {}}
    summary_path = os.path.join(args.out, "summary.json")
    for name, limit, command in (sweep_parts(args) if args.sweep else parts(args)):
        if args.parts and name not in args.parts.split(","):
            continue
        left = args.budget - (time.perf_counter() - start)
        if left < args.min_part:
            entry = {"status": "skipped", "error": f"{left:.0f} s of the budget left", "seconds": 0,
                     "limit_s": 0, "figures": {}, "output": None, "command": " ".join(command)}
        else:
            print(f"{name}: up to {min(limit, left):.0f} s ...", flush=True)
            entry = run_part(name, min(limit, left), command, args.out)
        if name == "profile_small" and entry["status"] == "ok":
            table = os.path.join(args.out, "profile_small.table.txt")
            entry["table"] = os.path.basename(table) if os.path.exists(table) else None
        summary["parts"][name] = entry
        summary["elapsed_s"] = round(time.perf_counter() - start, 1)
        with open(summary_path + ".tmp", "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(summary_path + ".tmp", summary_path)
        print(f"{name}: {entry['status']} in {entry['seconds']:.0f} s; {headline(name, entry)}", flush=True)
    print(f"\nsummary: {summary_path} ({summary['elapsed_s']:.0f} s)")
    width = max(len(name) for name in summary["parts"])
    for name, entry in summary["parts"].items():
        print(f"{name:<{width}}  {entry['status']:<9}  {entry['seconds']:>5.0f} s  {headline(name, entry)}")


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              cwd=REPO, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# -----------------------------------------------------------------------------
# Parts that live here (the others are bench.train, bench.core and pytest)


def part_versions(out):
    import numpy
    import torch
    figures = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
               "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
               "numpy": numpy.__version__, "gpu": None, "driver": None}
    for module in ("triton", "tiktoken", "pyarrow", "pytest", "rustbpe"):
        try:
            figures[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            figures[module] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        figures.update(gpu=props.name, capability=list(torch.cuda.get_device_capability(0)),
                       sms=props.multi_processor_count, memory_gib=props.total_memory / 2**30,
                       gpus=torch.cuda.device_count())
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
        figures["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError) as e:
        smi = f"nvidia-smi: {e}"
    print(json.dumps(figures, indent=1))
    print(smi)
    return figures


def part_sdpa_kernels(out, smoke, device_name):
    """Which scaled_dot_product_attention kernels take the project's calls (each backend alone, forward and
    backward), which one the default dispatch picks (from the profiled kernel names), and their times; beside
    them, compiled FlexAttention on the same masks (GPU only)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import train_gpt
    from harness.device import synchronize
    device = torch.device(device_name if device_name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    B, H, T, D = (1, 2, 128, 16) if smoke else (4, 6, 2048, 128)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    idx = torch.randint(1, 100, (B, T), device=device)
    idx[:, ::700 if not smoke else 50] = 0  # documents of 700 tokens
    window = T // 4
    masks = train_gpt.attention_masks(idx, [window, T], 0, "sdpa")
    cases = {"causal": (None, T), "window_and_docs": (masks[window], window), "docs": (masks[T], T)}  # mask, window
    qkv = [torch.randn(B, T, H, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]

    def step(mask, size, backend="sdpa"):  # size: the mask's window (what FLOPs are counted over)
        y = train_gpt.attention(*qkv, mask, size, backend)
        y.sum().backward()

    def milliseconds(fn, repeats=3 if smoke else 10):
        for _ in range(2):
            fn()
        times = []
        for _ in range(repeats):
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times.append(1000 * (time.perf_counter() - t0))
        return statistics.median(times)
    figures = {"shape": [B, H, T, D], "dtype": str(dtype), "window": window, "cases": {}}
    json_path = os.path.join(out, "sdpa_kernels.json")
    for case, (mask, size) in cases.items():
        result = {"works": [], "fails": {}, "ms": {}}
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                        SDPBackend.MATH):
            with warnings.catch_warnings(record=True) as caught:  # SDPA says why a backend refused in warnings
                warnings.simplefilter("always")
                try:
                    with sdpa_kernel([backend]):
                        result["ms"][backend.name] = milliseconds(lambda: step(mask, size))
                    result["works"].append(backend.name)
                except RuntimeError as e:
                    reasons = [str(w.message).splitlines()[0] for w in caught] or [str(e).splitlines()[0]]
                    result["fails"][backend.name] = "; ".join(dict.fromkeys(reasons))[:500]
        result["ms"]["default"] = milliseconds(lambda: step(mask, size))
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA] if device.type == "cuda"
                     else [ProfilerActivity.CPU]) as prof:
            step(mask, size)
            synchronize(device)
        names = sorted({e.key for e in prof.key_averages()})
        result["kernels"] = [n for n in names if re.search(r"flash|fmha|efficient|cudnn|attention|softmax|bmm", n,
                                                           re.I)][:30]
        text = " ".join(result["kernels"]).lower()
        result["default_kernel"] = ("flash" if "flash" in text else "cudnn" if "cudnn" in text else
                                    "efficient" if ("efficient" in text or "fmha" in text) else "math")
        figures["cases"][case] = result
        print(f"{case}: works with {result['works']}; default picks {result['default_kernel']}; ms {result['ms']}; "
              f"fails {result['fails']}", flush=True)
        with open(json_path, "w") as f:
            json.dump(figures, f, indent=1)
    if device.type == "cuda":  # the same masks as FlexAttention block masks, compiled as in training
        flex_masks = train_gpt.attention_masks(idx, [window, T], 0, "flex")
        compiled = torch.compile(train_gpt.attention)
        for case, size in (("window_and_docs", window), ("docs", T)):
            try:
                ms = milliseconds(lambda: compiled(*qkv, flex_masks[size], size, "flex").sum().backward())
                figures["cases"][case]["ms"]["flex_compiled"] = ms
                print(f"{case}: compiled FlexAttention {ms:.2f} ms", flush=True)
            except Exception as e:  # a failure here is a result, beside the SDPA figures already written
                figures["cases"][case]["fails"]["flex_compiled"] = str(e).splitlines()[0][:300]
                print(f"{case}: compiled FlexAttention failed: {e}", flush=True)
        with open(json_path, "w") as f:
            json.dump(figures, f, indent=1)
    return figures


# -----------------------------------------------------------------------------
# Into bench/results.md


def to_results(folder):
    """One bench/results.md row (and bench/raw/ file) per part with figures, from a finished DIR."""
    from bench.record import record
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    versions = summary["parts"].get("versions", {}).get("figures", {})
    device = f"{versions.get('gpus', 1)}x {versions['gpu']}" if versions.get("gpu") else "CPU"
    software = f"torch {versions.get('torch')}, CUDA {versions.get('cuda')}, driver {versions.get('driver')}"
    command = f"python -m bench.gpu --out {os.path.basename(os.path.normpath(folder))}"
    command += " --sweep" * bool(summary.get("sweep")) + " --smoke" * bool(summary.get("smoke"))
    for name, entry in summary["parts"].items():
        if entry["status"] == "skipped":
            continue
        raw = f"summary entry:\n{json.dumps(entry, indent=1)}\n\n"
        if entry.get("output") and os.path.exists(os.path.join(folder, entry["output"])):
            with open(os.path.join(folder, entry["output"]), errors="replace") as f:
                raw += f"{entry['output']}:\n{f.read()}"
        if entry.get("table"):
            with open(os.path.join(folder, entry["table"])) as f:
                raw += f"\n{entry['table']}:\n{f.read()}"
        figure = f"{entry['status']}: {headline(name, entry)}"
        path = record(f"gpu-{name.replace('_', '-')}", figure, software, raw, device=device, command=command,
                      commit=summary.get("commit"))
        print(f"{name}: {path}")


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for the parts' output and summary.json")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: the machinery in seconds (CPU tests)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cuda or cpu")
    parser.add_argument("--budget", type=float, default=530, help="seconds for all parts together")
    parser.add_argument("--min-part", type=float, default=20, help="skip a part with less than this left")
    parser.add_argument("--parts", default="", help="only these parts, comma-separated")
    parser.add_argument("--sweep", action="store_true", help="instead of the check: each speed switch of train_gpt.py "
                        "alone and all together at GPT-2-small shape, against a baseline in the same call")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    parser.add_argument("--to-results", metavar="DIR", help="record DIR's figures in bench/results.md")
    args = parser.parse_args()
    if args.to_results:
        return to_results(args.to_results)
    if not args.out:
        parser.error("--out DIR is required")
    if args.part == "versions":
        figures = part_versions(args.out)
        with open(os.path.join(args.out, "versions.json"), "w") as f:
            json.dump(figures, f, indent=1)
    elif args.part == "sdpa_kernels":
        part_sdpa_kernels(args.out, args.smoke, args.device)
    else:
        run_all(args)


if __name__ == "__main__":
    main()
