"""What a cluster grants a task, and the environment srun gives each task.

Kept free of torch and Lightning imports: the config resolvers use it before anything heavy loads.
"""

from __future__ import annotations

import os
from typing import Optional

from genlab.threads import owned_cpus


def cpus_granted() -> int:
    """The CPUs this task may use: its affinity mask (a container's, ``taskset``'s or SLURM's
    cpuset), capped by SLURM's ``--cpus-per-task`` inside a SLURM job."""
    return owned_cpus()


def data_workers() -> int:
    """DataLoader worker processes for the CPUs granted: all but one, which the training
    process keeps (resolver ``genlab.data_workers``)."""
    return max(0, cpus_granted() - 1)


def precision_for(capability: Optional[tuple[int, int]]) -> str:
    """Lightning's ``precision`` for a CUDA device of compute ``capability`` (None: no GPU).

    bf16 needs Ampere (sm 8.0) or newer; older GPUs get fp16 mixed precision, for which
    Lightning adds a gradient scaler; the CPU trains in float32."""
    if capability is None:
        return "32-true"
    return "bf16-mixed" if tuple(capability) >= (8, 0) else "16-mixed"


def best_precision() -> str:
    """``precision_for`` this machine's first GPU (resolver ``genlab.best_precision``)."""
    import torch

    if not torch.cuda.is_available():
        return "32-true"
    return precision_for(torch.cuda.get_device_capability(0))


def srun_environment(rank: int, nodes: int, tasks_per_node: int, job_id: str, cpus_per_task: int = 1,
                     job_name: str = "genlab") -> dict[str, str]:
    """The variables ``srun`` sets for task ``rank`` of a job of ``nodes`` x ``tasks_per_node``
    tasks (the ones Lightning's SLURMEnvironment reads), with every node on this machine: how the
    dry run (``hydra.launcher.dry_run=true``) and the tests start a multi-node job here."""
    return {
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NAME": job_name,
        "SLURM_NTASKS": str(nodes * tasks_per_node),
        "SLURM_NTASKS_PER_NODE": str(tasks_per_node),
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NNODES": str(nodes),
        "SLURM_NODELIST": "127.0.0.1",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank % tasks_per_node),
        "SLURM_NODEID": str(rank // tasks_per_node),
        "SLURM_CPUS_PER_TASK": str(cpus_per_task),
    }


def process_rank() -> int:
    """This process's global rank, from the variables its launcher set (Lightning's own order:
    torchrun's RANK, Lightning's LOCAL_RANK, srun's SLURM_PROCID); 0 outside distributed runs."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def rank_log_file(path: str, rank_logs: bool = False) -> str:
    """The log file of this process (resolver ``genlab.rank_log_file``): ``path`` on rank 0.
    Other ranks write no file (every line would appear twice in rank 0's), or with
    ``rank_logs=true`` their own beside it, ``train.rank1.log``."""
    rank = process_rank()
    if rank == 0:
        return path
    if not rank_logs:
        return os.devnull
    stem, dot, suffix = path.rpartition(".")
    return f"{stem}.rank{rank}.{suffix}" if dot else f"{path}.rank{rank}"
