"""CORE evaluation speed: the batched fast path of eval_core.py against a per-example reference evaluator, on the
same model and bundle; the scores must agree example by example.

    python -m bench.core --run-dir runs/<run_id> --bundle ~/.cache/speedrun/eval_bundle     # a real run and bundle
    python -m bench.core                          # a freshly initialized model on the test fixture bundle

Without --run, a model of --depth layers is initialized at random (the speed does not depend on the weights)
with the tokenizer of the tiny preset; without --bundle, the fixture bundle of the tests is written to a
temporary folder.
"""

import argparse
import tempfile
import time

import torch

import eval_core
import train_gpt
from bench.record import record
from data.tokenizer import load_tokenizer
from tests.core_fixture import write_bundle
from tests.core_reference import reference_predictions


def timed(fn, device):
    train_gpt.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    train_gpt.synchronize(device)
    return out, time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", help="a run folder with checkpoint.pt (default: a random model)")
    parser.add_argument("--bundle", help="an unpacked eval_bundle folder (default: the test fixture)")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--tokenizer", default="data/tokenizers/shakespeare_4096")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--max-per-task", type=int, default=None)
    parser.add_argument("--batch-tokens", type=int, default=0, help="default: eval_core.py's for the device")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    device = train_gpt.resolve_device(train_gpt.Config())
    autocast = train_gpt.autocast_for(device)
    if args.run_dir:
        model, config, tok = eval_core.load_run(args.run_dir, device)
    else:
        tok = load_tokenizer(args.tokenizer)
        config = train_gpt.Config(depth=args.depth, seq_len=args.seq_len, head_dim=64)
        torch.manual_seed(0)
        model = train_gpt.GPT(config, tok.vocab_size, tok.bos_id)
        for p in model.parameters():  # not the zero-initialized projections: every choice would tie
            torch.nn.init.normal_(p, std=0.02)
        model = model.to(device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or write_bundle(tmp)
        tasks = eval_core.load_tasks(bundle, args.max_per_task)

        def fast_path():  # tokenizing and rendering included, as in eval_core.py
            sequences = eval_core.build_sequences(tasks, tok, config.seq_len)
            batch_tokens = args.batch_tokens or eval_core.default_batch_tokens(device)
            return sequences, eval_core.score_sequences(model, sequences, tok.bos_id, batch_tokens, 0, 1, device,
                                                        autocast, config.seq_len, progress=False)
        (sequences, fast), fast_s = timed(fast_path, device)
        fast_choices = eval_core.predictions(tasks, sequences, fast)
        with autocast:
            reference, reference_s = timed(lambda: reference_predictions(model, tasks, tok, config.seq_len), device)
    same = sum(a == b for fc, rc in zip(fast_choices, reference) for a, b in zip(fc, rc))
    total = sum(len(c) for c in reference)
    core_fast = eval_core.core_score(tasks, [eval_core.accuracy(t, c) for t, c in zip(tasks, fast_choices)])[0]
    core_ref = eval_core.core_score(tasks, [eval_core.accuracy(t, c) for t, c in zip(tasks, reference)])[0]
    tokens = sum(len(s.tokens) for s in sequences)
    params = sum(p.numel() for p in model.parameters())
    line = (f"{len(tasks)} tasks, {total} examples, {len(sequences)} prompts, {tokens:,} tokens; model {params:,} "
            f"parameters, seq_len {config.seq_len}, device {device}: fast {fast_s:.2f} s, reference {reference_s:.2f} s "
            f"({reference_s / fast_s:.1f}x); same choice on {same}/{total} examples; CORE fast {core_fast:.6f}, "
            f"reference {core_ref:.6f}")
    print(line)
    if not args.no_record:
        path = record("core-fast-vs-reference", f"speed-up {reference_s / fast_s:.2f}x (fast {fast_s:.2f} s, reference "
                      f"{reference_s:.2f} s), "
                      f"{same}/{total} examples identical, {params / 1e6:.1f} M params, {tokens:,} prompt tokens",
                      f"torch {torch.__version__}", line + "\n")
        print(f"appended to bench/results.md; raw output in {path}")


if __name__ == "__main__":
    main()
