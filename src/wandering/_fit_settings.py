"""The fitting recipe's settings: a plain dataclass, importable without torch (the parser's defaults)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FitSettings:
    bumps: int = 64
    steps: int = 2000
    lr: float = 0.02
    batch: int = 4096
    c_grad_std: float = 0.001
    w_grad_std: float = 0.0
    m_grad_gain: float = 0.0
    support_p: float = 0.01
    holdout: float = 0.1
    seed: int = 0
    bounds: "np.ndarray | None" = None  # noqa: F821 - (d, 2) centre bounds in data units
    device: str = "cpu"
    progress: bool = True
    record_every: int = 0  # >0: keep centre paths (demo)
