"""genlab's DPM-Solver++(2M) against diffusers' DPMSolverMultistepScheduler on the same model
output and noise. diffusers is not a genlab dependency; for this check it was installed apart:

    pip install --no-deps --target /tmp/dfr diffusers==0.31.0 huggingface_hub==0.26.2 safetensors regex
    PYTHONPATH=.:/tmp/dfr OMP_NUM_THREADS=1 .venv/bin/python bench/dpm_solver_vs_diffusers.py
"""
import torch
from diffusers import DPMSolverMultistepScheduler

from genlab.models.diffusion import DDPM
from genlab.samplers.dpm_solver import DPMSolverSampler

torch.manual_seed(0)
T = 1000
model = DDPM((1, 8, 8), timesteps=T, channels=8, channel_mult=(1, 2), num_res_blocks=1,
             attention_resolutions=(4,), dropout=0.0).eval()
x_T = torch.randn(8, 1, 8, 8)
for steps in (10, 15, 20, 25):
    ours = DPMSolverSampler(steps=steps, clip_x0=False).solve(model, x_T.clone())
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        algorithm_type="dpmsolver++", solver_order=2, prediction_type="epsilon",
        timestep_spacing="linspace", final_sigmas_type="zero", lower_order_final=True)
    scheduler.set_timesteps(steps)
    # diffusers holds the schedule in float32, genlab in float64: the same schedule for both
    same = DDPM((1, 8, 8), timesteps=T, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), dropout=0.0).eval()
    same.net, same.alphas_bar = model.net, scheduler.alphas_cumprod.double()
    same_schedule = DPMSolverSampler(steps=steps, clip_x0=False).solve(same, x_T.clone())
    assert [int(t) for t in scheduler.timesteps] == DPMSolverSampler(steps=steps).timesteps(model)
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = model.net(x, torch.full((8,), int(t)), None)
            x = scheduler.step(eps, t, x).prev_sample
    print(f"steps={steps}: max |x_0| {x.abs().max().item():.1f}; max |genlab - diffusers| = "
          f"{(ours - x).abs().max().item():.2e} (float64 schedule), "
          f"{(same_schedule - x).abs().max().item():.2e} (diffusers' float32 schedule)")
