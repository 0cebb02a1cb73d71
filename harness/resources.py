"""harness/resources.py: what a run used beyond its timed GPU work, measured (never declared), for the log's
`resources:` line that records check against a track's rules (records/tracks.json `rules`).

- parameters by kind: embedding tables (and their rows: a hash table is one), matrices (2-D parameters outside the
  tables), the rest; and the model's buffers (a table kept as a buffer counts too);
- peak GPU memory (torch's allocator, the largest process's) and the peak host memory (resident set) of every
  process, from the kernel (getrusage: the whole process, its loader thread included);
- CPU time inside the timed loop (every thread of the process: a CPU-side cache or n-gram lookup shows here) and the
  wall time of every untimed phase: setup (model, data identity, before any step), warm-up (compile), evaluation,
  checkpoints;
- bytes read by read calls (/proc/self/io rchar) before training and inside the timed loop: the token shards are
  memory-mapped, not read, so this is what the run read from anything else (Python's own imports included).
"""

import resource
import time

import torch
import torch.distributed as dist
import torch.nn as nn


def parameters_by_kind(model):
    """{"embedding": params, "embedding_rows": rows, "matrices": params, "other": params, "buffers": elements}."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    rows = sum(m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding))
    kinds = {"embedding": 0, "embedding_rows": rows, "matrices": 0, "other": 0,
             "buffers": sum(b.numel() for b in model.buffers())}
    for p in model.parameters():
        kind = "embedding" if id(p) in tables else "matrices" if p.ndim == 2 else "other"
        kinds[kind] += p.numel()
    return kinds


def bytes_read():
    """This process's bytes read by read calls so far (Linux /proc/self/io rchar); None elsewhere."""
    try:
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))
    except (OSError, StopIteration, ValueError):
        return None


def host_peak_bytes():
    """The peak resident set of this process (getrusage reports KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Resources:
    """The measurements of one process; `figures` gathers every process's to rank 0."""

    def __init__(self, wall_start):
        self.wall_start, self.phases, self.loop_cpu = wall_start, {}, 0.0
        self.read_at_start, self.read_in_loop, self._window = bytes_read(), 0, None

    def phase(self, name, seconds):
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def setup_done(self):
        """The untimed set-up ends as the warm-up starts."""
        self.phase("setup", time.perf_counter() - self.wall_start)
        self.read_setup = bytes_read()

    def window_start(self):
        self._window = (time.process_time(), bytes_read())

    def window_end(self):
        cpu, read = self._window
        self.loop_cpu += time.process_time() - cpu
        now = bytes_read()
        if now is not None and read is not None:
            self.read_in_loop += now - read

    def figures(self, model, device, comm):
        """The run's resources line (on every process; rank 0's result is the one logged): maxima and per-process
        lists over processes."""
        gpu = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        setup_read = None if self.read_at_start is None or getattr(self, "read_setup", None) is None else \
            self.read_setup - self.read_at_start
        mine = {"host_peak_bytes": host_peak_bytes(), "gpu_peak_bytes": gpu, "loop_cpu_s": round(self.loop_cpu, 3),
                "read_setup_bytes": setup_read, "read_loop_bytes": self.read_in_loop if setup_read is not None else None}
        every = [mine] * comm.world
        if comm.world > 1:
            every = [None] * comm.world
            dist.all_gather_object(every, mine)
        return {"params": parameters_by_kind(model),
                "host_peak_bytes": [e["host_peak_bytes"] for e in every],
                "gpu_peak_bytes": None if gpu is None else max(e["gpu_peak_bytes"] for e in every),
                "loop_cpu_s": [e["loop_cpu_s"] for e in every],
                "untimed_s": {name: round(seconds, 3) for name, seconds in self.phases.items()},
                "read_setup_bytes": max((e["read_setup_bytes"] for e in every if e["read_setup_bytes"] is not None),
                                        default=None),
                "read_loop_bytes": max((e["read_loop_bytes"] for e in every if e["read_loop_bytes"] is not None),
                                       default=None)}
