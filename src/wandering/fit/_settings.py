"""The command's fit settings: a plain dataclass, importable without torch (the parser's defaults).

The recipe's defaults are BumpRegressor's (a test keeps them equal); ``bumps`` is a
count or "auto" (BumpRegressor's rule, resolved from the training points at fit time);
``lr`` is the command's older single learning rate, None unless given.
"""

from __future__ import annotations

from dataclasses import dataclass

SHAPES = ("axis", "oriented")  # BumpRegressor's bump shapes
DEFAULT_SHAPE = "axis"  # the default of BumpRegressor and of `wandering fit --shape`


@dataclass
class FitSettings:
    bumps: int | str = "auto"
    steps: int = 2000
    lr_position: float = 0.1
    lr_magnitude: float = 0.01
    lr_angle: float = 0.1
    lr: float | None = None  # one rate for every parameter (unit box, standardised target)
    batch: int | None = None  # None: BumpRegressor's "auto" (full batch up to 2**17 points)
    c_grad_std: float = 0.0
    w_grad_std: float = 0.0
    m_grad_gain: float = 0.0
    support_p: float = 0.01
    shape: str = DEFAULT_SHAPE
    relocate: bool = False
    holdout: float = 0.1
    seed: int = 0
    bounds: np.ndarray | None = None  # noqa: F821 - (d, 2) centre bounds in data units
    device: str = "cpu"
    progress: bool = True
    record_every: int = 0  # >0: keep centre paths (demo)
