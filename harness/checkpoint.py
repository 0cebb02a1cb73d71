"""harness/checkpoint.py: everything needed to continue a run exactly, as tensors and plain containers (so that
torch.load(weights_only=True) reads it: nothing is unpickled)."""

import dataclasses
import hashlib
import os

import torch

from harness.config import ConfigError


def save_checkpoint(path, model, optimizer, loader, progress, config, rank=0):
    """Every process calls it (the sharded optimizer state is gathered); rank 0 writes. Weights that are not finite
    are never written: the loss read before a save is that of the weights before the last update, which may be
    the one that broke them, and the checkpoint they would replace is the one to go back to."""
    kept = f"{path} is kept as it was" if os.path.exists(path) else "no checkpoint was written"
    if not torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all():  # the same on every rank
        raise FloatingPointError(f"step {progress['step']}: the weights are not finite after this step's update; "
                                 f"{kept}. Try a lower lr")
    optimizer_state = optimizer.full_state_dict()
    if rank != 0:
        return
    state = {"model": model.state_dict(), "optimizer": optimizer_state,
             "loader": loader.state_dict(), "progress": dict(progress), "config": dataclasses.asdict(config),
             "rng": {"cpu": torch.get_rng_state(),  # the GPU's: this process's device only (any GPU count resumes)
                     "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_initialized() else []}}
    try:
        torch.save(state, path + ".tmp")
    except (OSError, RuntimeError) as e:  # a full disk: torch reports it as either
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
        raise CheckpointError(f"could not write {path} ({' '.join(str(e).split())[:200]}); {kept}. Free disk space "
                              "and resume") from None
    os.replace(path + ".tmp", path)  # a crash while saving leaves the previous checkpoint intact
    return weights_sha256(state["model"])


def weights_sha256(model_state):
    """The sha256 of a model's weights (names, dtypes, shapes and bytes): the log keeps it at each save, so that a
    resume can only continue from the weights its own run wrote."""
    digest = hashlib.sha256()
    for name in sorted(model_state):
        tensor = model_state[name].detach().to("cpu").contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def check_saved_weights(checkpoint, log_path, what):
    """A resume continues the run that wrote the checkpoint: its weights must be the ones the log saw saved last."""
    saved = []
    if os.path.exists(log_path):
        with open(log_path, encoding="utf-8", errors="replace") as f:
            saved = [line.split() for line in f if line.startswith("checkpoint: step:")]
    if not saved:  # a log from before the weights' hash was logged
        return
    step, digest = saved[-1][1].removeprefix("step:"), saved[-1][2].removeprefix("weights_sha256:")
    found = weights_sha256(checkpoint["model"])
    if (step, digest) != (str(checkpoint["progress"]["step"]), found):
        raise ConfigError(f"{what}: its weights (step {checkpoint['progress']['step']}, sha256 {found[:12]}) are not "
                          f"the ones this run saved last (step {step}, sha256 {digest[:12]}, in its log); resume from "
                          "the checkpoint the run wrote, or start a new run")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written; the message says what to do."""


RESUMABLE_CHANGES = {"resume", "stop_after", "save_every", "save_final", "log_every", "val_every", "wandb",
                     "run_id", "out_dir", "compile", "warmup_timing_steps", "val_batch", "device", "bucket_mb",
                     "fused_adam", "dry_run", "gpu", "world"}


CHECKPOINT_KEYS = {"model", "optimizer", "loader", "progress", "config", "rng"}


def load_checkpoint(path, config):
    if not os.path.isfile(path):
        raise ConfigError(f"--resume={path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises several types for a truncated, empty or foreign file
        why = "an empty file" if os.path.getsize(path) == 0 else f"torch.load: {type(e).__name__}"
        raise ConfigError(f"--resume={path}: not a readable checkpoint ({why}); resume from another checkpoint.pt, "
                          "or start the run again without --resume") from None
    if isinstance(state, dict) and "optimizers" in state and "optimizer" not in state:
        raise ConfigError(f"--resume={path}: the checkpoint predates the sharded optimizer (its optimizer state "
                          "has another form); it cannot be resumed: start a new run")
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= state.keys():
        raise ConfigError(f"--resume={path}: not a train_gpt.py checkpoint (it lacks "
                          f"{', '.join(sorted(CHECKPOINT_KEYS))}); resume from the checkpoint.pt of a run folder")
    check_same_settings(config, state["config"], f"--resume={path}: the checkpoint")
    return state


def check_same_settings(config, saved, what):
    """A run continues only with the settings it was made with (but for those in RESUMABLE_CHANGES); a setting
    added to Config since then counts as its default, which is what the run had."""
    saved = {**dataclasses.asdict(type(config)()), **saved}
    changed = [k for k, v in dataclasses.asdict(config).items()
               if k not in RESUMABLE_CHANGES and (tuple(v) if isinstance(v, tuple) else v) !=
               (tuple(saved[k]) if isinstance(saved[k], list) else saved[k])]
    if changed:
        raise ConfigError(f"{what} was made with other settings ({', '.join(changed)}); resume with the same options")



def copy_state(obj):
    """A deep copy of a state dict, its tensors copied to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: copy_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(copy_state(v) for v in obj)
    return obj
