"""harness/dryrun.py: `python train_gpt.py --preset=... --dry_run [--gpu=H100] [--world=8]`: what a run would be, with
no GPU, no data (only the tokenizer's tokenizer.json) and no memory for the model (everything on the meta device).

Each figure says how it was got:
- exact: counted from the recipe's own objects. The parameters by update rule (parameter_table), the FLOPs per token
  (harness/trace.py), steps and tokens (harness.loop.num_training_steps), and the per-GPU weights, gradient buffers
  and optimizer state and buffers: the real ShardedOptimizer is built on the meta device for every rank of the
  planned world (the layouts of harness/comm.py on the real shapes) and stepped once through the recipe's own
  train_step, and its tensors are summed by storage; the figure is the busiest rank's.
- modelled: the saved activations of one micro-batch, eager (the forward's saved tensors on the meta device) and
  compiled (what Inductor's partitioner keeps for the backward of the AOTAutograd graph, traced on fake tensors),
  both with CUDA's bf16 autocast emulated and attention as a fused kernel that keeps q, k, v, its output and the
  log-sum-exp, the peak counting the one the run's --compile uses; the transients, the step time (a roofline at an
  assumed MFU plus the collectives at an assumed bus bandwidth, as bench/comm.py models them) and what follows from
  it. Each says its assumption and error bar; the step time is multiplied by the GPU's factor in
  bench/calibration.json: 1.0 ("uncalibrated") until a GPU run measures it, or "calibrated on published figures"
  (bench.calibrate --published: a published step time of the same math) meanwhile.
"""

import contextlib
import dataclasses
import json
import math
import os
import types
from typing import Optional
from unittest import mock

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from harness.comm import BUS_BANDWIDTH, LATENCY_S, Comm, collective_seconds
from harness.config import ConfigError, check_batch, check_options
from harness.loop import num_training_steps
from harness.schedule import BatchSchedule
from harness.optim import ShardedOptimizer, assign
from harness.runlog import PEAK_BF16_FLOPS
from harness.trace import stage_flops_per_token, trace

# The GPUs a run can be planned for: memory (nominal, decimal bytes; the usable total is a little above it, the CUDA
# context and the allocator's slack eat into it), HBM bandwidth, and the NCCL bus bandwidth assumed over NVLink
# (harness.comm's conservative BUS_BANDWIDTH for H100/H200's NVLink 4; A100's NVLink 3 has half its bandwidth).
GPUS = {"H100": {"memory": 80e9, "hbm": 3.35e12, "bus": BUS_BANDWIDTH},
        "H200": {"memory": 141e9, "hbm": 4.8e12, "bus": BUS_BANDWIDTH},
        "A100": {"memory": 80e9, "hbm": 2.0e12, "bus": BUS_BANDWIDTH / 2}}
MFU, MFU_RANGE = 0.45, (0.35, 0.55)  # of the step's model FLOPs (bench/comm.py's; modded-nanogpt runs at about 43%)
BUS_RANGE = (0.7, 1.3)      # the bus bandwidth's error bar, as factors
ACTIVATION_ERROR = 0.15     # eager saved activations on a GPU against this emulation: assumed, not measured
COMPILED_ACTIVATION_ERROR = 0.2  # compiled ones on a GPU against the traced graph: assumed, not measured (the trace
                            # agrees with a real compiled step on the CPU within COMPILED_CPU_AGREEMENT, but CUDA's
                            # graph differs: FlexAttention and its block masks, CUDA's decompositions and passes)
COMPILED_CPU_AGREEMENT = 0.02  # the traced figure against a real compiled CPU step (tests/test_dryrun.py): measured
KNOWN_VOCAB = {"gpt2-core": 32768, "gpt2-small-fineweb": 50257}  # when the preset's tokenizer is not here yet
TIGHT = 0.9                 # of the GPU's memory: above it a run is "tight"
CALIBRATION = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "calibration.json")


def vocab_of(config):
    """(vocab size, BOS id, where they came from): tokenizer.json only (not the ranks), else the preset's known
    vocab."""
    path = os.path.join(config.tokenizer, "tokenizer.json")
    try:
        with open(path) as f:
            meta = json.load(f)
        return meta["vocab_size"], meta["special_tokens"].get(meta["bos_token"], 0), f"from {path}"
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    if config.preset in KNOWN_VOCAB:
        return KNOWN_VOCAB[config.preset], 0, f"the {config.preset} preset's known vocab ({path} is not here)"
    raise ConfigError(f"--dry_run: {path} is missing and --preset={config.preset or '(none)'} has no known vocab "
                      f"({', '.join(KNOWN_VOCAB)} do); give a --tokenizer folder")


class PlanComm(Comm):
    """A Comm for one rank of a planned world that sends nothing: the layouts and buffers are the real ones."""

    def _start(self, collective, output, input):
        return None

    def all_reduce(self, tensor):
        self._count("all_reduce", tensor)


def meta_model(recipe, config, vocab, bos_id):
    with torch.device("meta"):
        return recipe.GPT(config, vocab, bos_id)


def plan_rank(recipe, config, vocab, bos_id, world, rank, ready_order):
    """The model and the real ShardedOptimizer of one rank, on the meta device, after one step of the recipe's own
    train_step (the update rules make their state on their first step); the forward is a stand-in that touches
    every parameter, so that every gradient bucket fills and goes out as in a run."""
    model = meta_model(recipe, config, vocab, bos_id)
    accum = config.total_batch_tokens // (world * config.device_batch * config.seq_len)
    optimizer = ShardedOptimizer(model, recipe.parameter_table(config, model), recipe.UPDATE_RULES, config,
                                 PlanComm(rank, world), accum, ready_order)
    params = list(model.parameters())
    rows = torch.zeros(accum * config.device_batch, config.seq_len, dtype=torch.long, device="meta")
    trainer = types.SimpleNamespace(
        config=config, device=torch.device("meta"), optimizer=optimizer, model=model, rank=rank, world=world,
        forward=lambda inputs, targets: sum((p.float() * 0).sum() for p in params), accum_steps=accum,
        loader=types.SimpleNamespace(next_batch=lambda: (rows, rows)), autocast=contextlib.nullcontext(),
        mean_over_processes=lambda total: total)
    recipe.train_step(trainer, 0, 1)
    return model, optimizer


def storages(tensors, skip=()):
    """{storage id: bytes} of the tensors' storages (a view counts its whole storage once), less those in skip."""
    out = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            if storage._cdata not in skip:
                out[storage._cdata] = storage.nbytes()
    return out


def static_bytes(model, optimizer):
    """What one process holds for the whole run, by kind, in bytes: weights (the parameters, and the element
    buckets' padded flat buffers they become views of, and the model's buffers), gradients (the buckets' flat
    buffers and their reduce buffers), optimizer state (the update rules' state) and optimizer buffers (anything
    else the shards keep: the matrix rules' gathered directions or steps, fp32 work copies)."""
    weights = storages([*model.parameters(), *model.buffers()])
    gradients = storages([t for b in optimizer.buckets for t in vars(b).values()], weights)
    state = storages([t for shard in optimizer.shards for *_, s in shard.states() for t in s.values()],
                     {**weights, **gradients})
    buffers = storages([t for shard in optimizer.shards for t in vars(shard).values()],
                       {**weights, **gradients, **state})
    kinds = (("weights", weights), ("gradients", gradients), ("optimizer state", state), ("optimizer buffers", buffers))
    return {name: sum(kind.values()) for name, kind in kinds}


def plan_world(recipe, config, vocab, bos_id, world, ready_order):
    """[(model, optimizer)] of every rank of the planned world, all on the meta device."""
    return [plan_rank(recipe, config, vocab, bos_id, world, rank, ready_order) for rank in range(world)]


# -----------------------------------------------------------------------------
# Saved activations: one micro-batch's eager forward on the meta device, each saved tensor's storage counted once


def _fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention as a fused kernel (flash, cuDNN, memory-efficient SDPA; FlexAttention): its output and the fp32
    log-sum-exp of each query's scores, never the scores. Shapes only: the dry run reads no values."""
    return torch.empty_like(q), q.new_empty(q.shape[:-1], dtype=torch.float32)


def _fused_attention_backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              out: torch.Tensor, lse: torch.Tensor,
                              mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


# Custom ops (not an autograd.Function), so that a traced graph keeps attention as one node, which the partitioner
# can neither split nor recompute: as Inductor keeps SDPA's and FlexAttention's kernels.
fused_attention = torch.library.custom_op("dryrun::fused_attention", _fused_attention, mutates_args=())
fused_attention.register_fake(_fused_attention)
fused_attention_backward = torch.library.custom_op("dryrun::fused_attention_backward", _fused_attention_backward,
                                                   mutates_args=())
fused_attention_backward.register_fake(_fused_attention_backward)


def _keep_for_backward(ctx, inputs, output):
    """What the fused kernels keep: q, k, v, the output, the log-sum-exp, and the mask when one is given."""
    ctx.save_for_backward(*inputs, *output)


def _attention_backward(ctx, grad, grad_lse):
    q, k, v, mask, out, lse = ctx.saved_tensors
    return (*fused_attention_backward(grad, q, k, v, out, lse, mask), None)


fused_attention.register_autograd(_attention_backward, setup_context=_keep_for_backward)


LOW_PRECISION = {F.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.bmm,
                 F.scaled_dot_product_attention}  # the ops CUDA autocast runs in bf16 (those this model calls)


class MetaKernels(TorchFunctionMode):
    """On the meta device (or fake tensors): CUDA's bf16 autocast emulated on matmul-class ops (autocast has no meta
    key) when `autocast`, and scaled_dot_product_attention as fused_attention (meta's own SDPA is the math path,
    which keeps every score)."""

    def __init__(self, autocast):
        super().__init__()
        self.autocast, self.casts = autocast, {}

    def cast(self, t):
        if not (isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.bfloat16):
            return t
        if not t.requires_grad or t.grad_fn is not None:
            return t.to(torch.bfloat16)
        return self.casts.setdefault(id(t), t.to(torch.bfloat16))  # autocast caches its casts of weights

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.autocast and func in LOW_PRECISION:
            args = tuple(self.cast(a) for a in args)
        if func is F.scaled_dot_product_attention:
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            return fused_attention(*args[:3], mask)[0]
        return func(*args, **kwargs)


@contextlib.contextmanager
def meta_autocast(enabled, device="meta"):
    """What the model asks of autocast on `device` (meta, or the CPU of fake tensors): on (bf16) when emulated, else
    off."""
    real_enabled, real_dtype = torch.is_autocast_enabled, torch.get_autocast_dtype
    answer = lambda real, value: lambda *a: value if a and a[0] == device else real(*a)
    with mock.patch.object(torch, "is_autocast_enabled", answer(real_enabled, enabled)), \
            mock.patch.object(torch, "get_autocast_dtype", answer(real_dtype, torch.bfloat16)):
        yield


def saved_bytes(model, idx, autocast, kernels=None):
    """Bytes of the tensors one training forward of idx keeps for its backward (storages once each; the parameters
    themselves not: they are weights). On the meta device, through MetaKernels; elsewhere `kernels` (None: as is)."""
    params = storages(model.parameters())
    seen = {}

    def pack(t):
        seen.update(storages([t], params))
        return t
    modes = (MetaKernels(autocast), meta_autocast(autocast)) if idx.device.type == "meta" else (kernels,)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), contextlib.ExitStack() as stack:
        for mode in filter(None, modes):
            stack.enter_context(mode)
        model(idx, idx)
    return sum(seen.values())


def activation_model(recipe, config, vocab, bos_id, autocast=True):
    """Saved activations as (fixed bytes, bytes per row of a micro-batch): measured at 1 and 2 rows (the fixed part:
    masks, bf16 copies of the weights)."""
    model = meta_model(recipe, config, vocab, bos_id)
    one, two = (saved_bytes(model, torch.zeros(rows, config.seq_len, dtype=torch.long, device="meta"), autocast)
                for rows in (1, 2))
    return one - (two - one), two - one


# -----------------------------------------------------------------------------
# Saved activations of a compiled step: what the forward graph hands to the backward once Inductor's partitioner
# (its joint-graph passes, then min_cut_rematerialization_partition) has chosen what to keep and what the backward
# recomputes. The training forward and loss are traced by AOTAutograd on fake tensors (no memory), with Inductor's
# decompositions, emulated autocast and fused_attention, and the partitioner's choice read off the backward graph's
# inputs; nothing is compiled or run. Fake CPU tensors, not meta ones: AOTAutograd on meta tensors loses the
# cross-entropy's backward (aten::nll_loss has no autograd kernel there), and the graph would keep next to nothing.


class _Partitioned(Exception):
    """Raised once the partitioner has chosen: the rest (compiling, running the graph) is not needed."""


def compiled_saved_bytes(model, rows, seq_len, autocast):
    """Bytes of the tensors the compiled forward of `rows` rows keeps for its backward (storages once each; the
    parameters and buffers not: they are weights), as Inductor's partitioner chooses them."""
    # private APIs, imported here: a torch that moved them costs the compiled figure only (compiled_or_eager), not
    # the dry run, nor harness/smoke.py, which imports this module
    from torch._functorch.aot_autograd import aot_function
    from torch._inductor.compile_fx import partition_fn as inductor_partition
    from torch._inductor.decomposition import select_decomp_table
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.func import functional_call
    with FakeTensorMode():
        params = {name: torch.empty(p.shape, dtype=p.dtype, requires_grad=p.requires_grad)
                  for name, p in model.named_parameters()}
        buffers = {name: torch.empty(b.shape, dtype=b.dtype) for name, b in model.named_buffers()}
        idx = torch.zeros(rows, seq_len, dtype=torch.long)
    weights, saved = len(params) + len(buffers), []

    def partition(joint, inputs, **kwargs):
        # the weights live all step whatever the graph keeps (Dynamo marks them static inputs for Inductor)
        kwargs["static_lifetime_input_indices"] = list(range(weights))
        _, backward = inductor_partition(joint, inputs, **kwargs)
        weight_names = {node.name for node in joint.graph.find_nodes(op="placeholder")[:weights]}
        saved.extend(node.meta["val"] for node in backward.graph.find_nodes(op="placeholder")
                     if node.name not in weight_names and not node.name.startswith("tangents"))
        raise _Partitioned

    def step(params, buffers, idx):
        return functional_call(model, (params, buffers), (idx, idx))
    traced = aot_function(step, fw_compiler=None, partition_fn=partition, decompositions=select_decomp_table())
    with MetaKernels(autocast), meta_autocast(autocast, "cpu"), contextlib.suppress(_Partitioned):
        traced(params, buffers, idx)
    return sum(storages(saved).values())


def at_depth(config, depth, dim):
    return dataclasses.replace(config, depth=depth, model_dim=dim)


def reduced_depths(recipe, config):
    """(a shallow depth, the period of layers, the width) to trace the model at that depth and a period deeper, the
    same width: for train_gpt's GPT, whose blocks repeat every period (the window pattern counts from the first
    layer, value embeddings every other layer from the last; the shallow depth is the full one's modulo the
    period, so that its last layers are the full model's kinds). None (trace every layer) when the recipe is not
    of that shape, when the full model is that shallow anyway, or when its parameters do not grow by the same
    count each period (its blocks do not repeat)."""
    if not all(hasattr(config, name) for name in ("depth", "model_dim", "window_pattern")) or \
            not hasattr(recipe, "derived"):
        return None
    period, dim = math.lcm(len(config.window_pattern), 2), recipe.derived(config)[0]
    low = period + config.depth % period
    if low + period >= config.depth:
        return None
    count = lambda depth: sum(p.numel() for p in meta_model(recipe, at_depth(config, depth, dim), 1, 0).parameters())
    low_count, high_count = count(low), count(low + period)
    if count(config.depth) * period != low_count * period + (high_count - low_count) * (config.depth - low):
        return None
    return low, period, dim


def compiled_activation_model(recipe, config, vocab, bos_id, autocast=True):
    """The compiled step's saved activations as (fixed bytes, bytes per row of a micro-batch, how they were got):
    traced at 1 and 2 rows. A deep model is traced at two reduced depths a period of layers apart and extrapolated
    per period (each period keeps the same: what the partitioner chooses is local to the layers; for gpt2-core the
    extrapolation equals the trace of all 24 layers), about half the time of tracing every layer."""
    reduced = reduced_depths(recipe, config)
    if reduced is None:
        model = meta_model(recipe, config, vocab, bos_id)
        one, two = (compiled_saved_bytes(model, rows, config.seq_len, autocast) for rows in (1, 2))
        return one - (two - one), two - one, "every layer traced"
    low, period, dim = reduced
    models = [meta_model(recipe, at_depth(config, depth, dim), vocab, bos_id) for depth in (low, low + period)]
    one, two = ([compiled_saved_bytes(model, rows, config.seq_len, autocast) for model in models] for rows in (1, 2))
    periods = (config.depth - low) // period
    one, two = (at_low + (at_high - at_low) * periods for at_low, at_high in (one, two))
    return one - (two - one), two - one, \
        f"traced at {low} and {low + period} layers, extrapolated per {period} to {config.depth}"


def compiled_or_eager(recipe, config, vocab, bos_id, eager):
    """compiled_activation_model, or eager's figure in its place (said so) when this torch cannot trace it: the trace
    leans on torch's private AOTAutograd and Inductor APIs, which a torch version may move."""
    try:
        return compiled_activation_model(recipe, config, vocab, bos_id)
    except Exception as e:  # any failure of the trace: the dry run still answers, with the larger (eager) figure
        return (*eager, f"NOT traced: torch {torch.__version__} could not ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:120]}); eager's figure stands in")


def transient_bytes(config, vocab, rows):
    """Modelled: the loss's backward at the start of the backward, beside the saved activations: the gradient of the
    fp32 soft-capped logits and of the logits before the cap (fp32), and the bf16 gradient of the head's output
    (--loss=chunked: a chunk of rows at a time)."""
    tokens = rows * config.seq_len if config.loss == "plain" else min(config.loss_chunk, rows * config.seq_len)
    padded = math.ceil(vocab / 128) * 128
    return tokens * (2 * 4 * vocab + 2 * padded)


def optimizer_transient(optimizer):
    """Modelled: Newton-Schulz on the largest stack a process orthogonalizes (bf16: the input and about four copies
    of it, and three Gram-sized products), after the backward (when the activations are freed)."""
    worst = 0
    for shard in optimizer.shards:
        for _, shape, _ in getattr(shard, "stacks", ()):
            count, rows, cols = shape
            small = min(rows, cols)
            worst = max(worst, 2 * (5 * count * rows * cols + 3 * count * small * small))
    return worst


# -----------------------------------------------------------------------------
# Time: a roofline and the collectives


def calibration(gpu):
    """(factor, note) of bench/calibration.json for this GPU: the measured step time over the modelled one."""
    try:
        with open(CALIBRATION) as f:
            entry = json.load(f).get(gpu, {})
    except (OSError, ValueError):
        entry = {}
    factor = float(entry.get("factor", 1.0))
    if entry.get("measured_by"):
        memory = entry.get("memory_ratio")
        memory = f"; peak memory measured x{memory:g} of the modelled (not applied)" if memory else ""
        return factor, f"calibrated x{factor:g} ({entry['measured_by']}{memory})"
    if entry.get("published_by"):
        return factor, f"calibrated on published figures x{factor:g} ({entry['published_by']}; no {gpu} run here yet)"
    return factor, f"uncalibrated (x{factor:g}: no {gpu} run has measured it; bench/calibration.json)"


def comm_seconds(optimizer, world, bus):
    """One step's collectives, one after another (a whole-model compile starts them all after the backward;
    harness/comm.py), each as harness.comm.collective_seconds models it: per bucket a reduce-scatter of its
    gradients and an all-gather of its results, and the loss's all-reduce."""
    total = collective_seconds("all_reduce", 4, world, bus)
    for bucket, shard in zip(optimizer.buckets, optimizer.shards):
        gathered = getattr(shard, "values", None)
        gather = (gathered if gathered is not None else shard.updates)
        total += collective_seconds("reduce_scatter", bucket.layout.numel * bucket.reduce_dtype.itemsize, world, bus)
        total += collective_seconds("all_gather", gather.numel() * gather.element_size(), world, bus)
    return total


def step_seconds(step_flops, world, peak, optimizer, spec, factor):
    """(modelled seconds a step, low, high): compute at MFU of the peak plus the collectives, times the calibration
    factor; the range from MFU_RANGE and BUS_RANGE."""
    def at(mfu, bus):
        return factor * (step_flops / (world * peak * mfu) + comm_seconds(optimizer, world, spec["bus"] * bus))
    return at(MFU, 1.0), at(MFU_RANGE[1], BUS_RANGE[1]), at(MFU_RANGE[0], BUS_RANGE[0])


# -----------------------------------------------------------------------------
# The plan and its report


def parameter_groups(recipe, config, model):
    """{update rule: (parameters, of them counted for --tokens_per_param)} by the recipe's parameter table."""
    groups = {}
    for p, (_, row) in assign(model, recipe.parameter_table(config, model), recipe.UPDATE_RULES).items():
        total, counted = groups.get(row.update, (0, 0))
        groups[row.update] = (total + p.numel(), counted + p.numel() * row.counts)
    return groups


def compatible_batches(config, world):
    """The --device_batch values whose micro-batches split the global batch evenly over `world` processes."""
    rows = config.total_batch_tokens // config.seq_len
    return [d for d in range(1, rows // world + 1) if config.total_batch_tokens % (world * d * config.seq_len) == 0]


def compiles(config):
    """Whether the planned run compiles its model: --compile=auto does on CUDA (a planned run is on GPUs), true and
    blocks do. For blocks the compiled figure too: each block's graph is partitioned on its own by the same
    partitioner, and what crosses a block's edge (its input, the value embedding, the masks) is what the whole
    graph keeps there anyway; only the embedding lookups between the graphs run eagerly, and they keep the token
    ids."""
    return config.compile != "false"


def activations_at(plan, mode, rows):
    fixed, per_row = plan["activations_model"][mode]
    return fixed + per_row * rows


def memory_at(plan, rows):
    """Modelled peak bytes of the busiest process at `rows` rows a micro-batch: the static part, then the larger of
    the backward's start (saved activations, compiled or eager as the run is, and the loss's transient) and the
    optimizer step."""
    activations = activations_at(plan, plan["mode"], rows)
    transient = transient_bytes(plan["config"], plan["vocab"], rows)
    peak = plan["static_peak"] + max(activations + transient, plan["optimizer_transient"])
    return activations, transient, peak


def verdict(peak, memory):
    return "does not fit" if peak > memory else "tight" if peak > TIGHT * memory else "fits"


def planned_model_flops(recipe, config, schedule, steps, vocab, bos_id, flops_per_token):
    """Each step's tokens x its stage's FLOPs per token, as a run counts them."""
    if schedule.stage_fn is None:
        return schedule.total(steps) * flops_per_token
    return schedule.model_flops(steps, lambda stage: stage_flops_per_token(recipe, config, vocab, stage, bos_id or 0)
                                if stage else flops_per_token)


def plan(recipe, config, vocab=None, calibrated=True):
    """Every figure of the dry run, in a dict (no printing). vocab: the vocab size when no tokenizer is at hand (a
    benchmark on random tokens); calibrated=False: the step time without bench/calibration.json's factor (what
    bench.calibrate compares a measurement with)."""
    check_options(config)
    if hasattr(recipe, "check_config"):
        recipe.check_config(config)
    world = config.world or int(os.environ.get("WORLD_SIZE", 1))
    try:
        if hasattr(recipe, "batch_tokens"):  # a schedule: planned at its largest step (below)
            BatchSchedule(recipe, config).check(world, 1)
        else:
            check_batch(config, world)
    except ConfigError as e:
        raise ConfigError(f"{e}; at world {world} --device_batch may be "
                          f"{', '.join(map(str, compatible_batches(config, world))) or 'nothing'}") from None
    vocab, bos_id, vocab_source = vocab_of(config) if vocab is None else (vocab, 0, "given")
    spec, peak = GPUS[config.gpu], config.peak_flops or PEAK_BF16_FLOPS[config.gpu]
    model = meta_model(recipe, config, vocab, bos_id)
    flops_per_token, ready_order = trace(model, config.seq_len)
    groups = parameter_groups(recipe, config, model)
    counted = sum(c for _, c in groups.values())
    schedule = BatchSchedule(recipe, config)
    steps = num_training_steps(config, counted, flops_per_token, schedule)
    schedule.check(world, steps, getattr(config, "rows", "slices"))
    scheduled = config  # a batch schedule is planned at its largest step: its time, its accumulation
    config = dataclasses.replace(config, total_batch_tokens=max(schedule.values(steps)))
    step_flops = flops_per_token * config.total_batch_tokens
    ranks = plan_world(recipe, config, vocab, bos_id, world, ready_order)
    static = [static_bytes(model, optimizer) for model, optimizer in ranks]
    busiest = max(range(world), key=lambda r: sum(static[r].values()))
    factor, calibration_note = calibration(config.gpu) if calibrated else (1.0, "uncalibrated (x1: asked for)")
    eager = activation_model(recipe, config, vocab, bos_id)
    *compiled, traced = compiled_or_eager(recipe, config, vocab, bos_id, eager)  # the report has both figures
    out = dict(config=config, scheduled=scheduled, schedule=schedule.values(steps), world=world, gpu=config.gpu, vocab=vocab, vocab_source=vocab_source, spec=spec,
               peak_flops=peak, groups=groups, counted=counted, params=sum(t for t, _ in groups.values()),
               flops_per_token=flops_per_token, steps=steps, tokens=schedule.total(steps),
               model_flops=planned_model_flops(recipe, scheduled, schedule, steps, vocab, bos_id, flops_per_token), static=static[busiest], busiest=busiest,
               static_peak=sum(static[busiest].values()), models=[model for model, _ in ranks],
               accum=config.total_batch_tokens // (world * config.device_batch * config.seq_len),
               activations_model=dict(eager=eager, compiled=tuple(compiled)),
               mode="compiled" if compiles(config) else "eager", traced=traced,
               optimizer_transient=max(optimizer_transient(optimizer) for _, optimizer in ranks),
               step_s=step_seconds(step_flops, world, peak, ranks[busiest][1], spec, factor),
               calibration=calibration_note)
    out["activations"], out["transient"], out["peak"] = memory_at(out, config.device_batch)
    fitting = [d for d in compatible_batches(config, world) if memory_at(out, d)[2] <= TIGHT * spec["memory"]]
    out["largest_batch"] = max(fitting, default=None)
    out["verdict"] = verdict(out["peak"], spec["memory"])
    return out


def gb(nbytes):
    return f"{nbytes / 1e9:.2f} GB"


def use_note(p, mode):
    """Whether the peak counts this activations figure, and why."""
    compile = p["config"].compile
    if mode != p["mode"]:
        return f"not used (--compile={compile})"
    return f"used (--compile={compile}{' compiles on CUDA' if compile == 'auto' else ''})"


def report(p):
    """The dry run's lines: each figure labelled exact, spec or modelled (with its assumption and error bar)."""
    config, world, gpu, spec = p["config"], p["world"], p["gpu"], p["spec"]
    groups = ", ".join(f"{rule} {total:,} ({counted:,} counted)" for rule, (total, counted) in p["groups"].items())
    budget = "none set" if not config.flops_budget else (
        f"{config.flops_budget:.3g}: {'holds' if p['model_flops'] <= config.flops_budget else 'EXCEEDED'} "
        f"({p['model_flops'] / config.flops_budget:.1%} of it)")
    step, low, high = p["step_s"]
    tok_s = config.total_batch_tokens / step  # the largest step's (a batch schedule's time scales with its tokens)
    mfu = p["flops_per_token"] * tok_s / (world * p["peak_flops"])
    hours = [p["tokens"] / config.total_batch_tokens * s / 3600 for s in (step, low, high)]
    memory = [(label, kind, gb(p["static"][kind]), note) for label, kind, note in (
        ("exact", "weights", "parameters (element buckets' padded flat buffers) and model buffers"),
        ("exact", "gradients", "the buckets' flat buffers and their reduce buffers"),
        ("exact", "optimizer state", f"the update rules' state, sharded over {world} as the engine shards it"),
        ("exact", "optimizer buffers", "the matrix rules' gathered directions or steps, fp32 work copies"))]
    fp8 = "; --fp8 not modelled (bf16's figure)" if config.fp8 else ""
    memory += [("modelled", "saved, compiled", gb(activations_at(p, "compiled", config.device_batch)),
                f"+-{COMPILED_ACTIVATION_ERROR:.0%} (assumed; a real compiled CPU step within "
                f"{COMPILED_CPU_AGREEMENT:.0%}): one micro-batch's compiled step, what Inductor's partitioner keeps "
                f"for the backward (AOTAutograd's graph on fake tensors, {p['traced']}), bf16 autocast emulated, fused "
                f"attention{fp8}; {use_note(p, 'compiled')}"),
               ("modelled", "saved, eager", gb(activations_at(p, "eager", config.device_batch)),
                f"+-{ACTIVATION_ERROR:.0%} (assumed): one micro-batch's eager forward, bf16 autocast emulated, fused "
                f"attention{fp8}; {use_note(p, 'eager')}"),
               ("modelled", "transient", gb(p["transient"]), f"+-50% (rough): the {config.loss} loss's eager "
                f"backward (Newton-Schulz after the backward: {gb(p['optimizer_transient'])})")]
    largest = p["largest_batch"]
    return [
        f"dry run: --preset={config.preset or '(none)'} on {world} x {gpu} (planned: no GPU used, the model on the "
        f"meta device, no data read)",
        f"  vocab {p['vocab']:,}: {p['vocab_source']}",
        f"[exact]    parameters {p['params']:,} by update rule: {groups}; counted for --tokens_per_param "
        f"{p['counted']:,}",
        f"[exact]    FLOPs per token (training, harness.trace) {p['flops_per_token']:,}",
        f"[exact]    {p['steps']:,} steps x "
        f"{' to '.join(f'{b:,}' for b in dict.fromkeys((p['schedule'][0], p['schedule'][-1])))} tokens = "
        f"{p['tokens']:,} tokens "
        f"({p['tokens'] / p['counted']:.2f} per counted parameter)",
        f"[exact]    model FLOPs {p['model_flops']:.4g}; --flops_budget {budget}",
        f"[spec]     peak {p['peak_flops'] / 1e12:g} TFLOP/s dense bf16 per {gpu}; memory {spec['memory'] / 1e9:g} GB",
        f"memory per GPU (GB = 1e9 bytes; rank {p['busiest']}, the busiest of {world}; --device_batch="
        f"{config.device_batch}, gradient accumulation {p['accum']}):",
        *[f"[{label}]{' ' * (9 - len(label))}{kind:<18} {size:>9}  {note}" for label, kind, size, note in memory],
        f"[modelled] {'peak':<18} {gb(p['peak']):>9}  {p['peak'] / spec['memory']:.0%} of {spec['memory'] / 1e9:g} GB: "
        f"{p['verdict']} (CUDA context and allocator slack not counted; tight above {TIGHT:.0%})",
        f"[modelled] largest --device_batch at most {TIGHT:.0%} full: "
        + (f"{largest} (peak {gb(memory_at(p, largest)[2])})" if largest else "none")
        + f"; compatible values {', '.join(map(str, compatible_batches(config, world)))}",
        f"time (modelled: compute at {MFU:.0%} MFU ({MFU_RANGE[0]:.0%}-{MFU_RANGE[1]:.0%}) plus the collectives at "
        f"{spec['bus'] / 1e9:g} GB/s bus bandwidth (x{BUS_RANGE[0]:g}-{BUS_RANGE[1]:g}), {LATENCY_S * 1e6:g} us each, "
        f"not overlapped; {p['calibration']}):",
        f"[modelled] step {1000 * step:.1f} ms ({1000 * low:.1f}-{1000 * high:.1f}); {tok_s:,.0f} tokens/s "
        f"({tok_s / world:,.0f} per GPU); MFU {mfu:.1%}",
        f"[modelled] training {hours[0]:.2f} h wall-clock ({hours[1]:.2f}-{hours[2]:.2f}), {hours[0] * world:.1f} "
        f"GPU-hours; compile, warm-up steps and evaluation not included",
        f"verdict: {p['verdict']} on {gpu} at --device_batch={config.device_batch} (peak {gb(p['peak'])} of "
        f"{spec['memory'] / 1e9:g} GB, modelled, activations as {p['mode']}); training about "
        f"{hours[0]:.2f} h on {world} x {gpu} (modelled, {p['calibration'].split(' (')[0]})",
    ]


def dry_run(recipe, config):
    """Prints the plan of the run that `config` describes; returns its figures."""
    figures = plan(recipe, config)
    for line in report(figures):
        print(line, flush=True)
    return figures
