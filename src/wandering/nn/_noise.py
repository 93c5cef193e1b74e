"""Counter-based noise: every draw is a pure function of (seed, step, stream).

A module keeps ``noise_seed`` and ``noise_step`` as int64 buffers. They travel
in ``state_dict`` (exact resume) and are synchronised by
DistributedDataParallel like any buffer, so every rank draws the same noise
without a collective and without touching the global generator.

GPU: no sync per step. The key is needed on the host (it seeds a CPU
generator), and reading a CUDA buffer with ``int()`` waits for the GPU. So each
module keeps a host mirror of its key buffers (:func:`host_value`,
:func:`advance`): the value it last read or wrote, with the buffer's identity,
``data_ptr`` and autograd version counter at that moment. While those match, the
mirror is used and the GPU is not touched; any visible change to a buffer
(``load_state_dict``, an in-place write such as ``fill_``/``copy_``, DDP's
broadcast at construction, ``.to()``/``.cuda()``, assigning a new tensor) bumps
the version or replaces the tensor, and the next draw reads the buffer again
(one sync, once). The draws themselves stay on the CPU generator, in float64,
then are cast to the parameter's dtype on the CPU (exactly the cast the GPU
would do) and copied to a CUDA device from pinned memory without blocking, so
the numbers are bitwise the same on every device, as before, and old
checkpoints resume onto the same noise.

Why not draw on the device with an integer counter-based generator: the
uniform bits would match across devices, but turning them into normals needs
log/sqrt/cos, whose CUDA and CPU implementations differ in the last bit, and the
numbers would change from those of existing runs.

Limits of the mirror: writes that bypass the version counter are not seen:
through ``buffer.data`` or under ``torch.autograd._unsafe_preserve_version_counter``.
DDP's per-forward buffer broadcast (``broadcast_buffers=True``) is such a write,
but it rewrites the values every rank already holds (all ranks advance the
counters identically), so the mirror stays right. Write a key buffer through
``buffer.copy_``/``fill_`` or ``load_state_dict``, never through ``.data``.
"""

from __future__ import annotations

import functools
import threading

import torch

_MASK64 = (1 << 64) - 1

# Stream ids: one per kind of draw, so draws never share a key.
STREAM_C_GRAD = 0
STREAM_W_GRAD = 1
STREAM_C_PARAM = 2
STREAM_W_PARAM = 3
STREAM_M_PARAM = 4
STREAM_RELOCATE_SAMPLE = 5  # wandering.nn.relocation: which points are candidates
STREAM_RELOCATE_PICK = 6  # wandering.nn.relocation: where each dead bump goes
STREAM_ANGLE_GRAD = 7  # oriented bumps: noise on the rotation angles' gradient
STREAM_ANGLE_PARAM = 8  # oriented bumps: noise on the rotation angles


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def mix_key(seed: int, step: int, stream: int) -> int:
    """A 63-bit generator seed from (seed, step, stream); distinct inputs give unrelated keys."""
    return stream_key(step_key(seed, step), stream)


@functools.lru_cache(maxsize=64)
def _seed_key(seed: int) -> int:
    return _splitmix64(seed & _MASK64)  # a module's seed is fixed: mixed once, not per draw


def step_key(seed: int, step: int) -> int:
    """The part of :func:`mix_key` shared by every stream of one step."""
    return _splitmix64(_seed_key(seed) ^ (step & _MASK64))


def stream_key(key: int, stream: int) -> int:
    """``mix_key(seed, step, stream)`` from ``key = step_key(seed, step)``."""
    return _splitmix64(key ^ (stream & _MASK64)) & ((1 << 63) - 1)


def draw_seed() -> int:
    """A fresh module seed from torch's global generator (so torch.manual_seed reproduces it)."""
    return int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())


_local = threading.local()


def _generator() -> torch.Generator:
    """One CPU generator per thread, re-seeded for every draw (creating one costs more than the draw)."""
    gen = getattr(_local, "gen", None)
    if gen is None:
        gen = _local.gen = torch.Generator(device="cpu")
    return gen


def keyed_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A fresh CPU generator seeded from the key alone (for draws other than normals)."""
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
    every device and both float dtypes see the same underlying draw. To a CUDA
    device the cast draw goes from pinned memory without blocking the host.
    """
    return normal_from_key(shape, mix_key(seed, step, stream), dtype, device)


def normal_from_key(
    shape: torch.Size | tuple[int, ...], key: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """:func:`keyed_normal` from ``key = mix_key(seed, step, stream)``."""
    gen = _generator()
    gen.manual_seed(key)
    z = torch.randn(tuple(shape), generator=gen, dtype=torch.float64).to(dtype)
    if not isinstance(device, torch.device):
        device = torch.device(device)
    if device.type == "cpu":
        return z
    if device.type == "cuda":
        # The caching host allocator keeps the pinned block alive until the copy is done.
        return z.pin_memory().to(device, non_blocking=True)
    return z.to(device)


_MIRROR = "_noise_key_mirror"  # per-module dict: buffer name -> (tensor, stamp, value)


def _stamp(buf: torch.Tensor) -> tuple:
    return (buf._version, buf.data_ptr(), buf.device)


def host_value(module: torch.nn.Module, name: str) -> int:
    """The int64 scalar buffer ``module.<name>`` as a Python int, without a GPU sync while the
    mirror is current (see the module docstring); reads the buffer once after it changed."""
    buf = getattr(module, name)
    mirror = module.__dict__.setdefault(_MIRROR, {})
    hit = mirror.get(name)
    if hit is not None and hit[0] is buf and hit[1] == _stamp(buf):
        return hit[2]
    value = int(buf)
    mirror[name] = (buf, _stamp(buf), value)
    return value


def advance(module: torch.nn.Module, name: str, value: int) -> None:
    """``module.<name> += 1`` on its device, keeping the mirror current; ``value`` is what
    :func:`host_value` returned for it just before (no write in between)."""
    buf = getattr(module, name)
    buf.add_(1)
    module.__dict__.setdefault(_MIRROR, {})[name] = (buf, _stamp(buf), value + 1)


def drop_mirror(state: dict) -> dict:
    """A module ``__dict__`` without the mirror (for pickling and deepcopy: it is rebuilt on use)."""
    if _MIRROR in state:
        state = dict(state)
        del state[_MIRROR]
    return state
