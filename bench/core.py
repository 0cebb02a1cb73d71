"""CORE evaluation speed: the batched fast path of eval_core.py against a per-example reference evaluator, on the
same model and bundle; the scores must agree example by example.

    python -m bench.core --run-dir runs/<run_id> --bundle ~/.cache/speedrun/eval_bundle     # a real run and bundle
    python -m bench.core                          # a freshly initialized model on the test fixture bundle
    python -m bench.core --depth=12 --model-dim=768 --head-dim=128 --seq-len=2048 --vocab=50304 --tokenizer=bytes \\
        --repeat-rows=8 --attention=sdpa,flex --no-reference      # prompts/s at GPT-2-small shape, each attention

Without --run, a model of --depth layers is initialized at random (the speed does not depend on the weights)
with --tokenizer (a tokenizer folder, a GPT-2 ranks file such as gpt2.tiktoken, or "bytes": byte-level tokens,
no training needed, about 4x longer prompts than BPE); without --bundle, the fixture bundle of the tests is
written to a temporary folder, each task's rows repeated --repeat-rows times. --attention lists eval_core.py's
attention choices to time one after the other (the first one is also compared with the reference).
"""

import argparse
import json
import tempfile
import time

import torch

import eval_core
import train_gpt
from bench.record import record
from data.tokenizer import byte_tokenizer, gpt2_tokenizer, load_tokenizer
from harness.device import autocast_for, resolve_device, synchronize
from tests.core_fixture import write_bundle
from tests.core_reference import reference_predictions


def timed(fn, device):
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def tokenizer_from(name):
    if name == "bytes":
        return byte_tokenizer()
    return gpt2_tokenizer(name) if name.endswith(".tiktoken") else load_tokenizer(name)


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", help="a run folder with checkpoint.pt (default: a random model)")
    parser.add_argument("--bundle", help="an unpacked eval_bundle folder (default: the test fixture)")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--model-dim", type=int, default=0, help="0: train_gpt's rule from the depth")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=0, help="model vocab when larger than the tokenizer's")
    parser.add_argument("--tokenizer", default="data/tokenizers/shakespeare_4096")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--max-per-task", type=int, default=None)
    parser.add_argument("--tasks", default="", help="comma-separated task labels (default: all)")
    parser.add_argument("--repeat-rows", type=int, default=1, help="each fixture task's rows this many times")
    parser.add_argument("--batch-tokens", type=int, default=0, help="default: eval_core.py's for the device")
    parser.add_argument("--attention", default="sdpa", help="eval_core.py --attention values, comma-separated")
    parser.add_argument("--no-reference", action="store_true", help="time the fast path only")
    parser.add_argument("--json", default="", help="write the figures to this file as JSON")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    device = resolve_device(train_gpt.Config())
    autocast = autocast_for(device)
    if args.run_dir:
        model, config, tok = eval_core.load_run(args.run_dir, device)
    else:
        tok = tokenizer_from(args.tokenizer)
        config = train_gpt.Config(depth=args.depth, model_dim=args.model_dim, seq_len=args.seq_len,
                                  head_dim=args.head_dim)
        torch.manual_seed(0)
        model = train_gpt.GPT(config, max(tok.vocab_size, args.vocab), tok.bos_id)
        for p in model.parameters():  # not the zero-initialized projections: every choice would tie
            torch.nn.init.normal_(p, std=0.02)
        model = model.to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    figures, lines = {"params": params, "seq_len": config.seq_len, "depth": config.depth, "attention": {}}, []
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or write_bundle(tmp)
        tasks = eval_core.load_tasks(bundle, args.max_per_task, [t for t in args.tasks.split(",") if t] or None)
        if not args.bundle:
            for task in tasks:
                task.rows = task.rows * args.repeat_rows
        batch_tokens = args.batch_tokens or eval_core.default_batch_tokens(device)
        runs = {}
        for attention in args.attention.split(","):
            forward, backend = eval_core.scoring_forward(model, attention, "auto", device)

            def fast_path():  # tokenizing and rendering included, as in eval_core.py
                sequences = eval_core.build_sequences(tasks, tok, config.seq_len)
                return sequences, eval_core.score_sequences(forward, sequences, tok.bos_id, batch_tokens, 0, 1,
                                                            device, autocast, config.seq_len, progress=False)
            (sequences, scores), first_s = timed(fast_path, device)  # with compilation, if any
            (sequences, scores), fast_s = timed(fast_path, device) if forward is not model else ((sequences, scores),
                                                                                                  first_s)
            runs[attention] = scores
            tokens = sum(len(s.tokens) for s in sequences)
            figures["attention"][attention] = {
                "backend": backend, "compiled": forward is not model, "prompts": len(sequences), "tokens": tokens,
                "seconds": fast_s, "first_run_s": first_s, "prompts_per_s": len(sequences) / fast_s,
                "tokens_per_s": tokens / fast_s,
                "max_loss_diff_vs_first": (scores[:, 0] - next(iter(runs.values()))[:, 0]).abs().max().item(),
                "same_exact_vs_first": bool(torch.equal(scores[:, 1], next(iter(runs.values()))[:, 1]))}
            lines.append(f"attention {attention} ({backend}, compiled {forward is not model}): {len(sequences)} "
                         f"prompts, {tokens:,} tokens in {fast_s:.2f} s = {len(sequences) / fast_s:.1f} prompts/s, "
                         f"{tokens / fast_s:,.0f} tokens/s (first run {first_s:.2f} s); max loss difference from "
                         f"the first attention {figures['attention'][attention]['max_loss_diff_vs_first']:.2e}")
            print(lines[-1], flush=True)
        model.attention_backend = "sdpa"
        first = args.attention.split(",")[0]
        fast_choices = eval_core.predictions(tasks, sequences, runs[first])
        if not args.no_reference:
            with autocast:
                reference, reference_s = timed(lambda: reference_predictions(model, tasks, tok, config.seq_len),
                                               device)
    fast_s = figures["attention"][first]["seconds"]
    head = (f"{len(tasks)} tasks, {sum(len(t.rows) for t in tasks)} examples, {len(sequences)} prompts; model "
            f"{params:,} parameters, seq_len {config.seq_len}, device {device}")
    if args.no_reference:
        line = f"{head}: " + "; ".join(lines)
    else:
        same = sum(a == b for fc, rc in zip(fast_choices, reference) for a, b in zip(fc, rc))
        total = sum(len(c) for c in reference)
        core_fast = eval_core.core_score(tasks, [eval_core.accuracy(t, c) for t, c in zip(tasks, fast_choices)])[0]
        core_ref = eval_core.core_score(tasks, [eval_core.accuracy(t, c) for t, c in zip(tasks, reference)])[0]
        figures.update(reference_s=reference_s, same_choice=same, examples=total)
        line = (f"{head}: fast {fast_s:.2f} s, reference {reference_s:.2f} s ({reference_s / fast_s:.1f}x); same "
                f"choice on {same}/{total} examples; CORE fast {core_fast:.6f}, reference {core_ref:.6f}")
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    if not args.no_record and not args.no_reference:
        tokens = figures["attention"][first]["tokens"]
        path = record("core-fast-vs-reference", f"speed-up {reference_s / fast_s:.2f}x (fast {fast_s:.2f} s, reference "
                      f"{reference_s:.2f} s), "
                      f"{same}/{total} examples identical, {params / 1e6:.1f} M params, {tokens:,} prompt tokens",
                      f"torch {torch.__version__}", line + "\n")
        print(f"appended to bench/results.md; raw output in {path}")


if __name__ == "__main__":
    main()
