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

Oriented bumps (``BumpRegressor(shape="oriented")``) add ``shape`` = "oriented",
``angle_grad_std`` and ``state_dict["bumps.angles"]`` (d(d-1)/2, K) to either version; a
checkpoint without ``shape`` is axis-aligned, so axis-aligned checkpoints keep the layout
they always had. (A reader older than oriented bumps refuses an oriented checkpoint, on
the state_dict key it does not know, rather than misreading it.)

:func:`from_regressor` writes a fitted :class:`wandering.BumpRegressor` in this format and
:func:`to_regressor` turns a checkpoint (also one written before the command used
BumpRegressor) back into a fitted regressor. torch is imported only when a checkpoint is
saved, loaded or converted.
"""

from __future__ import annotations

import os

__all__ = [
    "FORMAT_TAG",
    "FORMAT_VERSION",
    "FORMAT_VERSION_MULTI",
    "CheckpointError",
    "check_file",
    "save",
    "load",
    "output_names",
    "from_regressor",
    "to_regressor",
]

#: The ``format`` entry of every checkpoint.
FORMAT_TAG = "wandering-cli-model"
#: The version of a one-output checkpoint (m of shape (K,), a scalar offset and y_mean/y_std, ``y_name``).
FORMAT_VERSION = 1
#: The version of a checkpoint of P > 1 outputs (m of shape (K, P), offset/y_mean/y_std of shape (P,), ``y_names``).
FORMAT_VERSION_MULTI = 2


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint of this format; the message is one line naming it."""


def output_names(ckpt: dict) -> list[str]:
    """The value columns a checkpoint was fitted on.

    Args:
        ckpt: A checkpoint dict accepted by :func:`load`.

    Returns:
        A list of one name (version 1) or P names (version 2).

    Raises:
        KeyError: a dict with neither ``y_names`` nor ``y_name`` (use :func:`load`, which checks).
    """
    return list(ckpt["y_names"]) if "y_names" in ckpt else [str(ckpt["y_name"])]


def from_regressor(reg, x_names: list[str], y_name: str | list[str]) -> dict:
    """The checkpoint dict of a fitted :class:`~wandering.BumpRegressor`.

    Args:
        reg: A fitted BumpRegressor.
        x_names: The d coordinate names, in the order of the regressor's columns.
        y_name: One name for a 1-D target (version 1), or a list of P names for a 2-D target
            (version 2).

    Returns:
        A plain dict of tensors, numbers, strings and lists (see the module docstring), for
        :func:`save`.

    Raises:
        ValueError: ``y_name`` is one name for a 2-D target, or not P names.
        AttributeError: ``reg`` is not fitted.
    """
    import torch

    multi = not isinstance(y_name, str)
    model, bumps = reg.module_, reg.module_.bumps
    if multi != (reg._y_ndim == 2) or (multi and len(y_name) != reg.n_outputs_):
        raise ValueError(
            f"y_name must be one name for a 1-D target or {reg.n_outputs_} names for a 2-D one, but got {y_name!r}"
        )
    ckpt = {
        "format": FORMAT_TAG,
        "version": FORMAT_VERSION_MULTI if multi else FORMAT_VERSION,
        "d": int(bumps.c.shape[0]),
        "n_bumps": int(bumps.c.shape[1]),
        "c_bounds": bumps.c_bounds.detach().cpu(),
        "w_bounds": bumps.w_bounds.detach().cpu(),
        "c_grad_std": float(bumps.c_grad_std),
        "w_grad_std": float(bumps.w_grad_std),
        "m_grad_gain": float(bumps.m_grad_gain),
        "support_p": float(bumps.support_p),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "x_lo": torch.as_tensor(reg.x_lo_, dtype=torch.float64),
        "x_scale": torch.as_tensor(reg.x_scale_, dtype=torch.float64),
        "y_mean": float(reg.y_mean_[0]),
        "y_std": float(reg.y_std_[0]),
        "x_names": list(x_names),
        "y_name": y_name,
    }
    if hasattr(bumps, "angles"):
        ckpt["shape"] = "oriented"
        ckpt["angle_grad_std"] = float(bumps.angle_grad_std)
    if multi:  # version 1 readers refuse it by version rather than failing on shapes
        del ckpt["y_name"]
        ckpt["y_mean"] = torch.as_tensor(reg.y_mean_, dtype=torch.float64)
        ckpt["y_std"] = torch.as_tensor(reg.y_std_, dtype=torch.float64)
        ckpt["y_names"] = list(y_name)
        ckpt["n_outputs"] = len(y_name)
    return ckpt


def to_regressor(ckpt: dict, device: str = "cpu"):
    """The fitted :class:`~wandering.BumpRegressor` a checkpoint describes.

    Args:
        ckpt: A checkpoint dict accepted by :func:`load` (any version, also one written
            before the command used BumpRegressor).
        device: Torch device of the restored model.

    Returns:
        A fitted BumpRegressor whose ``predict`` gives the checkpoint's predictions.

    Raises:
        CheckpointError: a dict that does not build a model (a missing entry, a wrong shape).
    """
    import numpy as np
    import torch

    from wandering.fit.regressor import _BumpModel, _restored
    from wandering.nn.modules import SlowSumOfBumpFcns
    from wandering.nn.oriented import SlowOrientedSumOfBumpFcns

    try:
        sd = ckpt["state_dict"]
        multi = ckpt["version"] == FORMAT_VERSION_MULTI
        shape = ckpt.get("shape", "axis")
        args = (
            sd["bumps.c"],
            sd["bumps.w"],
            sd["bumps.m"],
            ckpt["c_bounds"],
            ckpt["w_bounds"],
            ckpt["c_grad_std"],
            ckpt["w_grad_std"],
            ckpt["m_grad_gain"],
            ckpt["support_p"],
        )
        bumps: SlowSumOfBumpFcns | SlowOrientedSumOfBumpFcns
        if shape == "oriented":
            bumps = SlowOrientedSumOfBumpFcns(
                *args, angles=sd["bumps.angles"], angle_grad_std=ckpt.get("angle_grad_std", 0.0), device=device
            )
        else:
            bumps = SlowSumOfBumpFcns(*args, device=device)
        model = _BumpModel(bumps, torch.zeros(sd["offset"].shape, dtype=bumps.c.dtype, device=device))
        model.load_state_dict(sd)
        params = {
            "n_bumps": int(ckpt["n_bumps"]),
            "support_p": float(ckpt["support_p"]),
            "shape": shape,
            "device": device,
        }
        reg = _restored(
            model,
            ckpt["x_lo"].numpy(),
            ckpt["x_scale"].numpy(),
            np.asarray(ckpt["y_mean"]),
            np.asarray(ckpt["y_std"]),
            2 if multi else 1,
            **params,
        )
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"damaged wandering checkpoint ({type(e).__name__}: {e})") from None
    return reg


def save(ckpt: dict, path: str) -> None:
    """Writes a checkpoint dict with ``torch.save``.

    Args:
        ckpt: A dict from :func:`from_regressor`.
        path: The file to write (replaced if it exists).

    Raises:
        CheckpointError: the file cannot be written (one line naming it).
    """
    import torch

    try:
        torch.save(ckpt, path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write ({e.strerror or e})") from None


def check_file(path: str) -> None:
    """Refuses a path that cannot hold a checkpoint, without importing torch.

    Args:
        path: The path of a ``model.pt``.

    Raises:
        CheckpointError: no such file, a folder, unreadable, or empty (one line naming the file).
    """
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, not a model file")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{path}: cannot be read (permission denied)")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: not a wandering model checkpoint (empty file)")


def load(path: str) -> dict:
    """Reads a checkpoint and checks it.

    The file is read with ``torch.load(weights_only=True)``: pickles of anything else are
    refused, not run.

    Args:
        path: A ``model.pt`` written by ``wandering fit``, ``wandering demo`` or :func:`save`.

    Returns:
        The checkpoint dict (tensors on the CPU), its format tag, version and entries checked.

    Raises:
        CheckpointError: no such file, a folder, not a checkpoint of this format, an unknown
            version, or a damaged one (the message is one line naming the file and the problem).
    """
    check_file(path)
    import torch

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
    problem = _problem(ckpt)
    if problem:
        raise CheckpointError(f"{path}: damaged wandering checkpoint ({problem})")
    return ckpt


def _problem(ckpt: dict) -> str | None:
    """What is missing or malformed in a tagged checkpoint of a known version; None when it is sound."""
    import torch

    def tensor(value, shape) -> bool:
        return torch.is_tensor(value) and tuple(value.shape) == shape and bool(torch.isfinite(value).all())

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value

    multi = ckpt["version"] == FORMAT_VERSION_MULTI
    keys = [
        "d",
        "n_bumps",
        "c_bounds",
        "w_bounds",
        "c_grad_std",
        "w_grad_std",
        "m_grad_gain",
        "support_p",
        "state_dict",
        "x_lo",
        "x_scale",
        "y_mean",
        "y_std",
        "x_names",
        "y_names" if multi else "y_name",
    ]
    missing = [k for k in keys if k not in ckpt]
    if missing:
        return f"no {', '.join(missing)}"
    d, k = ckpt["d"], ckpt["n_bumps"]
    if not (isinstance(d, int) and isinstance(k, int) and d > 0 and k > 0):
        return "d and n_bumps must be positive integers"
    for key in ("c_grad_std", "w_grad_std", "m_grad_gain", "support_p"):
        if not number(ckpt[key]):
            return f"{key} is not a number"
    shape = ckpt.get("shape", "axis")
    if shape not in ("axis", "oriented"):
        return f"shape must be 'axis' or 'oriented', but got {shape!r}"
    if "angle_grad_std" in ckpt and not number(ckpt["angle_grad_std"]):
        return "angle_grad_std is not a number"
    names = ckpt["x_names"]
    if not (isinstance(names, list) and len(names) == d and all(isinstance(n, str) for n in names)):
        return f"x_names must be {d} strings"
    for key in ("c_bounds", "w_bounds"):
        if not tensor(ckpt[key], (d, 2)):
            return f"{key} must be a finite ({d}, 2) tensor"
    for key in ("x_lo", "x_scale"):
        if not tensor(ckpt[key], (d,)):
            return f"{key} must be a finite ({d},) tensor"
    if multi:
        p = ckpt["y_names"]
        if not (isinstance(p, list) and p and all(isinstance(n, str) for n in p)):
            return "y_names must be a list of strings"
        out_shape: tuple[int, ...] = (len(p),)
        if not all(tensor(ckpt[key], out_shape) for key in ("y_mean", "y_std")):
            return f"y_mean and y_std must be finite ({len(p)},) tensors"
    else:
        out_shape = ()
        if not isinstance(ckpt["y_name"], str):
            return "y_name must be a string"
        if not (number(ckpt["y_mean"]) and number(ckpt["y_std"])):
            return "y_mean and y_std must be numbers"
    sd = ckpt["state_dict"]
    if not isinstance(sd, dict):
        return "state_dict is not a dict"
    expected = [("bumps.c", (d, k)), ("bumps.w", (d, k)), ("bumps.m", (k, *out_shape)), ("offset", out_shape)]
    if shape == "oriented":
        expected.append(("bumps.angles", (d * (d - 1) // 2, k)))
    elif "bumps.angles" in sd:
        return "state_dict has 'bumps.angles' but the checkpoint's shape is 'axis'"
    for key, size in expected:
        if key not in sd:
            return f"no state_dict[{key!r}]"
        if not tensor(sd[key], size):
            return f"state_dict[{key!r}] must be a finite {size} tensor"
    return None
