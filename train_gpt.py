"""train_gpt.py: the research surface. Read it top to bottom: the knobs and presets, the model, which update rule
each parameter gets, the update rules, the schedule, the training step; then one call into the harness.

    python train_gpt.py --preset=tiny                                # CPU smoke test, under a minute
    python train_gpt.py --preset=gpt2-core --depth=20                # one GPU
    python train_gpt.py --preset=gpt2-core --dry_run --world=8      # its plan on 8 GPUs, without a GPU
    torchrun --standalone --nproc_per_node=8 train_gpt.py --preset=gpt2-small-fineweb
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 train_gpt.py --preset=...

Every hyperparameter lives in `Config`; `--key=value` overrides it (`--key value` works too), `--preset=NAME`
applies a named set of overrides first. The global batch and the math are the same on any number of
processes: gradient accumulation fills the gap. What no idea touches (data loading, the sharded optimizer's
communication, checkpoints, logs, timing, devices, compile and FP8) is the harness (harness/, harness/loop.py
first). A run writes runs/<run_id>/: log.txt (this file's source, the commit, the command, the config, the
environment, one line per step), results.json and checkpoint.pt.
"""

import dataclasses
import math
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.optim.adam import adam as torch_adam
import torch.nn.functional as F

from harness.config import ConfigError, option
from harness.loop import main
from harness.optim import Rule, UpdateRule
from harness.speedups import chunked_softcapped_cross_entropy, fp8_linear
from harness.trace import META_BACKEND, span_attention

# -----------------------------------------------------------------------------
# Config


@dataclass
class Config:
    # data: token shards from `python -m data.tokenize` (or llm.c-format shards), and their tokenizer
    train_files: str = "data/tokens/climbmix_32768/train_*.bin"
    val_files: str = "data/tokens/climbmix_32768/val_*.bin"
    tokenizer: str = "data/tokenizers/climbmix_32768"  # BOS id, vocab size, token byte lengths (for bpb)
    # model
    depth: int = option(12, at_least=1)    # layers; the width follows from it unless model_dim is set
    aspect_ratio: int = option(64, at_least=1)  # width per layer
    model_dim: int = option(0, at_least=0)  # 0: aspect_ratio x depth, rounded up to a multiple of head_dim
    head_dim: int = option(128, at_least=1)
    seq_len: int = option(2048, at_least=1)
    window_pattern: str = "SSSL"  # per layer, repeating: S = short sliding window, L = full; the last layer is L
    short_window: int = option(0, at_least=0)  # 0: seq_len // 4, rounded up to a multiple of window_tile
    window_tile: int = option(1, at_least=1)  # FA3's tile is 128 (nanochat's: 2048 // 4 = 512, 1000 // 4 -> 256)
    window_inclusive: bool = False  # a window W sees the W keys before the query and the query (FA3's (W, 0))
    rope_base: float = 100_000.0
    logit_cap: float = 15.0       # logits = cap * tanh(logits / cap)
    loss: str = option("plain", choices=("plain", "chunked"))  # chunked: head + soft-cap + cross-entropy chunk by
                                  # chunk of rows, never all the fp32 logits at once (harness/speedups.py; the head
                                  # matmul then runs in bf16, also with --fp8)
    loss_chunk: int = option(4096, at_least=1)  # rows per chunk with --loss=chunked
    value_embeds: bool = True     # token embeddings mixed into the attention values of every other layer
    value_mix: str = option("scalars", choices=("scalars", "gate"))  # v = a v + b ve, or v + 3 sigmoid(W x[:12]) ve
    layer_scalars: bool = False   # before each block x = resid[i] x + x0[i] x0 (x0: the normed embedding)
    smear: bool = False           # x_t += s sigmoid(W x_t[:24]) x_t-1: the previous token's embedding, gated in
    backout: bool = False         # a learned share (0.2 at first) of the middle layer's output taken off at the end
    embed_init_std: float = 1.0   # token embeddings ~ N(0, std)
    value_embed_init: str = option("normal", choices=("normal", "uniform"))  # N(0, 1), or uniform like qkv
    mlp_in_init: float = 1.0      # the MLP's input matrix: uniform within this share of the other matrices' bound
    embed_dtype: str = option("fp32", choices=("fp32", "bf16"))  # the token and value embedding tables (bf16: half
                                  # the memory and gradient traffic; the update rules still see fp32 and keep fp32 state)
    doc_mask: bool = False        # attend only within the document (documents start at BOS)
    rows: str = option("slices", choices=("slices", "documents"))  # training rows: consecutive slices of the token
                                  # stream (every token a target once an epoch), or documents: every row starts at
                                  # BOS, whole documents packed best fit, the one that fills a row cropped (harness/data.py)
    doc_pool: int = option(256, at_least=1)  # --rows=documents: the documents waiting to be packed (nanochat: 1000)
    doc_crop: str = option("oldest", choices=("oldest", "shortest"))  # --rows=documents: which one fills a row
    attention: str = option("auto", choices=("auto", "sdpa", "flex"))  # flex: FlexAttention; auto: flex when
                                  # compiling on CUDA, else sdpa
    # batch: total_batch_tokens = world_size x device_batch x seq_len x accumulation steps
    device_batch: int = option(16, at_least=1)  # rows per forward pass on one device
    total_batch_tokens: int = option(524_288, at_least=1)
    # horizon: the first one that is set decides the number of steps
    steps: int = option(0, at_least=0)
    tokens_per_param: float = option(0.0, at_least=0)  # tokens = ratio x parameters counted (parameter_table)
    flops_budget: float = option(0.0, at_least=0)  # model FLOPs; the run stops before the budget would be exceeded
    target_val_loss: float = 0.0   # also stop at the first validation at or below this loss
    # schedule: linear warm-up, flat, linear warm-down to final_lr_frac
    warmup_steps: int = option(40, at_least=0)
    warmdown_frac: float = option(0.65, fraction=True)
    final_lr_frac: float = option(0.05, fraction=True)
    # optimizer: Muon for the hidden matrices, AdamW for embeddings, head and scalars (parameter_table)
    matrix_lr: float = 0.02
    embed_lr: float = 0.3         # AdamW lrs are scaled by (model_dim / 768) ** -0.5
    head_lr: float = 0.008
    scalar_lr: float = 0.5
    lr_batch_ref: int = option(0, at_least=0)  # 0, or every lr x sqrt(total_batch_tokens / this) (nanochat: 2 ** 19)
    adam_betas: tuple = (0.8, 0.95)
    adam_eps: float = 1e-10
    adam_groups: str = option("shared", choices=("shared", "nanochat"))  # nanochat: betas, decay, lr per group
    adamw: str = option("torch", choices=("torch", "lerp"))  # torch's kernel, or the math in lerp form (nanochat's)
    fused_adam: str = option("auto", choices=("auto", "true", "false"))  # torch's fused AdamW kernel; auto: on CUDA
    muon: str = option("muon", choices=("muon", "normuon"))  # normuon: the rule makes the whole step (nanochat's)
    weight_decay: float = 0.0     # Muon's, decoupled and scaled by the lr
    cautious_wd: bool = False     # normuon: decay only where the update and the weight have the same sign
    wd_schedule: str = option("constant", choices=("constant", "cosine"))  # cosine: Muon's decay down to 0
    wd_ref_depth: int = option(0, at_least=0)  # 0, or decay scaled to keep T_epoch of this depth's (horizon_wd_scale)
    muon_momentum: float = 0.95
    muon_momentum_start: float = 0.85
    muon_momentum_warmup: int = option(300, at_least=0)
    muon_momentum_end: float = option(0.0, fraction=True)  # 0, or down to this over the lr's warm-down
    orthogonalizer: str = option("newton_schulz", choices=("newton_schulz", "polar_express"))
    ns_steps: int = option(5, at_least=0)  # iterations
    normuon_beta2: float = option(0.0, fraction=True)  # normuon: 0, or the EMA that evens out the rows (NorMuon)
    muon_eq: bool = False         # normuon: rows brought to their mean norm before orthogonalizing (MuonEq)
    muon_plus: bool = False       # normuon: the direction's norm set to sqrt(min(rows, cols)) after (Muon+)
    muon_dtype: str = option("bf16", choices=("bf16", "fp32"))  # normuon: orthogonalize in (nanochat: fp32 on CPUs)
    muon_update_dtype: str = option("bf16", choices=("bf16", "fp32"))  # normuon: lr x direction in bf16 (Run 6)
    muon_split_qkv: bool = False  # orthogonalize q, k and v as three matrices (the references) instead of one qkv
    # communication: gradients reduce-scattered in flat buckets, each process updates its shard, results all-gathered
    bucket_mb: int = 256          # gradients per bucket (a bucket starts when its last gradient is ready)
    reduce_dtype: str = option("fp32", choices=("fp32", "bf16"))  # the dtype gradients travel (and are summed) in
    # evaluation
    val_tokens: int = option(10_485_760, at_least=1)  # the first N tokens of the val shards (modded-nanogpt's)
    val_every: int = option(250, at_least=0)  # steps between validations (0: only at the end)
    val_batch: int = option(0, at_least=0)    # rows per val forward pass (0: device_batch)
    # run
    seed: int = option(0, at_least=0)
    run_id: str = ""              # default: a timestamp and the preset
    out_dir: str = "runs"
    log_every: int = option(1, at_least=1)  # steps between loss reads (host syncs) and log lines
    save_every: int = option(0, at_least=0)  # steps between checkpoints (0: none during the run)
    save_final: bool = True       # a checkpoint at the end (to evaluate, or to continue)
    resume: str = ""              # a checkpoint.pt to continue from, exactly
    stop_after: int = option(0, at_least=0)  # leave after this many steps of this process, with a checkpoint
    warmup_timing_steps: int = option(10, at_least=0)  # untimed real steps (compile, warm-up), then all is reset
    compile: str = option("auto", choices=("auto", "true", "false", "blocks"))  # auto: on CUDA only; blocks: each
                                  # block on its own (its backward overlaps comms)
    fp8: bool = False             # FP8 matmuls in the large Linears while training (Hopper/Ada; else a notice)
    fp8_scales: str = option("bounds", choices=("bounds", "dynamic"))  # dynamic: every scale from its amax (nanochat)
    fp8_split_qkv: bool = False   # FP8: q, k and v quantized apart, with scales of their own (nanochat's 3 Linears)
    device: str = "auto"
    peak_flops: float = 0.0       # dense bf16 FLOP/s per device for MFU; 0: looked up from the GPU's name
    dry_run: bool = False         # print the run's plan (memory per GPU, steps, FLOPs, modelled time) and stop
    gpu: str = option("H100", choices=("H100", "H200", "A100"))  # --dry_run: the GPU to plan for
    world: int = option(0, at_least=0)  # --dry_run: GPUs to plan for (0: this command's, WORLD_SIZE or 1)
    wandb: str = option("", choices=("", "online", "offline"))  # log to wandb
    preset: str = ""


PRESETS = {
    # CPU smoke test on the embedded sample (bash speedrun.sh builds it); trains in well under a minute.
    "tiny": dict(train_files="data/tokens/shakespeare_4096/train_*.bin",
                 val_files="data/tokens/shakespeare_4096/val_*.bin", tokenizer="data/tokenizers/shakespeare_4096",
                 depth=2, model_dim=64, head_dim=16, seq_len=128, short_window=32, device_batch=8,
                 total_batch_tokens=2048, steps=150, warmup_steps=10, warmup_timing_steps=2, val_tokens=65_536,
                 val_every=50, matrix_lr=0.05, embed_lr=0.1, head_lr=0.02),
    # modded-nanogpt's track: GPT-2 tokens of FineWeb, val loss 3.28 on the first 10,485,760 val tokens.
    "gpt2-small-fineweb": dict(train_files="data/raw/fineweb10B-gpt2/fineweb_train_*.bin",
                               val_files="data/raw/fineweb10B-gpt2/fineweb_val_*.bin",
                               tokenizer="data/tokenizers/gpt2", depth=12, model_dim=768, head_dim=128,
                               seq_len=2048, total_batch_tokens=524_288, steps=5100, target_val_loss=3.28),
    # nanochat's "time to GPT-2": its leaderboard recipe (Run 6, a825e63: CORE 0.2626 in 1.65 h on 8 x H100) with its
    # later smear/backout init; 5,568 steps of 1,048,576 tokens at depth 24; CORE. bench/parity.py checks the math.
    # device_batch 8, not nanochat's 16: the dry run models 16 rows at 82 GB a GPU (compiled; +-20%), 8 at 49 GB;
    # accumulation keeps the math. Modelled, not measured: a GPU's smoke test or bench.gpu revisits it.
    "gpt2-core": dict(depth=24, total_batch_tokens=1_048_576, tokens_per_param=8.0, device_batch=8, rows="documents",
                      window_tile=128, window_inclusive=True, value_mix="gate", layer_scalars=True, smear=True,
                      backout=True, embed_init_std=0.8, value_embed_init="uniform", mlp_in_init=0.4, embed_dtype="bf16",
                      lr_batch_ref=2**19, adam_groups="nanochat", muon="normuon", muon_split_qkv=True,
                      orthogonalizer="polar_express", normuon_beta2=0.9, weight_decay=0.28, cautious_wd=True,
                      wd_schedule="cosine", wd_ref_depth=12, muon_momentum=0.97, muon_momentum_warmup=400,
                      muon_momentum_end=0.90, doc_pool=1000, doc_crop="shortest", fp8_scales="dynamic",
                      fp8_split_qkv=True),
}


def derived(config):
    """Model shape numbers that follow from the config."""
    dim = config.model_dim or math.ceil(config.aspect_ratio * config.depth / config.head_dim) * config.head_dim
    short = config.short_window or math.ceil(config.seq_len // 4 / config.window_tile) * config.window_tile
    short += config.window_inclusive  # windows count the keys a query sees
    windows = [config.seq_len if config.window_pattern[i % len(config.window_pattern)] == "L" else short
               for i in range(config.depth)]
    windows[-1] = config.seq_len
    return dim, dim // config.head_dim, windows


def check_config(config):
    """The recipe's own combinations, before anything is built (each option's range is on its field)."""
    if len(config.adam_betas) != 2 or not all(0 <= beta < 1 for beta in config.adam_betas):
        raise ConfigError(f"--adam_betas={','.join(map(str, config.adam_betas))}: give two values in [0, 1), "
                          "e.g. --adam_betas=0.8,0.95")
    if config.logit_cap <= 0:
        raise ConfigError(f"--logit_cap={config.logit_cap}: must be above 0 (logits = cap x tanh(logits / cap))")
    dim, heads, _ = derived(config)
    normuon_only = [f"--{n}" for n in ("cautious_wd", "normuon_beta2", "muon_eq", "muon_plus") if getattr(config, n)]
    if config.muon != "normuon" and normuon_only:
        raise ConfigError(f"{', '.join(normuon_only)}: steps of --muon=normuon's update; add --muon=normuon")
    for on, name, channels in ((config.smear, "--smear", SMEAR_CHANNELS),
                               (config.value_mix == "gate", "--value_mix=gate", VALUE_GATE_CHANNELS)):
        if on and dim < channels:
            raise ConfigError(f"{name} reads {channels} channels; the model has {dim}: widen it or leave {name} off")
    if dim % config.head_dim or config.head_dim % 2:
        raise ConfigError(f"--model_dim={dim}, --head_dim={config.head_dim}: the head dim must be even (rotary "
                          "pairs its channels) and divide the model dim")
    if not config.window_pattern or set(config.window_pattern) - {"S", "L"}:
        raise ConfigError(f"--window_pattern={config.window_pattern!r}: use only S (short window) and L (full)")


# -----------------------------------------------------------------------------
# Model


def rms_norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len, head_dim, base):
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]  # [1, T, 1, head_dim / 2]


def apply_rotary(x, cos, sin):
    """Each channel pair (i, i + head_dim / 2) turned by -angle (nanochat's sense, which a trained qkv depends on)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    T = x.size(1)
    cos, sin = cos[:, :T], sin[:, :T]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1).type_as(x)


def flex_mask(window, docs):
    """FlexAttention's mask function for one window: causal, within the last `window` positions and, when docs
    (document number per position) is given, within the same document. The window and docs are closed over, not
    default arguments: Dynamo (torch 2.13) cannot trace create_block_mask on a function with defaults."""
    def allowed(b, h, q, k):
        near = (q >= k) & (q - k < window)
        return near & (docs[b, q] == docs[b, k]) if docs is not None else near
    return allowed


def attention_masks(idx, windows, bos_id, backend):
    """For each distinct window, what `attention` needs: causal, within the last `window` positions and, when
    bos_id is given, within the same document (documents start at BOS). For SDPA a boolean mask (None when plain
    causal suffices), for FlexAttention a block mask."""
    B, T = idx.shape
    docs = (idx == bos_id).cumsum(1) if bos_id is not None else None
    masks = {}
    for window in sorted(set(windows)):
        if backend == "flex":
            from torch.nn.attention.flex_attention import create_block_mask
            allowed = flex_mask(window, docs)
            masks[window] = create_block_mask(allowed, B if docs is not None else None, None, T, T, device=idx.device)
        elif docs is None and window >= T:
            masks[window] = None
        else:
            i = torch.arange(T, device=idx.device)
            near = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
            masks[window] = (near & (docs[:, :, None] == docs[:, None, :]))[:, None] if docs is not None else near
    return masks


def attention(q, k, v, mask, window, backend):
    """Attention of q, k, v [B, T, heads, head_dim] under a mask from attention_masks. One function, two paths:
    PyTorch's scaled_dot_product_attention (everywhere) and FlexAttention (fused kernels under torch.compile). The
    harness's FLOPs count (harness/trace.py) counts each query against its window of keys."""
    if backend == META_BACKEND:
        return span_attention(q, k, v, window)
    if torch.is_autocast_enabled(q.device.type):  # rms_norm and rotary hand fp32 over; fp32 attention is slow
        dtype = torch.get_autocast_dtype(q.device.type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if backend == "flex":
        from torch.nn.attention.flex_attention import flex_attention
        y = flex_attention(q, k, v, block_mask=mask)
    elif mask is None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return y.transpose(1, 2)


class Linear(nn.Linear):
    """nn.Linear without bias whose training-time matmul runs in FP8 when use_fp8 is set (evaluation: bf16).
    What the model knows about the Linear fixes FP8 scales (harness/speedups.py): normed_input, its input is rms-normed;
    mean_loss_head, its output feeds the mean soft-capped cross-entropy."""

    def __init__(self, in_features, out_features, normed_input=False, mean_loss_head=False):
        super().__init__(in_features, out_features, bias=False)
        self.use_fp8, self.normed_input, self.mean_loss_head = False, normed_input, mean_loss_head
        self.fp8_parts = 1  # a fused matrix's parts (qkv: 3), each quantized with scales of its own

    def forward(self, x):
        if self.use_fp8 and self.training:
            parts = [fp8_linear(x, w, self.normed_input, self.mean_loss_head)
                     for w in self.weight.chunk(self.fp8_parts)]
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return F.linear(x, self.weight.type_as(x))


def gate(linear, x):
    """A small gate's logits: linear (a plain nn.Linear, never FP8: too small) on the first channels of x."""
    return F.linear(x[..., :linear.in_features], linear.weight.type_as(x))


SMEAR_CHANNELS, VALUE_GATE_CHANNELS = 24, 12  # the channels the smear's and the value embeddings' gates read


class CausalSelfAttention(nn.Module):
    def __init__(self, dim, heads, head_dim, window, value_embed, value_mix):
        super().__init__()
        self.heads, self.head_dim, self.window = heads, head_dim, window
        self.qkv = Linear(dim, 3 * heads * head_dim, normed_input=True)
        self.proj = Linear(heads * head_dim, dim)
        # how the value embedding goes into the values: [keep v, add value embedding], or a gate per head
        self.value_mix = nn.Parameter(torch.tensor([0.5, 0.5])) if value_embed and value_mix == "scalars" else None
        self.value_gate = nn.Linear(VALUE_GATE_CHANNELS, heads, bias=False) \
            if value_embed and value_mix == "gate" else None

    def forward(self, x, cos, sin, value_embed, masks, backend):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).unbind(2)
        q, k = rms_norm(apply_rotary(q, cos, sin)) * 1.2, rms_norm(apply_rotary(k, cos, sin)) * 1.2  # QK-norm
        if self.value_mix is not None:
            v = self.value_mix[0] * v + self.value_mix[1] * value_embed.view_as(v)
        elif self.value_gate is not None:
            v = v + 3 * torch.sigmoid(gate(self.value_gate, x)).unsqueeze(-1) * value_embed.view_as(v)
        y = attention(q, k, v, masks[self.window], self.window, backend)
        return self.proj(y.reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = Linear(dim, 4 * dim, normed_input=True)
        self.proj = Linear(4 * dim, dim)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())  # ReLU squared


class Block(nn.Module):
    def __init__(self, dim, heads, head_dim, window, value_embed, value_mix):
        super().__init__()
        self.attn = CausalSelfAttention(dim, heads, head_dim, window, value_embed, value_mix)
        self.mlp = MLP(dim)

    def forward(self, x, cos, sin, value_embed, masks, backend):
        x = x + self.attn(rms_norm(x), cos, sin, value_embed, masks, backend)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, config, vocab_size, bos_id=None):
        super().__init__()
        dim, heads, windows = derived(config)
        self.vocab_size, self.logit_cap, self.windows = vocab_size, config.logit_cap, windows
        self.loss, self.loss_chunk = config.loss, config.loss_chunk
        if config.doc_mask and bos_id is None:
            raise ConfigError("--doc_mask needs the BOS id (the tokenizer's)")
        self.doc_bos = bos_id if config.doc_mask else None
        self.attention_backend = "sdpa"  # or "flex": set_attention_backend
        padded_vocab = math.ceil(vocab_size / 128) * 128  # tensor-core friendly shapes
        self.embed = nn.Embedding(padded_vocab, dim)
        # layers with value embeddings: every other one, counting back from the last
        self.value_layers = [i for i in range(config.depth) if config.value_embeds and (config.depth - 1 - i) % 2 == 0]
        self.value_embeds = nn.ModuleList(nn.Embedding(padded_vocab, heads * config.head_dim) for _ in self.value_layers)
        self.blocks = nn.ModuleList(Block(dim, heads, config.head_dim, windows[i], i in self.value_layers,
                                          config.value_mix) for i in range(config.depth))
        self.head = Linear(dim, padded_vocab, normed_input=True, mean_loss_head=True)  # untied from the embedding
        # learned scalars around the blocks, each None when off (layer_scalars, smear, backout)
        self.resid_lambdas = nn.Parameter(torch.ones(config.depth)) if config.layer_scalars else None
        self.x0_lambdas = nn.Parameter(torch.zeros(config.depth)) if config.layer_scalars else None
        self.smear_gate, self.smear_lambda = (nn.Linear(SMEAR_CHANNELS, 1, bias=False),
                                              nn.Parameter(torch.zeros(1))) if config.smear else (None, None)
        self.backout_lambda = nn.Parameter(torch.zeros(1)) if config.backout else None
        self.backout_layer = config.depth // 2
        self.config = config  # reset_parameters reads its init settings
        cos, sin = rotary_tables(config.seq_len, config.head_dim, config.rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()
        if config.embed_dtype == "bf16":  # initialized in fp32 first, so that both dtypes start from the same draw
            for emb in [self.embed, *self.value_embeds]:
                emb.to(torch.bfloat16)
        for linear in (m for m in self.modules() if config.fp8_scales == "dynamic" and isinstance(m, Linear)):
            linear.normed_input = linear.mean_loss_head = False  # no fixed FP8 scale: each from its tensor's amax
        for block in self.blocks:
            block.attn.qkv.fp8_parts = 3 if config.fp8_split_qkv else 1

    @torch.no_grad()
    def reset_parameters(self):
        dim, config, depth = self.embed.embedding_dim, self.config, len(self.blocks)
        bound = 3 ** 0.5 * dim ** -0.5  # uniform with std dim ** -0.5
        nn.init.normal_(self.embed.weight, std=config.embed_init_std)
        for emb in self.value_embeds:  # N(0, 1), or uniform like the qkv matrix
            nn.init.uniform_(emb.weight, -bound, bound) if config.value_embed_init == "uniform" else \
                nn.init.normal_(emb.weight)
        for block in self.blocks:
            nn.init.uniform_(block.attn.qkv.weight, -bound, bound)
            nn.init.uniform_(block.mlp.fc.weight, -bound * config.mlp_in_init, bound * config.mlp_in_init)
            nn.init.zeros_(block.attn.proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.proj.weight)
            if block.attn.value_mix is not None:
                block.attn.value_mix.fill_(0.5)
            if block.attn.value_gate is not None:  # gates start a little above neutral
                nn.init.uniform_(block.attn.value_gate.weight, 0.0, 0.02)
        nn.init.normal_(self.head.weight, std=0.001)
        if self.resid_lambdas is not None:  # early layers keep more of the residual and take more of the embedding
            for i in range(depth):
                self.resid_lambdas[i] = 1.15 - 0.10 * i / max(depth - 1, 1)
                self.x0_lambdas[i] = 0.20 - 0.15 * i / max(depth - 1, 1)
        if self.smear_gate is not None:
            nn.init.uniform_(self.smear_gate.weight, 0.0, 0.02)
            nn.init.zeros_(self.smear_lambda)
        if self.backout_lambda is not None:
            self.backout_lambda.fill_(0.2)

    def forward(self, idx, targets=None, reduction="mean"):
        """Logits [B, T, vocab] without targets; else the cross-entropy (mean, or per token with reduction='none')."""
        x = rms_norm(self.embed(idx).float())  # the residual stream stays fp32 whatever the table's dtype
        if self.smear_gate is not None:
            x = self.smeared(x)
        x0, middle = x, None
        value_embeds = dict(zip(self.value_layers, self.value_embeds))
        masks = self.masks(idx)
        for i, block in enumerate(self.blocks):
            if self.resid_lambdas is not None:
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            # looked up here, not before the loop: autograd runs, among the ready nodes, the one made last in the
            # forward first, so a table's backward (and its gradient's bucket) follows its block's, not the end
            value_embed = value_embeds[i](idx) if i in value_embeds else None
            x = block(x, self.cos, self.sin, value_embed, masks, self.attention_backend)
            middle = x if i == self.backout_layer else middle
        if self.backout_lambda is not None:
            x = x - self.backout_lambda * middle
        return self.head_and_loss(x, targets, reduction)

    def smeared(self, x):
        """Each position but the first plus its predecessor's features, by a gate read off its own."""
        strength = self.smear_lambda * torch.sigmoid(gate(self.smear_gate, x[:, 1:]))
        return torch.cat([x[:, :1], x[:, 1:] + strength * x[:, :-1]], dim=1)

    # GPT.forward's parts that the harness compiles on their own with --compile=blocks (beside each block)
    def masks(self, idx):
        return attention_masks(idx, self.windows, self.doc_bos, self.attention_backend)

    def head_and_loss(self, x, targets, reduction):
        x = rms_norm(x)
        if targets is not None and self.loss == "chunked":
            losses = chunked_softcapped_cross_entropy(x.flatten(0, -2), self.head.weight, targets.reshape(-1),
                                                      self.logit_cap, self.vocab_size, self.loss_chunk)
            return losses.mean() if reduction == "mean" else losses.view_as(targets)
        logits = self.head(x)[..., :self.vocab_size].float()
        logits = self.logit_cap * torch.tanh(logits / self.logit_cap)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
        return loss if reduction == "mean" else loss.view_as(targets)


# -----------------------------------------------------------------------------
# Which update rule each parameter gets: the first row whose pattern matches the parameter's whole name. A
# parameter no row matches stops the run, naming it (add a row); counts=True rows are what --tokens_per_param
# multiplies.


BLOCK_MATRIX = r"blocks\.\d+\.(attn|mlp)\.\w+\.weight"  # Muon's; --tokens_per_param counts them and the head


def parameter_table(config, model):
    batch = (config.total_batch_tokens / config.lr_batch_ref) ** 0.5 if config.lr_batch_ref else 1.0
    dim = (model.embed.embedding_dim / 768) ** -0.5
    matrix_lr, head_lr, embed_lr, scalar_lr = (lr * batch for lr in (config.matrix_lr, config.head_lr,
                                                                       config.embed_lr, config.scalar_lr))
    muon_wd = config.weight_decay * (batch * horizon_wd_scale(config, model) if config.wd_ref_depth else 1.0)
    adam = adam_groups(config, head_lr * dim, embed_lr * dim, scalar_lr)
    return [
        Rule(r"blocks\.\d+\.attn\.qkv\.weight", config.muon, matrix_lr, muon_wd, counts=True,
             parts=3 if config.muon_split_qkv else 1),  # q, k and v orthogonalized apart, as the references do
        Rule(BLOCK_MATRIX, config.muon, matrix_lr, muon_wd, counts=True),
        Rule(r"head\.weight", "adamw", **adam["head"], counts=True),
        Rule(r"embed\.weight", "adamw", **adam["embed"]),
        Rule(r"value_embeds\.\d+\.weight", "adamw", **adam["value_embeds"]),
        Rule(r"blocks\.\d+\.attn\.value_mix", "adamw", **adam["value_mix"]),
        Rule(r"resid_lambdas", "adamw", **adam["resid"]),
        Rule(r"x0_lambdas", "adamw", **adam["x0"]),
        Rule(r"smear_gate\.weight|smear_lambda|backout_lambda", "adamw", **adam["smear"]),
    ]


def adam_groups(config, head_lr, embed_lr, scalar_lr):
    """AdamW's rows by group: the group's lr, adam_betas and no decay; or nanochat's betas, decay and lrs."""
    if config.adam_groups == "shared":
        return {group: dict(lr=lr) for group, lr in dict(head=head_lr, embed=embed_lr, value_embeds=embed_lr,
                value_mix=scalar_lr, resid=scalar_lr, x0=scalar_lr, smear=scalar_lr).items()}
    group = lambda lr, weight_decay, betas: dict(lr=lr, weight_decay=weight_decay, settings=(("betas", betas),))
    return dict(head=group(head_lr, 0.01, (0.8, 0.96)), embed=group(embed_lr, 0.001, (0.8, 0.995)),
                value_embeds=group(embed_lr * 0.5, 0.01, (0.8, 0.995)), value_mix=group(scalar_lr, 0.0, (0.8, 0.95)),
                resid=group(scalar_lr * 0.01, 0.05, (0.8, 0.95)), x0=group(scalar_lr, 0.0, (0.96, 0.95)),
                smear=group(0.2, 0.0, (0.8, 0.95)))  # smear and backout: a fixed lr, not scaled with the batch


def horizon_wd_scale(config, model):
    """P_ref / P of the counted parameters: Muon's decay x sqrt(B / B_ref) x this keeps T_epoch = B / (lr wd D) of the
    recipe at wd_ref_depth, D (tokens) proportional to P and the lrs x sqrt(B / lr_batch_ref). nanochat: depth 12."""
    with torch.device("meta"):
        reference = GPT(dataclasses.replace(config, depth=config.wd_ref_depth), model.vocab_size)
    counted = lambda m: sum(p.numel() for name, p in m.named_parameters()
                            if name == "head.weight" or re.fullmatch(BLOCK_MATRIX, name))
    return counted(reference) / counted(model)


# -----------------------------------------------------------------------------
# Update rules (harness/optim.py says what each kind is given and returns)


def newton_schulz(X, steps):
    """Newton-Schulz iteration of a wide bf16 stack [count, rows <= cols] towards the nearest semi-orthogonal
    matrices. The function compiled for Muon: it sees one layout only, so one graph serves every stack."""
    a, b, c = 3.4445, -4.7750, 2.0315  # quintic coefficients that push singular values quickly to about 1
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X


def orthogonalize(G, steps, iterate=newton_schulz):
    """Muon's update direction in bf16, for a matrix or a stack [count, rows, cols] of them. Tall matrices are
    transposed (iterating on the smaller Gram matrix) and copied contiguous in bf16 here, outside `iterate` (the
    compiled newton_schulz), and a stack's count is left symbolic even when it is 1: otherwise tall against wide,
    the strides and a count of 1 would each compile another graph."""
    tall = G.size(-2) > G.size(-1)
    X = (G.mT if tall else G).to(torch.bfloat16, memory_format=torch.contiguous_format)
    if X.dim() == 3:
        torch._dynamo.decorators.mark_unbacked(X, 0)
    X = iterate(X, steps)
    return X.mT if tall else X


POLAR_EXPRESS = [  # Polar Express's coefficients for 5 iterations (Amsel et al. 2025, safety 2e-2, cushion 2)
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def polar_express(X, steps):
    """Polar Express on a stack [count, rows, cols], in X's dtype: X scaled to norm just under 1, then X <- a X +
    b (X X^T) X + c (X X^T)^2 X with each iteration's own coefficients (the Gram matrix on the smaller side)."""
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.01 + 1e-6)
    tall = X.size(-2) > X.size(-1)
    for a, b, c in POLAR_EXPRESS[:steps]:
        A = X.mT @ X if tall else X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + (X @ B if tall else B @ X)
    return X


def nesterov_momentum(grads, state, momentum):
    """Nesterov: the buffer takes 1 - momentum of the gradient, the gradient (in place) momentum of the buffer."""
    buffer = state.setdefault("momentum", torch.zeros_like(grads))
    buffer.lerp_(grads, 1 - momentum)
    return grads.lerp_(buffer, momentum)


def muon(grads, state, hp):
    """Muon on a stack [count, rows, cols]: Nesterov momentum, orthogonalized; the harness applies lr x this."""
    nesterov = nesterov_momentum(grads, state, hp.momentum)
    iterate = newton_schulz if hp.config.orthogonalizer == "newton_schulz" else polar_express
    return orthogonalize(nesterov, hp.config.ns_steps, hp.compiled(iterate))


def normuon(grads, state, hp, params):
    """NorMuon's whole step of a stack [count, rows, cols]: momentum, orthogonalized (MuonEq, Muon+ around it), rows
    evened out, lr x direction + (cautious) decay in muon_update_dtype; scalars as fp32 0-D tensors, as nanochat's."""
    config = hp.config
    direction = nesterov_momentum(grads, state, torch.tensor(hp.momentum, dtype=torch.float32))
    X = direction.bfloat16() if config.muon_dtype == "bf16" else direction
    if config.muon_eq:  # every row to the mean row norm
        target = X.float().norm(dim=(-2, -1), keepdim=True) / X.size(-2) ** 0.5
        X = X * (target / X.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)).to(X.dtype)
    X = hp.compiled(polar_express)(X, config.ns_steps) if config.orthogonalizer == "polar_express" else \
        orthogonalize(X, config.ns_steps, hp.compiled(newton_schulz))  # polar_express takes either orientation
    g = X.to(torch.bfloat16 if config.muon_update_dtype == "bf16" else torch.float32)
    if config.muon_plus:  # the norm of an exactly semi-orthogonal matrix
        g = g * (min(g.shape[-2:]) ** 0.5 / g.float().norm(dim=(-2, -1), keepdim=True).clamp_min(1e-6)).to(g.dtype)
    if config.normuon_beta2:
        g = evened_out(g, state, torch.tensor(config.normuon_beta2, dtype=torch.float32).to(g.dtype))
    lr, weight_decay = hp.lr.float().to(g.dtype), (hp.weight_decay * hp.wd_multiplier).float().to(g.dtype)
    decay = lr * weight_decay * params
    if config.cautious_wd:  # only where the step and the weight have the same sign
        decay = decay * ((g * params) >= 0)
    return lr * g + decay


def evened_out(g, state, beta2):
    """NorMuon: g scaled by an EMA's ("second_moment") inverse square root of its rows' mean squares, norm kept."""
    along = -1 if g.size(-2) >= g.size(-1) else -2
    mean_square = g.float().square().mean(dim=along, keepdim=True)
    size = g.size(along)
    norm = (mean_square.sum(dim=(-2, -1), keepdim=True) * size).sqrt()
    moment = state.setdefault("second_moment", torch.zeros_like(mean_square, dtype=torch.float32))
    moment.lerp_(mean_square.to(moment.dtype), 1 - beta2)
    scale = moment.clamp_min(1e-10).rsqrt()
    new_norm = ((mean_square * size) * scale.float().square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    return g * (scale * (norm / new_norm.clamp_min(1e-10))).to(g.dtype)


def adamw(params, grads, states, lr, weight_decay, hp):
    """AdamW on slices of parameters, the row's betas (hp.settings) or adam_betas: torch's kernel, or lerp form."""
    for param, state in zip(params, states):
        if "exp_avg" not in state:  # (keys "engine.*" are the engine's own: harness/optim.py)
            state.update(exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))
    config = hp.config
    betas = hp.settings.get("betas", config.adam_betas)
    if config.adamw == "lerp":
        return adamw_lerp(params, grads, states, lr, weight_decay, betas, hp)
    fused = config.fused_adam == "true" or (config.fused_adam == "auto" and params[0].device.type == "cuda")
    # steps done, one tensor per slice (the kernel counts each up); made by a fill, no host-to-device copy
    steps = [torch.full((), float(hp.rule_step), device=p.device if fused else "cpu") for p in params]
    torch_adam(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [], steps,
               fused=fused, decoupled_weight_decay=True, amsgrad=False, beta1=betas[0], beta2=betas[1], lr=lr,
               weight_decay=weight_decay, eps=config.adam_eps, maximize=False)


def adamw_lerp(params, grads, states, lr, weight_decay, betas, hp):
    """AdamW written out: decay, the moments by lerp, the bias corrections on them; the scalars fp32 0-D tensors."""
    scalar = lambda value: torch.tensor(value, dtype=torch.float32)
    lr, weight_decay, eps, step = scalar(lr), scalar(weight_decay), scalar(hp.config.adam_eps), scalar(hp.rule_step + 1)
    beta1, beta2 = scalar(betas[0]), scalar(betas[1])
    for param, grad, state in zip(params, grads, states):
        param.mul_(1 - lr * weight_decay)
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].lerp_(grad.square(), 1 - beta2)
        denominator = (state["exp_avg_sq"] / (1 - beta2 ** step)).sqrt() + eps
        param.add_(state["exp_avg"] / denominator, alpha=-(lr / (1 - beta1 ** step)).item())


def tall_lr_scale(rows, cols):
    return max(1.0, rows / cols) ** 0.5


UPDATE_RULES = {
    "muon": UpdateRule(muon, shards="matrices", lr_scale=tall_lr_scale),
    "normuon": UpdateRule(normuon, shards="matrices", lr_scale=tall_lr_scale, sees_params=True, returns="step"),
    "adamw": UpdateRule(adamw, shards="elements"),
}

# -----------------------------------------------------------------------------
# Schedule


def lr_multiplier(step, num_steps, config):
    """Linear warm-up over warmup_steps, flat, then linear warm-down over the last warmdown_frac of the run; where
    the two overlap (a short run), the lower of them, so that the lr never jumps."""
    warmup = (step + 1) / config.warmup_steps if step < config.warmup_steps else 1.0
    warmdown_steps = round(config.warmdown_frac * num_steps)
    if step < num_steps - warmdown_steps:
        return warmup
    progress = (num_steps - step) / max(warmdown_steps, 1)
    return min(warmup, progress + (1 - progress) * config.final_lr_frac)


def muon_momentum(step, num_steps, config):
    """Up from muon_momentum_start over its warm-up; with muon_momentum_end, down to it over the lr's warm-down."""
    if step < config.muon_momentum_warmup:
        frac = step / config.muon_momentum_warmup
        return (1 - frac) * config.muon_momentum_start + frac * config.muon_momentum
    warmdown_steps = round(config.warmdown_frac * num_steps)
    if not config.muon_momentum_end or step < num_steps - warmdown_steps:
        return config.muon_momentum
    progress = (step - (num_steps - warmdown_steps)) / warmdown_steps
    return config.muon_momentum * (1 - progress) + config.muon_momentum_end * progress


def wd_multiplier(step, num_steps, config):
    """Of Muon's weight decay: constant, or a half cosine from 1 to 0 over the run."""
    return 0.5 * (1 + math.cos(math.pi * step / num_steps)) if config.wd_schedule == "cosine" else 1.0


# -----------------------------------------------------------------------------
# The training step


def train_step(trainer, step, num_steps):
    """One optimizer step over the global batch: the micro-batches' forward and backward (their gradients go out in
    the optimizer's buckets as they are ready), then the update. Returns the mean train loss (a tensor, not yet
    synced) and the lr multiplier."""
    config, B = trainer.config, trainer.config.device_batch
    multiplier = lr_multiplier(step, num_steps, config)
    trainer.optimizer.set_schedule(multiplier, momentum=muon_momentum(step, num_steps, config),
                                   wd_multiplier=wd_multiplier(step, num_steps, config))
    inputs, targets = trainer.loader.next_batch()
    total = torch.zeros((), device=trainer.device)
    for micro in range(trainer.accum_steps):
        with trainer.autocast:
            loss = trainer.forward(inputs[micro * B:(micro + 1) * B], targets[micro * B:(micro + 1) * B])
        (loss / trainer.accum_steps).backward()
        total += loss.detach()
    trainer.mean_over_processes(total)
    trainer.optimizer.step()
    return total / trainer.accum_steps, multiplier


if __name__ == "__main__":
    import sys
    main(sys.modules[__name__])
