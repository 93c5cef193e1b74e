"""The checkpoint format written by ``wandering fit`` and ``wandering demo`` (``model.pt``).

A checkpoint is a plain dict of tensors, numbers, strings and lists, saved with
``torch.save``, so ``torch.load(path, weights_only=True)`` reads it without running any
pickled code. ``format`` is :data:`FORMAT_TAG`; ``version`` is :data:`FORMAT_VERSION` (one
output: ``y_name``, float ``y_mean``/``y_std``, ``m`` of shape (K,)) or
:data:`FORMAT_VERSION_MULTI` (P outputs: ``y_names``, ``n_outputs``, ``y_mean``/``y_std``
and the offset of shape (P,), ``m`` of shape (K, P)). Both share ``d``, ``n_bumps``,
``c_bounds``, ``w_bounds``, the gradient-noise settings, ``support_p``, ``state_dict``
(``bumps.c``, ``bumps.w``, ``bumps.m``, bounds, ``offset``), ``x_lo``/``x_scale`` and
``x_names``.

torch is imported only when a checkpoint is saved or loaded.
"""

from __future__ import annotations

import os

__all__ = ["FORMAT_TAG", "FORMAT_VERSION", "FORMAT_VERSION_MULTI", "CheckpointError", "save", "load", "output_names"]

FORMAT_TAG = "wandering-cli-model"
FORMAT_VERSION = 1  # one output: m (K,), scalar offset and y_mean/y_std, "y_name"
FORMAT_VERSION_MULTI = 2  # P > 1 outputs: m (K, P), offset/y_mean/y_std (P,), "y_names"


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint of this format; the message is one line naming it."""


def output_names(ckpt: dict) -> list[str]:
    """The value columns a checkpoint was fitted on: one name (version 1) or P (version 2)."""
    return list(ckpt["y_names"]) if "y_names" in ckpt else [str(ckpt["y_name"])]


def save(ckpt: dict, path: str) -> None:
    """Writes a checkpoint dict with ``torch.save``."""
    import torch

    try:
        torch.save(ckpt, path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write ({e.strerror or e})") from None


def load(path: str) -> dict:
    """Reads a checkpoint (``weights_only``: pickles of anything else are refused, not run) and checks it."""
    import torch

    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, not a model file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - pickles of anything else are refused, not executed
        raise CheckpointError(f"{path}: not a wandering model checkpoint (cannot be loaded)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_TAG:
        raise CheckpointError(f"{path}: not a wandering model checkpoint (no {FORMAT_TAG!r} format tag)")
    version = ckpt.get("version")
    if version not in (FORMAT_VERSION, FORMAT_VERSION_MULTI):
        need = f"{FORMAT_VERSION} or {FORMAT_VERSION_MULTI}"
        raise CheckpointError(f"{path}: checkpoint version {version!r} is not supported (need {need})")
    return ckpt
