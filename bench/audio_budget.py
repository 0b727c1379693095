"""Benchmark: train a genlab audio model (WaveNet as experiment=wavenet_fsdd sizes it, digit-conditional;
WaveGlow as waveglow_fsdd) on the FSDD clips for a wall-clock budget, then bits per sample on all
300 test clips (recording index 0-4). It loads the WAVs itself with dataset=fsdd's rule (the central
4,096 samples, or the clip centred in silence; mu-law to 256 levels) and trains on all 2,700
non-test clips (dataset=fsdd holds 10% of them out for validation): it was written before that
dataset landed on this branch. Batch 8, Adam, gradient norm clipped at 1, one thread.

    python -m bench.audio_budget wavenet 900 8      # kind, wall seconds, batch; writes /tmp/aud/KIND_budget.{json,pt}

Needs the clips extracted in /tmp/fsdd: tar xzf ../shared/data/fsdd/recordings.tar.gz -C /tmp/fsdd
"""
import numpy as np, torch, scipy.io.wavfile as w
import sys, time, glob, os, json
from genlab.models.wavenet import WaveNet
from genlab.models.waveglow import WaveGlow
torch.set_num_threads(1)
T = 4096
def center_fit(a, n):
    if len(a) >= n:
        s = (len(a) - n) // 2; return a[s:s+n]
    l = (n - len(a)) // 2; return np.pad(a, (l, n - len(a) - l))
def load(test):
    xs, ys = [], []
    for f in sorted(glob.glob('/tmp/fsdd/recordings/*.wav')):
        d, s, i = os.path.basename(f)[:-4].split('_')
        if (int(i) < 5) != test: continue
        sr, a = w.read(f); a = center_fit(a.astype(np.float32) / 32768, T)
        mu = 255; y = np.sign(a) * np.log1p(mu * np.abs(a)) / np.log1p(mu)
        xs.append(np.round((y + 1) / 2 * mu).astype(np.uint8)); ys.append(int(d))
    return torch.tensor(np.stack(xs))[:, None], torch.tensor(ys)
xtr, ytr = load(False); xte, yte = load(True)
kind, wall, bs = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
if kind == "wavenet":
    m = WaveNet([1, T], conditional=True, num_classes=10, channels=16, skip_channels=32, layers_per_stack=8, stacks=2); lr = 3e-3
else:
    m = WaveGlow([1, T], groups=8, steps=4, hidden=32, layers=4); lr = 1e-3
opt = torch.optim.Adam(m.parameters(), lr=lr)
t0, c0, step = time.time(), time.process_time(), 0
while time.time() - t0 < wall:
    idx = torch.randint(0, len(xtr), (bs,))
    loss = m.nll_bits(xtr[idx], ytr[idx]).mean() / T
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step(); step += 1
    if step % 50 == 0: print(step, round(time.time()-t0), round(time.process_time()-c0), loss.item(), os.getloadavg()[0], flush=True)
cpu = time.process_time() - c0
m.eval()
with torch.no_grad():
    te = torch.cat([m.nll_bits(xte[i:i+50], yte[i:i+50]) for i in range(0, len(xte), 50)]).mean() / T
res = dict(kind=kind, steps=step, batch=bs, wall_s=round(time.time()-t0), cpu_s=round(cpu), test_clips=len(xte), test_bits_per_sample=round(te.item(), 4))
print(json.dumps(res)); json.dump(res, open(f"/tmp/aud/{kind}_budget.json", "w"))
torch.save(m.state_dict(), f"/tmp/aud/{kind}_budget.pt")
