"""harness/speedups.py: the model-level speed pieces that train_gpt.py plugs in behind its switches (FP8 matmuls,
the chunked soft-capped cross-entropy).

Each piece sits beside the plain PyTorch reference that the tests compare it with; train_gpt.py stays the one
script a speedrunner reads and edits, and imports from here only what a switch turns on.
"""

import torch

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
    Matmuls in the autocast dtype when autocast is on (as the plain head Linear's), else in h's dtype. On the meta
    device (the FLOPs count, harness/trace.py) the plain computation: the model's matmuls, not the backward's
    recompute of the logits, which is how this kernel runs them, not what the model computes."""
    if h.device.type == "meta":
        logits = softcap_logits(h, w, cap, vocab)
        return torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    autocast = torch.is_autocast_enabled(h.device.type)
    dtype = torch.get_autocast_dtype(h.device.type) if autocast else h.dtype
    return SoftcappedCrossEntropy.apply(h, w, targets, cap, vocab, chunk_rows, dtype)
