"""genlab's Hydra launcher: the submitit SLURM launcher with a dry run (``hardware.dry_run=true``).

Hydra builds launchers only from the ``hydra_plugins`` package, so it lives here, not in genlab/.

A dry run submits nothing. It prints the sbatch script submitit would submit, written by
submitit itself from the same parameters, saves it as ``<sweep dir>/.submitit/dry_run.sbatch``,
and then runs the jobs on this machine under submitit's local executor: every task of the job
(``nodes`` x ``tasks_per_node``, all on this machine) is started with the SLURM variables
``srun`` would give it, so Lightning sets up the same multi-node DDP job as on the cluster. The
``setup`` lines are printed, not run (``module load`` exists on the cluster only).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from omegaconf import OmegaConf

from genlab.cluster import cpus_granted, srun_environment

log = logging.getLogger(__name__)

#: submitit's parameters that every executor shares (the others are SLURM's own)
_GENERIC = set(OmegaConf.structured(BaseQueueConf).keys())


def sbatch_script(params: dict[str, Any], num_jobs: int = 1) -> str:
    """The sbatch script submitit's SLURM executor writes for the launcher parameters ``params``
    (``hydra.launcher.*``, resolved) and an array of ``num_jobs`` jobs, without a cluster."""
    from submitit.slurm.slurm import SlurmExecutor

    class ScriptOnly(SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:  # srun is not needed to write the script
            return 1

    executor = ScriptOnly(params["submitit_folder"], max_num_timeout=params.get("max_num_timeout", 3))
    # as submitit.AutoExecutor(cluster="slurm").update_parameters does with the launcher's keys
    generic = {k: v for k, v in params.items() if k in _GENERIC and k != "submitit_folder" and v is not None}
    specific = {k: v for k, v in params.items()
                if k not in _GENERIC and k not in ("max_num_timeout", "dry_run") and v is not None}
    executor._internal_update_parameters(**executor._convert_parameters(generic), **specific)
    if num_jobs > 1:
        executor.parameters["map_count"] = num_jobs
    return executor._make_submission_file_text(executor._submitit_command_str, "dry_run")


class SlurmLauncher(SubmititSlurmLauncher):
    """``hydra_submitit_launcher``'s SlurmLauncher; ``dry_run=true``: see the module."""

    def __init__(self, dry_run: bool = False, **params: Any) -> None:
        super().__init__(**params)
        self.dry_run = dry_run
        if self.params.get("exclusive") is False:  # submitit would write --exclusive=False
            self.params["exclusive"] = None

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        if not self.dry_run:
            return super().launch(job_overrides, initial_job_idx)
        import submitit

        params = self.params
        script = sbatch_script(params, len(job_overrides))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        folder = Path(params["submitit_folder"].replace("%j", "dry_run"))
        folder.mkdir(parents=True, exist_ok=True)
        (folder.parent / "dry_run.sbatch").write_text(script)
        print(f"# genlab dry run: the sbatch script submitit would submit ({folder.parent / 'dry_run.sbatch'})\n"
              f"{script}", flush=True)
        nodes, tasks_per_node = params["nodes"], params["tasks_per_node"]
        log.info("dry run: %d job(s) of %d node(s) x %d task(s), all on this machine; sweep output dir %s",
                 len(job_overrides), nodes, tasks_per_node, sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=params["timeout_min"], tasks_per_node=nodes * tasks_per_node,
                                   gpus_per_node=params.get("gpus_per_node") or 0,
                                   signal_delay_s=params["signal_delay_s"])
        job_params = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*job_params))
        return [job.results()[0] for job in jobs]

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        if self.dry_run:  # a task of the local executor: give it what srun gives a task
            import submitit

            task = submitit.JobEnvironment()
            tasks = self.params["nodes"] * self.params["tasks_per_node"]
            os.environ.update(srun_environment(
                task.global_rank, self.params["nodes"], self.params["tasks_per_node"], job_id=str(task.job_id),
                cpus_per_task=max(1, min(self.params.get("cpus_per_task") or 1, cpus_granted() // tasks)),
                job_name=self.params.get("name") or "genlab"))
            # Lightning read the rank when the pickled job imported it, before these variables
            from lightning_utilities.core.rank_zero import rank_zero_only

            rank_zero_only.rank = task.global_rank
        return super().__call__(*args, **kwargs)
