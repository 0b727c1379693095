"""callbacks.cpu_budget: training stops after a budget of this process's CPU time."""

import json

import pytest
import torch

from genlab.callbacks.budget import CPUBudget
from genlab.errors import ConfigError
from genlab.train import train

from conftest import compose_cfg


def test_a_run_stops_at_its_cpu_budget_and_still_measures_its_objective(tmp_path):
    budget = 0.05  # 3 CPU-seconds
    cfg = compose_cfg(overrides=["trainer.max_epochs=10000", "trainer.check_val_every_n_epoch=10000",
                                 f"callbacks.cpu_budget.minutes={budget}", "callbacks.fid=null",
                                 "callbacks.samples=null", "callbacks.bpd.max_examples=50", "logger=none",
                                 "test=false", "hardware.cpu_threads=1"], output_dir=tmp_path)
    objective = train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert objective == metrics["best"]["val/bpd"] < 8  # validated at the step it stopped
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    spent = next(v for k, v in ckpt["callbacks"].items() if "CPUBudget" in k)["spent_cpu_seconds"]
    assert 60 * budget <= spent < 60 * budget + 30  # stopped once over, not far past it
    assert ckpt["global_step"] >= 1 and ckpt["epoch"] < 10000 - 1  # stopped by the budget, long before max_epochs


def test_the_spent_time_is_carried_by_the_checkpoint():
    first = CPUBudget(minutes=1)
    first.spent = 12.5
    second = CPUBudget(minutes=1)
    second.load_state_dict(first.state_dict())
    assert second._used() == pytest.approx(12.5)


@pytest.mark.parametrize("minutes", [0, -1, "ten", True])
def test_a_budget_that_is_no_time_is_refused_by_name(minutes):
    with pytest.raises(ConfigError, match=r"callbacks\.cpu_budget\.minutes"):
        CPUBudget(minutes=minutes)
