"""Sanity check of the simulated domain shift: a small CNN trained on Y10 galaxies, tested on
held-out galaxies at Y10 and at Y1 (the same galaxies with sqrt(10) more relative sky noise).

Not a test and not a benchmark of speed: it shows that the classes are learnable at Y10 and that
a model trained there loses accuracy at Y1. Takes a few minutes on 2 CPU cores.

Usage: ``python benchmarks/sim_domain_shift.py``
"""
import time

import numpy as np
import torch
import torch.nn as nn

from galguard import sim
torch.set_num_threads(2); torch.manual_seed(0)
t=time.perf_counter()
N=1800
out=sim.simulate(N, seed=11, n_jobs=1)
print('sim', time.perf_counter()-t, flush=True)
def prep(x):
    x = x.reshape(len(x),3,50,2,50,2).mean(axis=(3,5))  # 2x2 binning -> 50x50
    zp=sim.depth_params('y10')['zeropoint']
    x = x*10**(0.4*(zp[1]-zp))[None,:,None,None]
    return torch.tensor(np.arcsinh(x/0.5)).float()
X10=prep(out['y10'].images); X1=prep(out['y1'].images); y=torch.tensor(out['y10'].labels)
ntr=1400
net=nn.Sequential(nn.Conv2d(3,16,5,padding=2),nn.BatchNorm2d(16),nn.ReLU(),nn.MaxPool2d(2),
                  nn.Conv2d(16,32,3,padding=1),nn.BatchNorm2d(32),nn.ReLU(),nn.MaxPool2d(2),
                  nn.Conv2d(32,64,3,padding=1),nn.BatchNorm2d(64),nn.ReLU(),nn.MaxPool2d(2),
                  nn.Flatten(),nn.Linear(64*36,128),nn.ReLU(),nn.Dropout(0.3),nn.Linear(128,3))
opt=torch.optim.Adam(net.parameters(),1e-3,weight_decay=1e-4)
for ep in range(12):
    net.train(); perm=torch.randperm(ntr)
    for b in range(0,ntr,64):
        i=perm[b:b+64]; xb=X10[i]
        if np.random.rand()<0.5: xb=xb.flip(3)
        xb=torch.rot90(xb,np.random.randint(4),(2,3))
        loss=nn.functional.cross_entropy(net(xb),y[i]); opt.zero_grad(); loss.backward(); opt.step()
    net.eval()
    with torch.no_grad():
        a10=(net(X10[ntr:]).argmax(1)==y[ntr:]).float().mean().item()
        a1=(net(X1[ntr:]).argmax(1)==y[ntr:]).float().mean().item()
        p1=net(X1[ntr:]).argmax(1)
    print(ep, round(loss.item(),3), 'acc Y10', round(a10,3), 'Y1', round(a1,3), 'Y1 pred counts', np.bincount(p1.numpy(),minlength=3), flush=True)
