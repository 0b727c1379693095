"""How many CPU threads a process computes with: what it owns, not what the machine has.

torch starts one compute thread per core of the machine. Two runs side by side on a 2-core
machine then run 4 spinning threads on 2 cores, and each slows down far beyond its share. The
number here is the CPUs the process may run on (its affinity mask, which ``taskset``, cgroups'
cpusets and SLURM set), capped by ``SLURM_CPUS_PER_TASK``, divided among the processes that
start together on this node (DDP ranks on the CPU, a parallel launcher's jobs), unless the
hardware profile says ``hardware.cpu_threads``. Idle OpenMP threads sleep instead of spinning
(``OMP_WAIT_POLICY=PASSIVE``, set before torch is imported unless the user set it), so a busy
neighbour is not slowed by threads that only wait.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional

from genlab.errors import ConfigError

log = logging.getLogger(__name__)


def owned_cpus(environ: Mapping[str, str] = os.environ) -> int:
    """CPUs this process may run on: its affinity mask, capped by SLURM's grant."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    granted = environ.get("SLURM_CPUS_PER_TASK", "")
    if granted.isdigit() and int(granted) > 0:
        cpus = min(cpus, int(granted))
    return max(cpus, 1)


def compute_threads(requested: Any = None, sharing: int = 1, environ: Mapping[str, str] = os.environ) -> Optional[int]:
    """``hardware.cpu_threads`` when set; else None where the user set OMP_NUM_THREADS (torch
    follows it already); else the owned CPUs split among ``sharing`` processes."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ConfigError(f"hardware.cpu_threads={requested!r} must be an integer >= 1, or null "
                              "(the CPUs this process owns, shared with the processes started beside it)")
        return requested
    if environ.get("OMP_NUM_THREADS"):
        return None
    return max(owned_cpus(environ) // max(int(sharing), 1), 1)


def processes_sharing(cfg: Any) -> int:
    """Processes this one's CPUs are shared with, itself included: DDP ranks on the CPU of this
    node, times the jobs a parallel Hydra launcher runs at once."""
    trainer = cfg.get("trainer") or {}
    ranks = trainer.get("devices") if trainer.get("accelerator") == "cpu" else 1
    ranks = ranks if isinstance(ranks, int) and ranks > 0 else 1
    jobs = 1
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        n_jobs = HydraConfig.get().launcher.get("n_jobs")
        if isinstance(n_jobs, int) and n_jobs > 1:
            jobs = n_jobs
    return ranks * jobs


def prefer_passive_waiting(environ: Optional[dict] = None) -> None:
    """OMP_WAIT_POLICY=PASSIVE unless set (read by OpenMP when torch is first imported)."""
    (os.environ if environ is None else environ).setdefault("OMP_WAIT_POLICY", "PASSIVE")


def apply_cpu_threads(cfg: Any) -> int:
    """Set torch's compute threads for this run (see the module's docstring) and return them."""
    import torch

    hardware = cfg.get("hardware") or {}
    threads = compute_threads(hardware.get("cpu_threads"), processes_sharing(cfg))
    if threads is not None:
        torch.set_num_threads(threads)
    # debug: an info line here would open the log file of a run directory before genlab has
    # decided whether this command may touch it
    log.debug("CPU threads: %d of %d owned CPUs (hardware.cpu_threads overrides)",
             torch.get_num_threads(), owned_cpus())
    return torch.get_num_threads()
