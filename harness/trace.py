"""harness/trace.py: what a model does, read off one forward and backward on the meta device (shapes only: no
memory, no data, no GPU): its training FLOPs per token, and the order in which the backward finishes its
parameters' gradients (which the gradient buckets follow).

FLOPs are those of the matmuls that run (torch's FlopCounterMode: 2 per multiply-add, forward and backward), so an
architecture change changes the count with no formula to edit. Attention is the one place where what runs is not
what counts: a kernel over a sliding window computes (or masks) more than the window, and the convention (as
nanochat's and modded-nanogpt's counts) is each query against the keys of its window. So in this pass the model's
`attention` hands over to `span_attention`, which does the matmuls of exactly that on the meta device.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

META_BACKEND = "meta"  # model.attention_backend during the pass: attention calls span_attention


def span_attention(q, k, v, window):
    """What attention over the last `window` keys costs, as matmuls (q, k, v: [B, T, heads, head_dim]); the values
    are meaningless (meta tensors). Keys beyond the queries' length (a learned sink, memory tokens) are in every
    query's span."""
    span = min(window, q.size(1)) + max(k.size(1) - q.size(1), 0)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    scores = q @ k[:, :, :span].mT             # [B, heads, T, span]
    return (scores @ v[:, :, :span]).transpose(1, 2)


class FirstUse(TorchFunctionMode):
    """Records the parameters in the order the forward first uses them."""

    def __init__(self, names):
        super().__init__()
        self.names, self.order = names, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        for leaf in tree_leaves((args, kwargs or {})):
            name = self.names.get(id(leaf)) if isinstance(leaf, torch.Tensor) else None
            if name is not None and name not in self.order:
                self.order.append(name)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def attention_backend(model, backend):
    saved = model.attention_backend
    model.attention_backend = backend
    try:
        yield
    finally:
        model.attention_backend = saved


def trace(model, seq_len):
    """(training FLOPs per token, parameter names in the order the backward finishes their gradients) of one row of
    seq_len tokens through the model as training runs it (inputs and targets to the loss, then backward), on the
    meta device: whatever the loss computes counts (an extra head predicting token t+2, a second loss). A model whose
    forward takes no targets is traced to its output."""
    params = {name: torch.empty_like(p, device="meta").requires_grad_(p.requires_grad)
              for name, p in model.named_parameters()}
    buffers = {name: torch.empty_like(b, device="meta") for name, b in model.named_buffers()}
    idx = torch.zeros(1, seq_len, dtype=torch.long, device="meta")
    first_use = FirstUse({id(t): name for name, t in params.items()})
    with attention_backend(model, META_BACKEND), FlopCounterMode(display=False) as counter:
        with first_use:
            try:
                out = functional_call(model, (params, buffers), (idx, torch.zeros_like(idx)))
            except TypeError:  # forward(idx) only
                out = functional_call(model, (params, buffers), (idx,))
        out.float().sum().backward()
    flops = counter.get_total_flops()
    unused = [name for name in params if name not in first_use.order]
    return flops // seq_len, first_use.order[::-1] + unused


class KernelAttention(TorchFunctionMode):
    """Counts the calls of an attention kernel (SDPA, FlexAttention) that did not hand over to span_attention."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention or getattr(func, "__name__", "") == "flex_attention":
            self.calls += 1
        return func(*args, **(kwargs or {}))


class MaskSpanAttention(TorchFunctionMode):
    """On real tensors: each SDPA call ([B, heads, T, head_dim]) replaced by the matmuls of span_attention, the span
    read off its mask (the most keys any query may see: the window; is_causal or no mask: every key)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        names = ("query", "key", "value", "attn_mask")
        given = {**dict(zip(names, args)), **kwargs}
        q, k, v, mask = given["query"], given["key"], given["value"], given.get("attn_mask")
        if mask is None:
            span = k.size(-2)
        else:
            allowed = mask if mask.dtype == torch.bool else torch.isfinite(mask)
            span = int(allowed.expand(*allowed.shape[:-2], q.size(-2), k.size(-2)).sum(-1).max())
        scores = (q @ k[..., :span, :].mT).softmax(-1)
        return scores @ v[..., :span, :]


def stage_flops_per_token(recipe, config, vocab_size, stage, bos_id=0):
    """FLOPs per token of one stage of a stage schedule (harness/schedule.py): the recipe's model on the meta device
    with the recipe's apply_stage, traced at the stage's seq_len. The trainer, the dry run and the records' count
    (which loads this file by path) all count a stage so."""
    with torch.device("meta"):
        model = recipe.GPT(config, vocab_size, bos_id=bos_id)
    if stage and hasattr(recipe, "apply_stage"):
        recipe.apply_stage(model, stage)
    return trace(model, stage.get("seq_len", config.seq_len))[0]


def flops_per_token(recipe, config, vocab_size):
    """Training FLOPs per token of a recipe's model at a config, built on the meta device (nothing allocated). A
    recipe whose attention does not hand over to span_attention on the meta device (an older train_gpt.py: its
    attention kernel ran instead, full T x T) is counted again on one real row on the CPU, each attention call
    counted as the keys its mask allows: the same convention, read off what runs."""
    kernels = KernelAttention()
    try:
        with torch.device("meta"):
            model = recipe.GPT(config, vocab_size, bos_id=0)
        with kernels:
            flops = trace(model, config.seq_len)[0]
        if not kernels.calls:
            return flops
    except (RuntimeError, NotImplementedError):  # an older recipe's code that needs real tensors on the meta device
        pass
    model = recipe.GPT(config, vocab_size, bos_id=0)
    idx = torch.zeros(1, config.seq_len, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        with MaskSpanAttention():
            logits = model(idx)
        logits.float().sum().backward()
    return counter.get_total_flops() // config.seq_len
