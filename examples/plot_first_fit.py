"""
Fit a 2-D function with ``BumpRegressor``
=========================================

The shortest way from points to a fitted sum of bumps: :class:`wandering.BumpRegressor`
places the bumps where the target varies, solves their magnitudes exactly, moves
centres and widths with Adam, and polishes the magnitudes at the end. Here it fits
the demo's target (ten rotated Gaussian bumps with 3% noise) with 48 bumps, and we
draw the target, the fit with the bump centres, and the residual.
"""

import time

import matplotlib.pyplot as plt
import numpy as np

from wandering import BumpRegressor
from wandering.cli.demo import demo_target

# %%
# The data: 4000 noisy samples of a smooth function on the unit square; 10% are
# held out to score the fit.
f, x, y = demo_target(seed=0, n_points=4000)
train, test = slice(0, 3600), slice(3600, None)

# %%
# The fit: 48 bumps and 200 full-batch steps (the default is 2000 steps,
# which buys a little more accuracy). ``random_state`` makes it reproducible.
start = time.perf_counter()
reg = BumpRegressor(n_bumps=48, steps=200, random_state=0).fit(x[train], y[train])
print(f"fitted in {time.perf_counter() - start:.1f} s, {reg.n_params_} parameters")
print(f"held-out R^2 {reg.score(x[test], y[test]):.4f}")

# %%
# The picture. ``reg.module_.bumps`` is the fitted
# :class:`~wandering.SlowSumOfBumpFcns`; it works on the unit box, so its centres
# are mapped back to data units with ``x_lo_`` and ``x_scale_``.
g = np.linspace(0, 1, 150)
grid = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)
truth, fit = f(grid).reshape(150, 150), reg.predict(grid).reshape(150, 150)
centres = reg.module_.bumps.c.detach().numpy().T * reg.x_scale_ + reg.x_lo_

fig, axes = plt.subplots(1, 3, figsize=(12, 4), layout="constrained")
lim = np.abs(truth).max()
for ax, image, title in ((axes[0], truth, "target"), (axes[1], fit, "fit and bump centres")):
    ax.imshow(image, origin="lower", extent=(0, 1, 0, 1), cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_title(title)
axes[1].plot(centres[:, 0], centres[:, 1], "k.", ms=4)
err = np.abs(fit - truth).max()
im = axes[2].imshow(fit - truth, origin="lower", extent=(0, 1, 0, 1), cmap="RdBu_r", vmin=-err, vmax=err)
axes[2].set_title("fit - target (its own scale)")
fig.colorbar(im, ax=axes[2], shrink=0.8)
plt.show()
