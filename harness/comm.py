"""harness/comm.py: the sharded communication engine's transport: gradient buckets and their layouts."""

import math
from collections import Counter
from dataclasses import dataclass

import torch
import torch.distributed as dist

# -----------------------------------------------------------------------------
# Communication
# Gradients travel in a few flat buckets. A bucket's reduce-scatter starts as soon as its last gradient of the
# step is ready (a hook counts one call per parameter per micro-step); each process then updates only its shard
# of the parameters and the results are all-gathered. torch.distributed's flat-buffer collectives move the data
# (reduce_scatter_tensor, all_gather_into_tensor): NCCL has both, and so does gloo on torch 2.13, so the CPU tests
# run the very calls a GPU run makes and no fallback is needed. What is our own is the layout, and only because
# Muon needs it: DDP and FSDP2 split buffers by elements, which suits AdamW (element-wise) but not Muon, whose
# update orthogonalizes whole matrices. So a Muon bucket is laid out process by process, each process's share
# whole matrices, stacked by shape; an AdamW bucket is split by elements like FSDP's.
#
# When the gradients are ready decides what overlaps. Eager autograd runs, among the nodes whose inputs are all
# there, the one made last in the forward first; so a parameter's gradient is ready right after the backward of the
# code that used it (GPT.forward looks each value embedding up inside its block for this reason: looked up before
# the loop, the tables' backward ran at the very end), and the buckets, in that order, go out while the backward
# goes on. A torch.compile of the whole model is one autograd node, and its backward hands out every gradient at
# once when it ends (checked on the CPU with the aot_eager backend, tests/test_distributed.py): then every
# reduce-scatter starts after the backward and only the optimizer's math overlaps the communication. A compile per
# block is a backward node per block and keeps the overlap (seen on the CPU too). Whatever order the hooks fire
# in (a compiled backward's is its own), the buckets launch in their list order: every process must issue the
# same collectives in the same order, and the optimizer takes the buckets in that order.

ALIGN = 64  # elements: every parameter, stack and shard starts on a 256-byte (fp32) boundary


def round_up(n, multiple):
    return (n + multiple - 1) // multiple * multiple


class Comm:
    """The collectives of a step, on flat buffers, counted (calls and bytes by kind, bytes as NCCL's "size": the
    whole buffer) so that a test can hold a step to the formula in `step_traffic`. With one process the same
    calls are local copies (or nothing when the buffers coincide)."""

    def __init__(self, rank=0, world=1):
        self.rank, self.world = rank, world
        self.calls, self.bytes = Counter(), Counter()
        # renamed *_single after torch 2.11 (the GPU machine's version), the old names deprecated
        self._all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        self._reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor

    def _count(self, kind, tensor):
        self.calls[kind] += 1
        self.bytes[kind] += tensor.numel() * tensor.element_size()

    def _start(self, collective, output, input):
        if self.world == 1:  # one process: its shard is the whole, a copy at most
            if output.data_ptr() != input.data_ptr():
                output.copy_(input)
            return None
        return collective(output, input, async_op=True)

    def reduce_scatter(self, output, input):
        """Starts output = this process's 1/world of the sum of input over processes; returns a handle (or None)."""
        self._count("reduce_scatter", input)
        return self._start(self._reduce_scatter, output, input)

    def all_gather(self, output, input):
        """Starts output = the inputs of every process, concatenated by rank; returns a handle (or None)."""
        self._count("all_gather", output)
        return self._start(self._all_gather, output, input)

    def all_reduce(self, tensor):
        """The sum over processes, in place (blocking)."""
        self._count("all_reduce", tensor)
        if self.world > 1:
            dist.all_reduce(tensor)

    def union(self, items):
        """The union of a set over processes (checkpoints only: which state keys exist anywhere)."""
        if self.world == 1:
            return set(items)
        every = [None] * self.world
        dist.all_gather_object(every, sorted(items))
        return {tuple(item) if isinstance(item, list) else item for mine in every for item in mine}

    def broadcast_from_first(self, obj):
        """Rank 0's object on every process (a change of the model's parameters: the whole optimizer state)."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects_to_first(self, obj):
        """Rank 0: every process's object (small state of any shape, moved to the CPU), by rank; others: None."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def gather_to_first(self, tensor):
        """Rank 0: the tensors of every process concatenated by rank; other ranks: None (checkpoints only)."""
        self._count("gather", tensor)
        if self.world == 1:
            return tensor
        out = [torch.empty_like(tensor) for _ in range(self.world)] if self.rank == 0 else None
        dist.gather(tensor, out, dst=0)
        return torch.cat(out) if self.rank == 0 else None


@dataclass
class BucketLayout:
    """Where each parameter's gradient sits in a bucket's flat buffer of world x shard elements; process r receives
    elements [r x shard, (r + 1) x shard) of the summed gradients.

    kind "elements": parameters one after the other, cut into equal shards regardless of where they end (AdamW).
    kind "matrices": each matrix whole inside the shard of the process that owns it, the owner's matrices grouped by
    shape into contiguous stacks (Muon). `parts` > 1 splits a matrix by rows into that many matrices (a fused qkv
    orthogonalized as q, k and v)."""
    kind: str
    shapes: list
    offsets: list      # element offset of each parameter in the flat buffer
    shard: int         # elements per process
    world: int
    owners: list = None    # matrices: the owning process of each parameter
    stacks: list = None    # matrices: per process, [(offset, parameter indices, (count, rows, cols))]

    @property
    def numel(self):
        return self.world * self.shard


def element_layout(shapes, world):
    offsets, end = [], 0
    for shape in shapes:
        offsets.append(end)
        end = round_up(end + math.prod(shape), ALIGN)
    return BucketLayout("elements", list(shapes), offsets, round_up(math.ceil(end / world), ALIGN), world)


def matrix_layout(shapes, world, parts=None, total_load=None):
    """Whole matrices dealt to processes, the largest first, each to the process with the fewest elements so far in
    this bucket (so that the shards, padded to the largest, waste little), ties to the fewest over all buckets
    (total_load, updated; so that small buckets do not all land on rank 0), then to the lowest rank."""
    parts = parts or [1] * len(shapes)
    total_load = [0] * world if total_load is None else total_load
    load, owners = [0] * world, [0] * len(shapes)
    for i in sorted(range(len(shapes)), key=lambda i: -math.prod(shapes[i])):
        owners[i] = min(range(world), key=lambda r: (load[r], total_load[r], r))
        load[owners[i]] += math.prod(shapes[i])
        total_load[owners[i]] += math.prod(shapes[i])
    offsets, stacks, used = [0] * len(shapes), [], []
    for rank in range(world):
        groups = {}  # (shape, parts) -> indices, in parameter order
        for i in range(len(shapes)):
            if owners[i] == rank:
                groups.setdefault((tuple(shapes[i]), parts[i]), []).append(i)
        end, mine = 0, []
        for (shape, p), indices in groups.items():
            mine.append((end, indices, (len(indices) * p, shape[0] // p, shape[1])))
            for i in indices:
                offsets[i] = end
                end += math.prod(shape)
            end = round_up(end, ALIGN)
        stacks.append(mine)
        used.append(end)
    shard = max(round_up(max(used), ALIGN), ALIGN)
    for i in range(len(shapes)):
        offsets[i] += owners[i] * shard
    stacks = [[(rank * shard + off, idx, shape) for off, idx, shape in mine] for rank, mine in enumerate(stacks)]
    return BucketLayout("matrices", list(shapes), offsets, shard, world, owners, stacks)


# A collective's time, modelled (not measured): latency + its buffer's bytes x NCCL's bus factor / bus bandwidth, the
# factors of nccl-tests' doc/PERFORMANCE.md. The dry run (harness/dryrun.py) and bench/comm.py share it; the
# defaults are the conservative ends for 8 GPUs on NVLink 4 (bench/comm.py's docstring says where they come from).
BUS_BANDWIDTH = 350e9  # bytes/s
LATENCY_S = 20e-6


def bus_factor(kind, world):
    return {"all_reduce": 2 * (world - 1) / world, "reduce_scatter": (world - 1) / world,
            "all_gather": (world - 1) / world, "broadcast": 1.0}[kind]


def collective_seconds(kind, nbytes, world, bus=BUS_BANDWIDTH, latency=LATENCY_S):
    """Modelled seconds of one collective of `nbytes` (NCCL's size: the whole buffer) over `world` processes."""
    return 0.0 if world == 1 else latency + nbytes * bus_factor(kind, world) / bus


def step_traffic(layouts, grad_dtypes, gather_dtypes, world):
    """What one training step communicates: {kind: (calls, bytes)}. Per bucket one reduce-scatter of its gradients
    and one all-gather of its results; one all-reduce of the loss (4 bytes) with several processes."""
    size = lambda dtype: torch.tensor([], dtype=dtype).element_size()
    return {"reduce_scatter": (len(layouts), sum(l.numel * size(d) for l, d in zip(layouts, grad_dtypes))),
            "all_gather": (len(layouts), sum(l.numel * size(d) for l, d in zip(layouts, gather_dtypes))),
            "all_reduce": (1, 4) if world > 1 else (0, 0)}


class GradientBucket:
    """The flat gradient buffer of some parameters (their .grad are views into it), and its reduce-scatter.

    Autograd accumulates the micro-steps straight into the buffer; a post-accumulate-grad hook counts the gradients
    and, at the last one of the step (accum_steps x parameters), starts the reduce-scatter while the backward goes on,
    once the bucket `after` has started its own (a bucket complete before it waits for it).
    The gradients travel in reduce_dtype (bf16 halves the bytes; NCCL then also sums in bf16) and arrive summed;
    `mean_gradient` waits and returns this process's shard of the mean in fp32."""

    def __init__(self, layout, params, comm, reduce_dtype, accum_steps, after=None):
        self.layout, self.params, self.comm, self.accum_steps = layout, params, comm, accum_steps
        self.after, self.next = after, None  # the bucket that launches before this one, and the one after
        if after is not None:
            after.next = self
        rank, shard, device = comm.rank, layout.shard, params[0].device
        self.grads = torch.zeros(layout.numel, dtype=params[0].dtype, device=device)
        for p, offset in zip(params, layout.offsets):
            p.grad = self.grads[offset:offset + p.numel()].view_as(p)
        self.views = [p.grad for p in params]
        self.reduce_dtype = reduce_dtype
        mine = self.grads[rank * shard:(rank + 1) * shard]
        self.received = mine if comm.world == 1 and reduce_dtype == self.grads.dtype else \
            torch.empty(shard, dtype=reduce_dtype, device=device)
        self.mean = self.received if self.received.dtype == torch.float32 else torch.empty(shard, device=device)
        self.hooks = [p.register_post_accumulate_grad_hook(self._on_gradient) for p in params]
        self.reset()

    def release(self):
        """Detaches the bucket from its parameters (a new optimizer takes them): no more hooks, no gradient views."""
        for hook in self.hooks:
            hook.remove()
        for p in self.params:
            p.grad = None

    def reset(self):
        """After the step: zero gradients, nothing in flight."""
        self.grads.zero_()
        self.count, self.handle, self.sent, self.launched = 0, None, None, False

    def _on_gradient(self, param):
        self.count += 1
        bucket = self  # this bucket if it is complete and the one before has gone out; then the next ones, likewise
        while bucket is not None and not bucket.launched and bucket.count == bucket.accum_steps * len(bucket.params) \
                and (bucket.after is None or bucket.after.launched):
            bucket.launch()
            bucket = bucket.next

    def launch(self):
        if self.count > self.accum_steps * len(self.params):
            raise RuntimeError(f"more backward passes than the {self.accum_steps} micro-steps of a step")
        if any(p.grad is not view for p, view in zip(self.params, self.views)):
            raise RuntimeError("a parameter's .grad is no longer its view of the gradient bucket (zero_grad with "
                               "set_to_none?); the optimizer zeroes the buckets itself after each step")
        self.sent = self.grads if self.reduce_dtype == self.grads.dtype else self.grads.to(self.reduce_dtype)
        self.handle = self.comm.reduce_scatter(self.received, self.sent)
        self.launched = True

    def mean_gradient(self):
        if not self.launched:  # a parameter without a gradient this step: its zeros go out now
            self.launch()
        if self.handle is not None:
            self.handle.wait()
        self.sent = None  # a bf16 copy of the whole bucket: freed as soon as it has gone out
        if self.mean is not self.received:
            self.mean.copy_(self.received)
        if self.comm.world > 1:
            self.mean.div_(self.comm.world)
        return self.mean
