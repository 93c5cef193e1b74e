"""
Three functions, one set of bumps: fitting a colour picture
===========================================================

With magnitudes of shape (K, P) a sum of bumps computes P functions that share
the bumps' centres and widths (see :doc:`/guide/multi_output`). The three colour
channels of a picture are such functions of the pixel position. Here one
:class:`~wandering.SlowSumOfBumpFcns` with m of shape (K, 3) fits a small
synthetic RGB picture, trained by a plain loop with :func:`wandering.attach`.
"""

import matplotlib.pyplot as plt
import torch

from wandering import SlowSumOfBumpFcns, attach

torch.manual_seed(0)

# %%
# A 64 x 64 picture: a red disc, a green band, a blue corner glow, on grey.
n = 64
t = (torch.arange(n, dtype=torch.float32) + 0.5) / n
yy, xx = torch.meshgrid(t, t, indexing="ij")
red = torch.exp(-((((xx - 0.35) ** 2 + (yy - 0.6) ** 2) / 0.02) ** 2))
green = torch.exp(-(((xx + yy - 1.1) / 0.12) ** 2))
blue = torch.exp(-((xx - 0.9) ** 2 + (yy - 0.1) ** 2) / 0.05)
picture = (0.15 + 0.8 * torch.stack([red, green, blue], dim=-1)).clamp(0, 1)  # (n, n, 3)

points = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)  # (n*n, 2)
colours = picture.reshape(-1, 3)  # (n*n, 3)

# %%
# One module, K = 96 bumps, three outputs. The offset (the grey background) is a
# separate parameter.
K, P = 96, 3
bumps = SlowSumOfBumpFcns(
    torch.rand(2, K),
    torch.full((2, K), 0.08),
    torch.zeros(K, P),
    c_bounds=[[0.0, 1.0]] * 2,
    w_bounds=[[0.01, 0.5]] * 2,
    c_grad_std=1e-3,
)
offset = torch.nn.Parameter(colours.mean(0))
opt = torch.optim.Adam([*bumps.parameters(), offset], lr=0.02)
losses = []
with attach(opt, bumps):  # pert_grads before every step, bound after it
    for _ in range(300):
        opt.zero_grad()
        loss = ((bumps(points) + offset - colours) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
fitted = (bumps(points) + offset).detach().clamp(0, 1).reshape(n, n, 3)
print(f"RMSE per channel: {((fitted - picture) ** 2).mean(dim=(0, 1)).sqrt().numpy().round(4)}")

# %%
# The picture and its fit, and the loss.
fig, axes = plt.subplots(1, 3, figsize=(12, 4), layout="constrained")
axes[0].imshow(picture.numpy(), origin="lower", extent=(0, 1, 0, 1))
axes[0].set_title("picture (3 channels)")
axes[1].imshow(fitted.numpy(), origin="lower", extent=(0, 1, 0, 1))
c = bumps.c.detach()
axes[1].plot(c[0], c[1], "k.", ms=3)
axes[1].set_title(f"one sum of {K} bumps, m of shape ({K}, {P})")
axes[2].semilogy(losses)
axes[2].set_xlabel("step")
axes[2].set_title("mean squared error")
plt.show()
