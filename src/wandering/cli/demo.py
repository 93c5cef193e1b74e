"""The ``wandering demo`` problem: a seeded synthetic 2-D target and the settings the demo fits it with.

Importable without torch (numpy only), e.g. by benchmarks::

    from wandering.cli.demo import demo_target, DEMO_SETTINGS, DEMO_POINTS
"""

from __future__ import annotations

import numpy as np

from wandering.fit._settings import FitSettings

__all__ = ["demo_target", "DEMO_SETTINGS", "DEMO_POINTS"]

# Small gradient noise: idle bumps visibly wander, working ones hold still (see demo.png).
DEMO_SETTINGS = FitSettings(bumps=48, steps=800, c_grad_std=0.001, record_every=10)
DEMO_POINTS = 4000


def demo_target(seed: int, n_points: int, n_true: int = 10):
    """A seeded 2-D target on the unit square: rotated anisotropic Gaussian bumps plus a little noise.

    Returns (f, x, y): f(points (m, 2)) -> noiseless values, and the noisy samples.
    """
    rng = np.random.default_rng(seed)
    cent = rng.uniform(0.15, 0.85, size=(n_true, 2))
    sig = rng.uniform(0.05, 0.2, size=(n_true, 2))
    ang = rng.uniform(0, np.pi, size=n_true)
    amp = rng.choice([-1.0, 1.0], size=n_true) * rng.uniform(0.5, 1.5, size=n_true)
    rot = np.stack([np.stack([np.cos(ang), -np.sin(ang)], -1), np.stack([np.sin(ang), np.cos(ang)], -1)], -2)

    def f(p: np.ndarray) -> np.ndarray:
        d = p[:, None, :] - cent[None]  # (m, T, 2)
        u = np.einsum("tij,mtj->mti", rot.transpose(0, 2, 1), d) / sig[None]
        return (amp[None] * np.exp(-0.5 * (u * u).sum(-1))).sum(-1)

    x = rng.uniform(0, 1, size=(n_points, 2))
    clean = f(x)
    y = clean + rng.normal(scale=0.03 * clean.std(), size=n_points)
    return f, x, y
