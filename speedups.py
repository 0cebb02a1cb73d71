"""speedups.py: the low-level speed pieces that train_gpt.py plugs in behind its switches.

Each piece sits beside the plain PyTorch reference that the tests compare it with; train_gpt.py stays the one
script a speedrunner reads and edits, and imports from here only what a switch turns on.
"""

import math
from collections import Counter
from dataclasses import dataclass

import torch
import torch.distributed as dist

# -----------------------------------------------------------------------------
# FP8 matmuls
#
# y = x @ w.T with x and w in float8_e4m3fn and, backward, the output gradient in float8_e5m2 (more range, fewer
# mantissa bits), each tensor with one fp32 scale (real value = fp8 value x scale). The whole thing is plain aten
# ops and torch._scaled_mm inside a torch.autograd.Function, which Dynamo traces into the compiled graph: Inductor
# fuses each quantization (divide, clamp, cast, and the transposed copy backward needs) into one pass, or into
# the kernel that produces the tensor, where an opaque custom op ran four eager passes per tensor. Backward keeps
# the fp8 copies (1 byte an element) and their scales, not the inputs; under torch.compile the partitioner may
# instead recompute a copy from a tensor it keeps anyway (on the CPU, for an rms-normed input, it kept the
# residual stream and recomputed the normalize-and-cast; it never kept the fp32 input beside the fp8 copy).
#
# Scales map a tensor's largest possible magnitude to the format's largest value. Where a bound is known in
# advance the scale is fixed, and no amax pass over the tensor runs:
# - rms-normed inputs (qkv, MLP fc and head in GPT): an element of n rms-normed values is at most sqrt(n) in
#   magnitude (x_i^2 <= sum_j x_j^2 = n), so sqrt(n) / 448 never overflows. Typical elements (about 1) lose
#   nothing to the fixed scale: e4m3 has the same relative precision over its whole normal range, and only
#   elements below sqrt(n) / 448 / 64 (0.001 at n = 768) fall into its subnormals, a negligible share of a dot
#   product. A dynamic scale would buy about 2 bits at the bottom of the range, at the price of a full pass.
# - the head's output gradient under GPT.forward's mean cross-entropy: d loss / d logit = (softmax - onehot) x
#   tanh'(soft-cap) / rows, each factor at most 1 in magnitude, so |g| <= 1 / rows (1 / (rows x accumulation)
#   in training). e5m2 spans 2^31, so the headroom this wastes costs no precision. This is the largest tensor
#   quantized (rows x vocab), so its amax pass is the one most worth saving.
# Elsewhere the scale is dynamic, from the tensor's amax: the weights (small next to the activations: one
# amax per weight per micro-batch), the output projections' inputs (attention output and relu^2 have no bound)
# and the other gradients (their size changes by orders of magnitude over a run; fixed scales would need
# tuning per model, as modded-nanogpt tunes its few). Delayed scaling (the previous step's amax) would save
# these passes too, but the gradients' amax is only known inside backward, which cannot hand state back to the
# module from a compiled graph, and the amax history would have to be checkpointed for exact resumption.
# Every cast saturates (clamps to the format's range): a bound that does not hold (a loss other than the mean
# cross-entropy, say) costs precision, never inf or NaN.
E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def fp8_scale(t, dtype, bound=None):
    """The fp32 scale that maps bound (or, with bound None, t's amax) to the fp8 dtype's largest value."""
    if bound is None:
        return (t.detach().abs().amax().float() / torch.finfo(dtype).max).clamp(min=1e-12)
    return torch.full((), bound / torch.finfo(dtype).max, dtype=torch.float32, device=t.device)


def to_fp8(t, dtype, scale):
    """t / scale, clamped to the fp8 dtype's range (a saturating cast), in that dtype, row-major."""
    limit = torch.finfo(dtype).max
    return (t.float() / scale).clamp(-limit, limit).to(dtype).contiguous()  # a gradient may come transposed


def column_major(t):
    return t.t().contiguous().t()  # _scaled_mm wants its second operand column-major (CUDA enforces it)


def scaled_mm_reference(a8, b8, scale_a, scale_b, out_dtype):
    """What torch._scaled_mm computes, in fp32: (a8 x scale_a) @ (b8 x scale_b), rounded once to out_dtype."""
    return ((a8.float() @ b8.float()) * (scale_a * scale_b)).to(out_dtype)


def _cpu_has_scaled_mm():
    try:
        one = torch.ones((), dtype=torch.float32)
        torch._scaled_mm(torch.zeros(16, 16, dtype=E4M3), torch.zeros(16, 16, dtype=E4M3).t(), scale_a=one,
                         scale_b=one, out_dtype=torch.float32)
        return True
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


CPU_HAS_SCALED_MM = _cpu_has_scaled_mm()  # torch 2.13 has a CPU kernel; elsewhere scaled_mm_reference stands in


def scaled_mm(a8, b8, scale_a, scale_b, out_dtype):
    if a8.is_cuda or CPU_HAS_SCALED_MM:
        return torch._scaled_mm(a8, b8, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype)
    return scaled_mm_reference(a8, b8, scale_a, scale_b, out_dtype)


class FP8Matmul(torch.autograd.Function):
    """x [rows, in] @ w [out, in].T in FP8, output in out_dtype; gradients in x's and w's dtypes."""

    @staticmethod
    def forward(ctx, x, w, x_bound, grad_bound, out_dtype):
        x_scale, w_scale = fp8_scale(x, E4M3, x_bound), fp8_scale(w, E4M3)
        x8, w8 = to_fp8(x, E4M3, x_scale), to_fp8(w, E4M3, w_scale)
        ctx.save_for_backward(x8, x_scale, w8, w_scale)
        ctx.grad_bound, ctx.x_dtype, ctx.w_dtype = grad_bound, x.dtype, w.dtype
        return scaled_mm(x8, w8.t(), x_scale, w_scale, out_dtype)  # w8.t() is already column-major

    @staticmethod
    def backward(ctx, grad):
        x8, x_scale, w8, w_scale = ctx.saved_tensors
        g_scale = fp8_scale(grad, E5M2, ctx.grad_bound)
        g8 = to_fp8(grad, E5M2, g_scale)
        grad_x = scaled_mm(g8, column_major(w8), g_scale, w_scale, ctx.x_dtype)
        grad_w = scaled_mm(g8.t().contiguous(), column_major(x8), g_scale, x_scale, ctx.w_dtype)
        return grad_x, grad_w, None, None, None


def fp8_matmul(x, w, x_bound=None, grad_bound=None, out_dtype=None):
    """x [rows, in] @ w [out, in].T in FP8 (differentiable). x_bound / grad_bound: known bounds on the magnitude of
    x and of the output's gradient, for fixed scales (see above); None: dynamic scales from the amax."""
    return FP8Matmul.apply(x, w, x_bound, grad_bound, out_dtype or x.dtype)


def fp8_linear(x, w, normed_input=False, mean_loss_head=False):
    """F.linear(x, w) in FP8, output in the autocast dtype (or x's). normed_input: x is rms-normed (fixed scale);
    mean_loss_head: the output feeds GPT.forward's mean soft-capped cross-entropy (fixed gradient scale)."""
    x2 = x.flatten(0, -2)
    autocast = torch.is_autocast_enabled(x.device.type)
    out_dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
    out = fp8_matmul(x2, w, x.size(-1) ** 0.5 if normed_input else None, 1.0 / x2.size(0) if mean_loss_head else None,
                     out_dtype)
    return out.view(*x.shape[:-1], -1)

# -----------------------------------------------------------------------------
# Fused soft-capped cross-entropy
#
# The plain loss (GPT.forward) makes the logits of the whole micro-batch [rows, vocab], then fp32 copies for the
# soft-cap, the log-softmax and, backward, their gradients: several rows x vocab fp32 tensors alive at once (3-7
# GB at 32k rows and a 50k vocab). Here the head matmul, the soft-cap and the cross-entropy run one chunk of rows
# at a time: forward keeps each row's log-sum-exp (4 bytes a row), and backward recomputes a chunk's logits to
# make its gradients. At most one chunk's logits exist at a time; the price is the head's forward matmul done
# twice (2 x rows x dim x vocab FLOPs more, a third more for the head). The chunk loop is plain Python over
# static shapes, so torch.compile unrolls it and fuses each chunk's element-wise work.


def softcap_logits(h, w, cap, vocab):
    """cap x tanh(logits / cap) in fp32 for h [rows, dim] and the head w [padded vocab, dim], the pad cut off."""
    logits = (h @ w.t())[:, :vocab].float()
    return cap * torch.tanh(logits / cap)


class SoftcappedCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy of softcap_logits(h, w) against targets, in fp32; matmuls in compute_dtype."""

    @staticmethod
    def forward(ctx, h, w, targets, cap, vocab, chunk_rows, compute_dtype):
        hc, wc = h.to(compute_dtype), w.to(compute_dtype)
        losses, lses = [], []
        for start in range(0, h.size(0), chunk_rows):
            z = softcap_logits(hc[start:start + chunk_rows], wc, cap, vocab)
            lse = torch.logsumexp(z, dim=-1)
            losses.append(lse - z.gather(1, targets[start:start + chunk_rows, None]).squeeze(1))
            lses.append(lse)
        ctx.save_for_backward(h, w, targets, torch.cat(lses))
        ctx.cap, ctx.vocab, ctx.chunk_rows, ctx.compute_dtype = cap, vocab, chunk_rows, compute_dtype
        return torch.cat(losses)

    @staticmethod
    def backward(ctx, grad_losses):
        h, w, targets, lse = ctx.saved_tensors
        cap, vocab, chunk_rows, dtype = ctx.cap, ctx.vocab, ctx.chunk_rows, ctx.compute_dtype
        hc, wc = h.to(dtype), w.to(dtype)
        grad_h, grad_w = [], torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        for start in range(0, h.size(0), chunk_rows):
            rows = slice(start, start + chunk_rows)
            capped = torch.tanh((hc[rows] @ wc.t())[:, :vocab].float() / cap)
            # d loss / d logit = (softmax - onehot) x d softcap / d logit, where d softcap / d logit = 1 - tanh^2
            probs = torch.exp(cap * capped - lse[rows, None])
            probs.scatter_add_(1, targets[rows, None], torch.full_like(lse[rows, None], -1.0))
            g = (probs * (1 - capped * capped) * grad_losses[rows, None]).to(dtype)
            g = torch.nn.functional.pad(g, (0, w.size(0) - vocab))  # the padded logits get no gradient
            grad_h.append((g @ wc).to(h.dtype))
            grad_w += (g.t() @ hc[rows]).float()
        return torch.cat(grad_h), grad_w.to(w.dtype), None, None, None, None, None


def chunked_softcapped_cross_entropy(h, w, targets, cap, vocab, chunk_rows):
    """Per-row losses [rows] (fp32) of the soft-capped logits h @ w.T, without the logits of all rows at once.
    Matmuls in the autocast dtype when autocast is on (as the plain head Linear's), else in h's dtype."""
    autocast = torch.is_autocast_enabled(h.device.type)
    dtype = torch.get_autocast_dtype(h.device.type) if autocast else h.dtype
    return SoftcappedCrossEntropy.apply(h, w, targets, cap, vocab, chunk_rows, dtype)


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
