"""
Oriented bumps on an oblique ridge
==================================

An axis-aligned bump can only stretch along the coordinate axes, so a thin ridge
along the diagonal needs many small bumps. An oriented bump
(:class:`~wandering.SlowOrientedSumOfBumpFcns`, see :doc:`/guide/oriented`) learns
its rotation and can lie along the ridge. Both kinds get 12 bumps, the same start
and the same 120 Adam steps; we draw each fit with its bumps' support ellipses.
"""

import math

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Ellipse

from wandering import SlowOrientedSumOfBumpFcns, SlowSumOfBumpFcns

# %%
# A ridge of width 0.05 along the diagonal, sampled at 2000 points.
gen = torch.Generator().manual_seed(0)
x = torch.rand(2000, 2, generator=gen)


def ridge(p):
    return torch.exp(-(((p[:, 0] - p[:, 1]) / 0.05) ** 2))


y = ridge(x)

# %%
# Twelve bumps on the diagonal, round at the start; the same loop for both kinds.
support_p = 0.001
models, losses = {}, {}
for cls in (SlowSumOfBumpFcns, SlowOrientedSumOfBumpFcns):
    torch.manual_seed(0)
    t = torch.linspace(0.05, 0.95, 12)
    model = cls(
        torch.stack([t, t]),
        torch.full((2, 12), 0.06),
        torch.full((12,), 0.5),
        [[0.0, 1.0]] * 2,
        [[0.01, 0.5]] * 2,
        support_p=support_p,
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(120):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        model.bound()
    models[cls.__name__], losses[cls.__name__] = model, loss.item()
    print(f"{cls.__name__:26s} mean squared error {loss.item():.2e}")

# %%
# The fits. Each ellipse is where a bump falls to ``support_p`` of its peak
# (for the axis-aligned bumps the support is the box around it; the ellipse is
# drawn at the same level for comparison).
g = torch.linspace(0, 1, 200)
grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), dim=-1).reshape(-1, 2)
level = math.sqrt(-math.log(support_p))
fig, axes = plt.subplots(1, 3, figsize=(13, 4.3), layout="constrained")
axes[0].imshow(ridge(grid).reshape(200, 200), origin="lower", extent=(0, 1, 0, 1), cmap="viridis", vmin=0, vmax=1)
axes[0].set_title("target: an oblique ridge")
for ax, (name, model) in zip(axes[1:], models.items()):
    with torch.no_grad():
        ax.imshow(model(grid).reshape(200, 200), origin="lower", extent=(0, 1, 0, 1), cmap="viridis", vmin=0, vmax=1)
        c, w = model.c.numpy(), model.w.abs().numpy()
        angles = model.angles[0].numpy() if hasattr(model, "angles") else [0.0] * c.shape[1]
    for k in range(c.shape[1]):
        ax.add_patch(
            Ellipse(
                (c[0, k], c[1, k]),
                2 * level * w[0, k],
                2 * level * w[1, k],
                angle=math.degrees(angles[k]),
                fill=False,
                color="w",
                lw=0.8,
            )
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{name}\nMSE {losses[name]:.1e}")
plt.show()
