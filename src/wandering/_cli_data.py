"""Reading and writing the CLI's tables: CSV with a header, or .npz with arrays ``x`` and ``y``.

Every problem a user can cause raises :class:`CliError` with one line naming it;
``main`` turns that into a message on stderr and exit code 2.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass

import numpy as np


class CliError(Exception):
    """A user-facing problem: printed as one line, exit code 2."""


@dataclass
class Table:
    """Numeric coordinates (n, d), optional values (n,), and what to echo back on predict."""

    x: np.ndarray
    y: np.ndarray | None
    x_names: list[str]
    y_name: str | None
    header: list[str]  # every input column, for predict's output
    rows: list[list[str]]  # every input cell as text, same order as header


def _split_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise CliError(f"--x-cols must name at least one column, but got {text!r}")
    return names


def _parse_float(cell: str, path: str, row: int, col: str) -> float:
    try:
        v = float(cell)
    except ValueError:
        raise CliError(f"{path}: row {row}, column {col!r}: {cell!r} is not a number") from None
    if not math.isfinite(v):
        raise CliError(f"{path}: row {row}, column {col!r}: value {cell!r} is not finite (NaN or inf)")
    return v


def _check_readable(path: str) -> None:
    if not os.path.exists(path):
        raise CliError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CliError(f"{path}: is a directory, not a data file")
    if not os.access(path, os.R_OK):
        raise CliError(f"{path}: cannot be read (permission denied)")


def read_table(
    path: str,
    x_cols: str | None = None,
    y_col: str | None = None,
    need_y: bool = True,
    default_x: list[str] | None = None,
    n_dims: int | None = None,
) -> Table:
    """Reads DATA for fit (need_y) or predict (values optional).

    Column rules for CSV: ``--x-cols``/``--y-col`` pick by name; otherwise the last
    column is the value and the rest are coordinates. For predict, ``default_x``
    (the checkpoint's coordinate names) is used when all of them are present, and
    a table with exactly ``n_dims`` columns is all coordinates.
    """
    _check_readable(path)
    if path.lower().endswith(".npz"):
        return _read_npz(path, need_y)
    return _read_csv(path, _split_names(x_cols), y_col, need_y, default_x, n_dims)


def _read_npz(path: str, need_y: bool) -> Table:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - any unreadable archive is one user-facing message
        raise CliError(f"{path}: not a readable .npz file ({type(e).__name__})") from None
    if "x" not in arrays:
        raise CliError(f"{path}: .npz has no array 'x' (found {sorted(arrays) or 'none'})")
    x = arrays["x"]
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] < 1:
        raise CliError(f"{path}: array 'x' must have shape (n, d), but got {x.shape}")
    y = arrays.get("y")
    if y is None and need_y:
        raise CliError(f"{path}: .npz has no array 'y' (the values to fit)")
    for name, a in (("x", x), ("y", y)):
        if a is None:
            continue
        if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
            raise CliError(f"{path}: array {name!r} is not numeric (dtype {a.dtype})")
        if not np.all(np.isfinite(a)):
            raise CliError(f"{path}: array {name!r} contains NaN or inf")
    x = x.astype(np.float64)
    if y is not None:
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if y.shape[0] != x.shape[0]:
            raise CliError(f"{path}: 'x' has {x.shape[0]} rows but 'y' has {y.shape[0]}")
    names = [f"x{j}" for j in range(x.shape[1])]
    header = names + (["y"] if y is not None else [])
    cols = [x[:, j] for j in range(x.shape[1])] + ([y] if y is not None else [])
    rows = [[repr(float(v)) for v in r] for r in zip(*cols)]
    return Table(x, y, names, "y" if y is not None else None, header, rows)


def _read_csv(path, x_names, y_name, need_y, default_x, n_dims) -> Table:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = [r for r in reader if any(cell.strip() for cell in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CliError(f"{path}: cannot be read as CSV ({e})") from None
    if not header:
        raise CliError(f"{path}: empty file (a CSV with a header row is expected)")
    header = [h.strip() for h in header]
    for i, r in enumerate(rows, start=2):
        if len(r) != len(header):
            raise CliError(f"{path}: row {i} has {len(r)} fields but the header has {len(header)}")
    for name in (x_names or []) + ([y_name] if y_name else []):
        if name not in header:
            raise CliError(f"{path}: no column {name!r} (columns: {', '.join(header)})")

    if need_y:
        y_name = y_name or (header[-1] if x_names is None or header[-1] not in x_names else None)
        if y_name is None:
            raise CliError(f"{path}: give --y-col: the last column is one of --x-cols")
        x_names = x_names or [h for h in header if h != y_name]
    elif x_names is None:
        if default_x and all(n in header for n in default_x):
            x_names = list(default_x)
        elif n_dims is not None and len(header) == n_dims:
            x_names = list(header)
        elif n_dims is not None and len(header) == n_dims + 1:
            x_names = header[:-1]
        else:
            raise CliError(
                f"{path}: cannot tell which columns are coordinates; the model needs {n_dims} "
                f"({', '.join(default_x or [])}); give --x-cols"
            )
    if not x_names:
        raise CliError(f"{path}: no coordinate columns (only the value column {y_name!r})")
    if y_name in x_names:
        raise CliError(f"{path}: column {y_name!r} is both a coordinate and the value")

    idx = {h: j for j, h in enumerate(header)}
    x = np.empty((len(rows), len(x_names)))
    for i, r in enumerate(rows):
        for j, name in enumerate(x_names):
            x[i, j] = _parse_float(r[idx[name]], path, i + 2, name)
    y = None
    if y_name is not None and (need_y or y_name in idx):
        y = np.array([_parse_float(r[idx[y_name]], path, i + 2, y_name) for i, r in enumerate(rows)])
    return Table(x, y, list(x_names), y_name, header, rows)


def write_predictions(path: str, table: Table, pred: np.ndarray, pred_name: str) -> None:
    """Input columns as they were read, plus the prediction column."""
    name = pred_name
    while name in table.header:  # never shadow an input column
        name += "_"
    try:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(table.header + [name])
            for r, p in zip(table.rows, pred.tolist()):
                w.writerow(r + [repr(float(p))])
    except OSError as e:
        raise CliError(f"{path}: cannot write ({e.strerror or e})") from None
