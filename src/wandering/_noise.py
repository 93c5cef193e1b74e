"""Counter-based noise: every draw is a pure function of (seed, step, stream).

A module keeps ``noise_seed`` and ``noise_step`` as int64 buffers. They travel
in ``state_dict`` (exact resume) and are synchronised by
DistributedDataParallel like any buffer, so every rank draws the same noise
without a collective and without touching the global generator.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1

# Stream ids: one per kind of draw, so draws never share a key.
STREAM_C_GRAD = 0
STREAM_W_GRAD = 1
STREAM_C_PARAM = 2
STREAM_W_PARAM = 3
STREAM_M_PARAM = 4
STREAM_RELOCATE_SAMPLE = 5  # wandering.relocation: which points are candidates
STREAM_RELOCATE_PICK = 6  # wandering.relocation: where each dead bump goes


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def mix_key(seed: int, step: int, stream: int) -> int:
    """A 63-bit generator seed from (seed, step, stream); distinct inputs give unrelated keys."""
    key = _splitmix64(seed & _MASK64)
    key = _splitmix64(key ^ (step & _MASK64))
    key = _splitmix64(key ^ (stream & _MASK64))
    return key & ((1 << 63) - 1)


def draw_seed() -> int:
    """A fresh module seed from torch's global generator (so torch.manual_seed reproduces it)."""
    return int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())


def keyed_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A CPU generator seeded from the key alone (for draws other than normals)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(mix_key(seed, step, stream))
    return gen


def keyed_normal(
    shape: torch.Size | tuple[int, ...],
    seed: int,
    step: int,
    stream: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """Standard normal draws that depend only on the key, never on global RNG state.

    Drawn on the CPU in float64 and then cast, so the numbers are the same on
    every device and both float dtypes see the same underlying draw.
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(mix_key(seed, step, stream))
    z = torch.randn(tuple(shape), generator=gen, dtype=torch.float64)
    return z.to(device=device, dtype=dtype)
