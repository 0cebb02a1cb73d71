"""harness/device.py: the device and the processes, precision (autocast, FP8) and the compile switches."""

import os
import re

import torch
import torch.distributed as dist

from harness.config import ConfigError

def resolve_device(config, local_rank=0):
    if config.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(config.device)
    except RuntimeError:
        raise ConfigError(f"--device={config.device}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device={config.device}: no CUDA GPU is visible to torch here; use --device=cpu (or "
                          "auto), or check the driver and CUDA_VISIBLE_DEVICES")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device={config.device}: this machine has {torch.cuda.device_count()} GPU(s); use "
                          "cuda:0 to cuda:N-1, or auto")
    return device


def init_distributed(config):
    """This process's rank, world size and device, from torchrun's RANK, WORLD_SIZE and LOCAL_RANK; joins the
    process group (NCCL on GPUs, gloo on CPUs) when there is more than one process."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(config, int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device

def autocast_for(device):
    """bf16 autocast on GPUs; full precision on CPUs (CPU bf16 matmuls are slow and the tests compare exactly)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)



def out_of_memory(config, error):
    """The one line for a run that ran out of GPU memory: what it asked for, and the options that need less."""
    asked = next(iter(re.findall(r"Tried to allocate [\d.]+ \w+", str(error))), "")
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if torch.cuda.is_initialized() else "unknown"
    return (f"out of GPU memory ({asked + '; ' if asked else ''}peak allocated {peak}) at --device_batch="
            f"{config.device_batch} (--val_batch={config.val_batch or config.device_batch} in evaluation): lower "
            f"--device_batch to a divisor of it (gradient accumulation keeps the {config.total_batch_tokens:,} tokens "
            "a step), or --val_batch if it ran out in evaluation; --loss=chunked never holds the whole logits")


# -----------------------------------------------------------------------------
# Precision and compilation switches


def enable_fp8(model, device):
    """FP8 for every module that offers it (a `use_fp8` attribute: the recipe's large Linears) where the hardware
    has FP8 matmuls; a notice otherwise."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        print(f"notice: --fp8 needs FP8 tensor cores (Hopper or Ada); {torch.cuda.get_device_name(device)} trains "
              "in bf16")
        return False
    for module in model.modules():
        if hasattr(module, "use_fp8"):
            module.use_fp8 = True
    return True


def wants_compile(config, device):
    return config.compile in ("true", "blocks") or (config.compile == "auto" and device.type == "cuda")


def compile_dynamic(fn, backend="inductor"):
    """fn compiled once for every shape it meets (an optimizer's matrix stacks): shapes dynamic, and sizes that happen
    to be equal (a square stack) not taken to be equal, which would compile another graph for the next stack that is
    not."""
    import torch.fx.experimental._config as shape_config
    compiled = torch.compile(fn, dynamic=True, backend=backend)

    def call(*args, **kwargs):
        with shape_config.patch(use_duck_shape=False):  # read when a graph is traced
            return compiled(*args, **kwargs)
    return call


def compiler(enabled, backend="inductor"):
    """hp.compiled for the update rules: a function's compiled version (made once) when compiling, else itself."""
    cache = {}

    def compiled(fn):
        if not enabled:
            return fn
        if fn not in cache:
            cache[fn] = compile_dynamic(fn, backend)
        return cache[fn]
    return compiled


def compile_by_block(model, backend="inductor"):
    """--compile=blocks: each block compiled on its own (blocks of one kind share a graph), and the attention masks
    and the head and loss, while the embedding lookups and the loop stay eager. The backward is then one autograd
    node per block, which hands out the block's gradients when it is done, so a gradient bucket's reduce-scatter
    starts while the blocks below are still in their backward (a whole-model compile hands out every gradient at
    its end). The masks get a compiled function of their own, not eager code: eager create_block_mask evaluates
    the mask function into a [B, 1, T, T] boolean tensor per window and micro-batch before reducing it to blocks,
    and torch advises compiling it (a whole-model compile does so implicitly). Not yet timed on a GPU."""
    # the blocks share Block.forward's code, whose cache keeps a graph per kind of block (window, value embedding)
    # for training, for evaluation (no grad) and for evaluation's last, shorter batch: more than Dynamo's default 8
    kinds = {(block.attn.window, block.attn.value_mix is not None, getattr(block.attn, "value_gate", None) is not None)
             for block in model.blocks}
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(kinds))
    for block in model.blocks:
        block.compile(backend=backend)  # in place: the parameters' names, and so the checkpoints, do not change
    model.masks = torch.compile(model.masks, backend=backend)
    model.head_and_loss = torch.compile(model.head_and_loss, backend=backend)

