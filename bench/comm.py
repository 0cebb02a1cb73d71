"""Communication and optimizer time of one training step at 8xH100: a model, and (with several GPUs) a measurement.

    python -m bench.comm                                         # the model, depth 12 and 24, 8 GPUs
    python -m bench.comm --bus-bw 450 --latency-us 10            # other interconnect figures
    torchrun --standalone --nproc_per_node=8 -m bench.comm --measure --depth 12   # measured, beside the model

THE MODEL (arithmetic, not a measurement). The shapes are the presets' (depth 12: gpt2-small-fineweb, 524,288
tokens a step; depth 24: gpt2-core, 1,048,576), built on the meta device, and the buckets are the ones
harness.loop.build_optimizer makes from train_gpt.py's parameter table. Compute is the model FLOPs of a step
(harness/trace.py's count) over world x peak x --mfu. A collective of S bytes (NCCL's "size": the whole buffer)
takes latency + S x factor / bus bandwidth, with nccl-tests' factors (doc/PERFORMANCE.md in NVIDIA/nccl-tests):
all-reduce 2(n-1)/n, reduce-scatter and all-gather (n-1)/n, broadcast 1. Element-wise passes cost their bytes
over --hbm-bw; Newton-Schulz costs its FLOPs over peak x --ns-mfu, or its kernel launches x --launch-us when that
is longer (eager, one matrix at a time). One stream computes and one communicates; NCCL's own use of the SMs is
not charged.
- today (the design before the sharded optimizer): after the backward, one fp32 all-reduce per parameter, a
  divide pass, the whole unfused AdamW and Muon's momentum on every process (Muon's parameters: those whose row
  of train_gpt.parameter_table says "muon"), Muon's orthogonalization on every world-th matrix one at a time,
  then one fp32 broadcast per matrix; nothing overlaps.
- new (harness/optim.py, ShardedOptimizer): the reduce-scatters go out in the buckets' order, each when the last
  backward has finished the bucket; after the backward, each bucket's shard update (fused AdamW, or Muon with
  each stack of same-shape matrices in one compiled call) waits for its reduce-scatter, then its all-gather goes
  out; the step ends with the Muon updates applied and the gradient buffers zeroed. When the backward finishes a
  bucket depends on how the model runs, so there are two lines:
  "overlapped": eager autograd (or a compile per block: a backward node per block). The backward runs the head,
    the blocks from the last, each value-embedding table right after its block (GPT.forward looks it up there),
    the token embedding last; a bucket is finished when the backward has done its last parameter's block (a
    block's scalars are its own), each block taking an equal share of the last micro-step's backward (that share
    of the matmul FLOPs). The token embedding's bucket goes out at the end.
  "whole-model compile": the harness's torch.compile of the whole model on the GPU is one autograd node, whose
    backward hands out every gradient at once at its end (harness/comm.py, Communication): every reduce-scatter
    starts after the backward, and only the optimizer math overlaps the communication.
Defaults: bus bandwidth 350 GB/s, latency 20 us per collective. An H100 SXM's NVLink 4 moves 450 GB/s each way
(NVIDIA's 900 GB/s bidirectional); nccl-tests' all-reduce on 8xH100 SXM reports a bus bandwidth of about 450-480
GB/s at 1 GB and above, less at the 10-500 MB of these buckets; NCCL's small-message latency on NVLink is about
10-30 us. 350 GB/s and 20 us are the conservative ends, the GPU review's (/work/shared/GPU_AUDIT.md) assumption.
HBM 3.35 TB/s at 70% (H100 SXM's HBM3), peak 989.5 TFLOP/s bf16, step MFU 45% (modded-nanogpt's record runs at
about 43%).
"""

import argparse
import math
import os
import time

import torch

import train_gpt
from harness.comm import BUS_BANDWIDTH, LATENCY_S, Comm, collective_seconds, step_traffic
from harness.config import parse_args
from harness.device import autocast_for, init_distributed, synchronize
from harness.loop import build_optimizer
from harness.optim import ElementShard, assign
from harness.trace import flops_per_token

PRESETS = {12: "gpt2-small-fineweb", 24: "gpt2-core"}
VOCABS = {12: 50257, 24: 32768}  # GPT-2's tokenizer, nanochat's 32k


def shape_config(depth, args):
    config = parse_args(train_gpt.Config, train_gpt.PRESETS, [
        f"--preset={PRESETS[depth]}", "--fused_adam=false", f"--bucket_mb={args.bucket_mb}",
        f"--reduce_dtype={args.reduce_dtype}", f"--muon_split_qkv={args.muon_split_qkv}"])
    config.depth = depth
    return config


def plan(config, vocab, world, bf16_embeddings=False):
    """The model's parameters and the optimizer's buckets for `world` processes, on the meta device (no memory)."""
    with torch.device("meta"):
        model = train_gpt.GPT(config, vocab)
    if bf16_embeddings:  # as issue 10's bf16-table switch would make them
        for table in [model.embed, *model.value_embeds]:
            table.to(torch.bfloat16)
    accum = config.total_batch_tokens // (world * config.device_batch * config.seq_len)
    return model, build_optimizer(train_gpt, model, config, Comm(0, world), max(accum, 1))


def muon_matrices(model, config):
    """Muon's parameters: those whose row of train_gpt.parameter_table gives the update rule "muon"."""
    assigned = assign(model, train_gpt.parameter_table(config, model), train_gpt.UPDATE_RULES)
    return [p for p, (_, row) in assigned.items() if row.update == "muon"]


def collective(kind, nbytes, world, args):
    return collective_seconds(kind, nbytes, world, args.bus_bw * 1e9, args.latency_us * 1e-6)


def passes(nbytes, args):
    return nbytes / (args.hbm_bw * 1e12 * args.hbm_eff)


def ns_flops(count, rows, cols, steps):
    m, n = min(rows, cols), max(rows, cols)
    return count * steps * (4 * m * m * n + 2 * m ** 3)


def model_today(model, config, world, backward_end, args):
    """Seconds after the backward, and the optimizer state per process (bytes), of the design before."""
    params = list(model.parameters())
    matrices = muon_matrices(model, config)
    n_all, n_muon = sum(p.numel() for p in params), sum(p.numel() for p in matrices)
    n_adam = n_all - n_muon
    t = sum(collective("all_reduce", 4 * p.numel(), world, args) for p in params)  # one all-reduce each
    t += collective("all_reduce", 4, world, args)  # the loss
    t += passes(8 * n_all, args)  # divide every gradient
    t += passes(72 * n_adam, args)  # foreach AdamW: about nine passes of 8 bytes an element
    t += passes(12 * n_muon, args)  # momentum of every matrix
    for i, p in enumerate(matrices):
        if i % world == 0:  # the busiest process: rank 0 owns matrices 0, world, 2 world, ...
            work = ns_flops(1, *p.shape, config.ns_steps) / (989.5e12 * args.ns_mfu) + passes(18 * p.numel(), args)
            t += max(work, 45 * args.launch_us * 1e-6)  # ~45 eager kernels a matrix
    t += sum(collective("broadcast", 4 * p.numel(), world, args) for p in matrices)  # broadcasts
    t += passes(20 * n_muon, args)  # weight decay and update
    return t, 8 * n_adam + 4 * n_muon


def model_new(model, opt, config, world, backward_start, backward_end, args, overlap=True):
    """Seconds after the backward, and the optimizer state per process (bytes, the busiest process). overlap: the
    buckets go out as the backward finishes them (eager); False: all at the backward's end (a whole-model compile)."""
    reduce_bytes = 2 if config.reduce_dtype == "bf16" else 4
    blocks = len(model.blocks)
    head = model.head.weight.numel()
    per_block = sum(p.numel() for p in model.blocks[0].parameters() if p.ndim == 2)
    names = {p: n for n, p in model.named_parameters()}

    def block_of(name):  # the block whose backward gives the parameter its gradient (blocks: the head; -1: the end)
        if name.startswith("blocks."):
            return int(name.split(".")[1])
        if name.startswith("value_embeds."):  # right after its block's (GPT.forward looks it up in the block loop)
            return model.value_layers[int(name.split(".")[1])]
        return blocks if name == "head.weight" else -1

    def ready(bucket):  # when the last backward has finished the bucket's gradients (share of matmul FLOPs)
        if not overlap:
            return backward_end
        first_block = min(block_of(names[p]) for p in bucket.params)  # the backward reaches it last
        done = head + (blocks - max(0, first_block)) * per_block
        return backward_start + (backward_end - backward_start) * done / (head + blocks * per_block)

    comm_free, compute_free, state, elementwise = 0.0, backward_end, [0] * world, 0
    reduced = []
    for bucket in opt.buckets:
        start = max(ready(bucket), comm_free)
        comm_free = start + collective("reduce_scatter", reduce_bytes * bucket.layout.numel, world, args)
        reduced.append(comm_free)
    gathered = []
    for bucket, shard, done in zip(opt.buckets, opt.shards, reduced):
        layout = bucket.layout
        if isinstance(shard, ElementShard):
            work = passes((8 + 28) * layout.shard, args)  # divide, fused AdamW (p, g, m, v in; p, m, v out)
            for r in range(world):  # AdamW state: only the real elements of each process's slice
                lo, hi = r * layout.shard, (r + 1) * layout.shard
                state[r] += 8 * sum(max(0, min(o + p.numel(), hi) - max(o, lo)) for p, o in
                                    zip(bucket.params, layout.offsets))
            gather_bytes = bucket.params[0].element_size() * layout.numel
        else:
            stacks = layout.stacks
            work = max(sum(ns_flops(*shape, config.ns_steps) for _, _, shape in mine) / (989.5e12 * args.ns_mfu)
                       + passes(34 * sum(math.prod(shape) for _, _, shape in mine), args) for mine in stacks)
            for r, mine in enumerate(stacks):
                state[r] += 4 * sum(math.prod(shape) for _, _, shape in mine)
            gather_bytes = 2 * layout.numel
            elementwise += 10 * sum(p.numel() for p in bucket.params)  # every process applies every update
        compute_free = max(compute_free, done) + work
        start = max(compute_free, comm_free)
        comm_free = start + collective("all_gather", gather_bytes, world, args)
        gathered.append(comm_free)
    grads = sum(b.layout.numel * b.grads.element_size() for b in opt.buckets)
    end = max(compute_free, max(gathered)) + passes(elementwise + grads, args)  # updates; zero the buckets
    end += collective("all_reduce", 4, world, args)  # the loss
    return end - backward_end, max(state)


def modelled(depth, args, out):
    config = shape_config(depth, args)
    vocab = VOCABS[depth]
    flops = flops_per_token(train_gpt, config, vocab) * config.total_batch_tokens
    compute = flops / (args.world * 989.5e12 * args.mfu)
    accum = config.total_batch_tokens // (args.world * config.device_batch * config.seq_len)
    backward_start = compute - compute / max(accum, 1) * 2 / 3  # the last micro-step's backward: 2/3 of it
    model, opt = plan(config, vocab, args.world, args.bf16_embeddings)
    today, today_state = model_today(model, config, args.world, compute, args)
    new, new_state = model_new(model, opt, config, args.world, backward_start, compute, args)
    whole, _ = model_new(model, opt, config, args.world, backward_start, compute, args, overlap=False)
    params = sum(p.numel() for p in model.parameters())
    traffic = step_traffic([b.layout for b in opt.buckets], [b.reduce_dtype for b in opt.buckets],
                           [s.values.dtype if isinstance(s, ElementShard) else torch.bfloat16 for s in opt.shards],
                           args.world)
    out(f"depth {depth} ({PRESETS[depth]}: {params / 1e6:,.0f} M parameters, {config.total_batch_tokens:,} tokens a "
        f"step, {args.world} GPUs): compute {1000 * compute:.1f} ms a step (model FLOPs at {args.mfu:.0%} MFU)")
    out(f"  today: {len(list(model.parameters())) + 1} all-reduces + {len(muon_matrices(model, config))} "
        f"broadcasts, {1000 * today:.1f} ms after the backward = {today / (compute + today):.1%} of the step; "
        f"optimizer state {today_state / 2**30:.2f} GiB a process")
    out(f"  new:   {len(opt.buckets)} buckets ({traffic['reduce_scatter'][1] / 2**20:,.0f} MiB reduce-scattered in "
        f"{config.reduce_dtype}, {traffic['all_gather'][1] / 2**20:,.0f} MiB all-gathered), {1000 * new:.1f} ms after "
        f"the backward = {new / (compute + new):.1%} of the step, overlapped (buckets out as the backward finishes "
        f"them: eager, or a compile per block); optimizer state {new_state / 2**30:.2f} GiB a process "
        f"({new_state / today_state:.3f} of today's)")
    out(f"         whole-model compile (every gradient at the backward's end): {1000 * whole:.1f} ms after the "
        f"backward = {whole / (compute + whole):.1%} of the step")
    return (config, vocab, compute, today / (compute + today), new / (compute + new), whole / (compute + whole),
            new_state / today_state)


def measure(depth, args, out):
    """Times the optimizer step (after a synchronized backward) of today's design and the new one on this
    machine's processes, and a whole step (forward, backward, optimizer) of the new one, on random tokens."""
    from tests.comm_reference import ReferenceOptimizer
    rank, world, device = init_distributed(train_gpt.Config())
    config = shape_config(depth, args) if not args.tiny else train_gpt.Config(
        depth=2, model_dim=32, head_dim=16, seq_len=64, device_batch=2, total_batch_tokens=128 * world,
        bucket_mb=args.bucket_mb)
    config.device_batch = args.device_batch or config.device_batch
    config.fused_adam = "auto"
    vocab = 512 if args.tiny else VOCABS[depth]
    accum = max(config.total_batch_tokens // (world * config.device_batch * config.seq_len), 1)
    use_compile = device.type == "cuda"
    times = {}
    for design in ("today", "new"):
        torch.manual_seed(0)
        model = train_gpt.GPT(config, vocab).to(device)
        forward = torch.compile(model) if use_compile else model
        opt = (ReferenceOptimizer(model, config, rank, world) if design == "today" else
               build_optimizer(train_gpt, model, config, Comm(rank, world), accum, use_compile))
        opt.set_schedule(1.0, momentum=config.muon_momentum)  # the peak lr and momentum, for either design
        step_times, opt_times = [], []
        for step in range(args.warmup + args.steps):
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(accum):
                idx = torch.randint(0, vocab, (config.device_batch, config.seq_len + 1), device=device)
                with autocast_for(device):
                    loss = forward(idx[:, :-1], idx[:, 1:])
                (loss / accum).backward()
            synchronize(device)
            t1 = time.perf_counter()
            opt.step()
            synchronize(device)
            t2 = time.perf_counter()
            if step >= args.warmup:
                step_times.append(t2 - t0)
                opt_times.append(t2 - t1)
        times[design] = (sorted(step_times)[len(step_times) // 2], sorted(opt_times)[len(opt_times) // 2])
        del model, forward, opt
    if rank == 0:
        for design, (step_s, opt_s) in times.items():
            out(f"  measured {design}: optimizer step with its communication {1000 * opt_s:.1f} ms of a "
                f"{1000 * step_s:.1f} ms step = {opt_s / step_s:.1%} (median of {args.steps}; {world} processes, "
                f"{device.type}; the new design's reduce-scatters overlap the backward, whose time includes them)")
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.comm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, nargs="+", default=[12, 24], choices=[12, 24])
    parser.add_argument("--world", type=int, default=8, help="GPUs in the model")
    parser.add_argument("--bus-bw", type=float, default=BUS_BANDWIDTH / 1e9, help="NCCL bus bandwidth, GB/s")
    parser.add_argument("--latency-us", type=float, default=LATENCY_S * 1e6, help="per collective, microseconds")
    parser.add_argument("--hbm-bw", type=float, default=3.35, help="TB/s")
    parser.add_argument("--hbm-eff", type=float, default=0.7)
    parser.add_argument("--mfu", type=float, default=0.45, help="of the step's model FLOPs")
    parser.add_argument("--ns-mfu", type=float, default=0.4, help="Newton-Schulz matmuls' share of the peak")
    parser.add_argument("--launch-us", type=float, default=5.0, help="per eager kernel launch")
    parser.add_argument("--bucket-mb", type=int, default=train_gpt.Config.bucket_mb)
    parser.add_argument("--reduce-dtype", default=train_gpt.Config.reduce_dtype, choices=["fp32", "bf16"])
    parser.add_argument("--muon-split-qkv", default="false", choices=["true", "false"])
    parser.add_argument("--bf16-embeddings", action="store_true", help="model bf16 embedding tables")
    parser.add_argument("--measure", action="store_true", help="also time both designs on this machine's processes")
    parser.add_argument("--tiny", action="store_true", help="--measure on a tiny model (a CPU check of the code)")
    parser.add_argument("--device-batch", type=int, default=0, help="--measure: rows a pass (default: the preset's)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    lines = []
    rank = int(os.environ.get("RANK", 0))

    def out(line):
        if rank == 0:
            print(line, flush=True)
            lines.append(line)
    out(f"model: {args.world} GPUs, bus {args.bus_bw:g} GB/s, latency {args.latency_us:g} us, HBM {args.hbm_bw:g} TB/s "
        f"x {args.hbm_eff:g}, step MFU {args.mfu:g}, Newton-Schulz MFU {args.ns_mfu:g}, launch {args.launch_us:g} us, "
        f"buckets {args.bucket_mb} MB, gradients in {args.reduce_dtype}, split qkv {args.muon_split_qkv}, bf16 "
        f"embeddings {args.bf16_embeddings}")
    summary = []
    for depth in args.depth:
        _, _, _, today, new, whole, memory = modelled(depth, args, out)
        summary.append(f"d{depth} {today:.1%} -> {new:.1%} overlapped ({whole:.1%} whole-model compile), state "
                       f"x{memory:.3f}")
        if args.measure:
            measure(depth, args, out)
    if rank == 0 and not args.no_record:
        from bench.record import record
        path = record("comm-model" + ("+measured" if args.measure else ""),
                      "modelled comm+optimizer share of a step at 8xH100: " + "; ".join(summary),
                      f"torch {torch.__version__}", "\n".join(lines) + "\n",
                      device=None if args.measure else "model, computed on CPU")
        print(f"appended to bench/results.md; raw output in {path}")
    if args.measure and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
