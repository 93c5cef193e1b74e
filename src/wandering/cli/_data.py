"""Reading and writing the CLI's tables: CSV (with or without a header), or .npz with arrays ``x`` and ``y``.

Values come as one column (y of shape (n,)) or several (y of shape (n, P), P > 1).
CSV files are parsed by pandas (C parser; a UTF-8 byte-order mark is dropped), .npz
arrays are used as they are; nothing builds a string per cell.

Every problem a user can cause raises :class:`CliError` with one line naming it;
``main`` turns that into a message on stderr and exit code 2.
"""

from __future__ import annotations

import csv
import os
import sys
import zipfile
from dataclasses import dataclass

import numpy as np

from wandering.cli._errors import CliError, require


@dataclass
class Table:
    """Numeric coordinates (n, d), optional values, and what to echo back on predict.

    ``y`` is (n,) for one value column and (n, P) for P > 1; ``y_names`` has one name per column.
    """

    x: np.ndarray
    y: np.ndarray | None
    x_names: list[str]
    y_names: list[str]  # empty when there are no values
    header: list[str]  # every input column, for predict's output
    columns: list[np.ndarray]  # every input column's values as read, same order as header

    @property
    def y_name(self) -> str | None:
        """The single value column's name (the first one's when there are several)."""
        return self.y_names[0] if self.y_names else None


def _split_names(text: str | None, option: str = "--x-cols") -> list[str] | None:
    if text is None:
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise CliError(f"{option} must name at least one column, but got {text!r}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CliError(f"{option} names {', '.join(repr(n) for n in twice)} more than once")
    return names


def value_names(y_col: str | None, y_cols: str | None) -> list[str] | None:
    """The value columns asked for with ``--y-col v`` or ``--y-cols a,b,c`` (not both); None: default."""
    if y_col is not None and y_cols is not None:
        raise CliError("give --y-col or --y-cols, not both")
    if y_cols is not None:
        return _split_names(y_cols, "--y-cols")
    return None if y_col is None else [y_col]


def _check_readable(path: str) -> None:
    if not os.path.exists(path):
        raise CliError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CliError(f"{path}: is a directory, not a data file")
    if not os.access(path, os.R_OK):
        raise CliError(f"{path}: cannot be read (permission denied)")


def check_data_file(path: str, x_cols: str | None = None, y_col: str | None = None, y_cols: str | None = None) -> None:
    """The checks of :func:`read_table` that need no parsing: the column options, the file
    (exists, is readable, is not empty), an .npz's zip signature, a CSV's header row and
    the columns the options name in it. Standard library only, so that ``fit`` and
    ``predict`` refuse a wrong file in a moment, before torch is imported (seconds).
    """
    y_names = value_names(y_col, y_cols)
    x_names = _split_names(x_cols)
    _check_readable(path)
    if path.lower().endswith(".npz"):
        if os.path.getsize(path) == 0:
            raise CliError(f"{path}: empty file (an .npz archive with arrays x and y is expected)")
        if not zipfile.is_zipfile(path):
            raise CliError(f"{path}: not a readable .npz file (not a zip archive)")
        return
    header, headerless = _csv_header(path)
    if not headerless:  # a headerless file's names depend on the model (predict); read_table checks them
        _check_named_columns(path, header, x_names, y_names)


def read_table(
    path: str,
    x_cols: str | None = None,
    y_col: str | None = None,
    need_y: bool = True,
    default_x: list[str] | None = None,
    n_dims: int | None = None,
    y_cols: str | None = None,
) -> Table:
    """Reads DATA for fit (need_y) or predict (values optional).

    Column rules for CSV: ``--x-cols`` and ``--y-col``/``--y-cols`` pick by name;
    otherwise the last column is the value and the rest are coordinates. For
    predict, ``default_x`` (the checkpoint's coordinate names) picks the coordinates
    by name; by position only where the names cannot say (see ``_model_coordinates``);
    ``--x-cols`` names the columns that feed the model's coordinates, in its order.
    For .npz, y may be (n,) or (n, P); the column options do not apply.
    """
    y_names = value_names(y_col, y_cols)  # checked before the file is read
    x_names = _split_names(x_cols)
    _check_readable(path)
    if path.lower().endswith(".npz"):
        return _read_npz(path, need_y)
    return _read_csv(path, x_names, y_names, need_y, default_x, n_dims)


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
    y_names: list[str] = []
    if y is not None:
        y = np.asarray(y, dtype=np.float64)
        if y.ndim == 0 or y.ndim > 2 or (y.ndim == 2 and y.shape[1] < 1):
            raise CliError(f"{path}: array 'y' must have shape (n,) or (n, P), but got {y.shape}")
        if y.shape[0] != x.shape[0]:
            raise CliError(f"{path}: 'x' has {x.shape[0]} rows but 'y' has {y.shape[0]}")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]  # one value column: the single-output fit
        y_names = ["y"] if y.ndim == 1 else _npz_value_names(path, arrays.get("y_names"), y.shape[1])
    names = [f"x{j}" for j in range(x.shape[1])]
    y2 = None if y is None else y.reshape(len(y), -1)
    header = names + y_names
    cols = [x[:, j] for j in range(x.shape[1])] + ([] if y2 is None else [y2[:, p] for p in range(y2.shape[1])])
    return Table(x, y, names, y_names, header, cols)


def _npz_value_names(path: str, given, p: int) -> list[str]:
    """Names for the P value columns of an .npz: its optional array 'y_names', else y0, y1, ..."""
    if given is None:
        return [f"y{j}" for j in range(p)]
    if given.dtype.kind not in "US" or given.shape != (p,):
        raise CliError(f"{path}: array 'y_names' must hold {p} strings, one per column of 'y', but got {given.shape}")
    names = [str(v.decode() if isinstance(v, bytes) else v).strip() for v in given.tolist()]
    if any(not n for n in names) or len(set(names)) != p:
        raise CliError(f"{path}: array 'y_names' must hold {p} different, non-empty names")
    clash = [n for n in names if n.startswith("x") and n[1:].isdigit()]
    if clash:
        raise CliError(f"{path}: array 'y_names' uses {clash[0]!r}, a coordinate's name")
    return names


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_header(path: str) -> tuple[list[str], bool]:
    """The first row, as the csv module splits it (quotes included), and whether it is data (all numbers)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            first = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CliError(f"{path}: cannot be read as CSV ({e})") from None
    if not first:
        raise CliError(f"{path}: empty file (a CSV with a header row is expected)")
    header = [h.strip() for h in first]
    headerless = all(h and _is_number(h) for h in header)
    if not headerless:
        _check_unique(path, header)
    return header, headerless


def _check_unique(path: str, header: list[str]) -> None:
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise CliError(f"{path}: the header has more than one column named {twice[0]!r}; rename one")


def _check_named_columns(path: str, header: list[str], x_names, y_names) -> None:
    """Every column the options name is in the header, and none is both a coordinate and a value."""
    for name in (x_names or []) + (y_names or []):
        if name not in header:
            raise CliError(f"{path}: no column {name!r} (columns: {', '.join(header)})")
    if x_names and y_names:
        both = [n for n in y_names if n in x_names]
        if both and len(y_names) == 1:
            raise CliError(f"{path}: column {both[0]!r} is both a coordinate and the value")
        if both:
            raise CliError(f"{path}: column {both[0]!r} is in both --x-cols and --y-cols")


def _read_csv(path, x_names, y_names, need_y, default_x, n_dims) -> Table:
    pd = require("pandas")
    header, headerless = _csv_header(path)
    if headerless:  # its first row is data: x0, x1, ..., and the last column y
        c = len(header)
        all_x = not need_y and n_dims == c
        header = [f"x{j}" for j in range(c if all_x else c - 1)] + ([] if all_x else ["y"])
        as_model = ""
        if not need_y and x_names is None and default_x and not _generated(default_x) and c in (n_dims, n_dims + 1):
            as_model = f" (read as the model's coordinates {', '.join(default_x)}, in this order)"
        print(
            f"wandering: note: {path}: the first row is all numbers, so it is data, not a header; "
            f"the columns are named {', '.join(header)}{as_model}",
            file=sys.stderr,
        )
    _check_unique(path, header)
    try:
        frame = pd.read_csv(
            path,
            header=None if headerless else 0,
            names=header,
            index_col=False,
            encoding="utf-8-sig",
            keep_default_na=False,
            na_values=[""],
            skipinitialspace=True,
        )
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as e:
        reason = " ".join(str(e).split())  # one line
        raise CliError(f"{path}: cannot be read as CSV ({reason})") from None
    first_row = 1 if headerless else 2  # file line of the frame's row 0, for messages
    _check_named_columns(path, header, x_names, y_names)

    if need_y:
        if y_names is None:
            if x_names is not None and header[-1] in x_names:
                raise CliError(f"{path}: give --y-col: the last column is one of --x-cols")
            y_names = [header[-1]]
        x_names = x_names or [h for h in header if h not in y_names]
    elif x_names is None:
        x_names = _model_coordinates(path, header, headerless, default_x, n_dims)
    elif default_x:
        _check_order(x_names, default_x)
    if not x_names:
        shown = ", ".join(repr(n) for n in y_names or [])
        plural = "s" if len(y_names or []) > 1 else ""
        raise CliError(f"{path}: no coordinate columns (only the value column{plural} {shown})")
    if y_names and y_names[0] in x_names:  # defaults only: chosen names were checked above
        raise CliError(f"{path}: column {y_names[0]!r} is both a coordinate and the value")

    x = _numbers(frame, x_names, path, first_row)
    y = None
    if y_names:
        y = _numbers(frame, y_names, path, first_row)
        if len(y_names) == 1:
            y = y[:, 0]
    columns = [frame[h].to_numpy() for h in header]
    return Table(x, y, list(x_names), list(y_names or []), header, columns)


def _generated(names: list[str]) -> bool:
    """Whether a model's coordinate names are the generated x0, x1, ... (fitted on .npz or a file without a header)."""
    return names == [f"x{j}" for j in range(len(names))]


def _model_coordinates(path: str, header: list[str], headerless: bool, default_x, n_dims) -> list[str]:
    """The columns predict reads as the model's coordinates when --x-cols is not given.

    By name when the file has every one of the model's coordinate names (in any order,
    among other columns). By position (the first ``n_dims`` of ``n_dims`` or ``n_dims + 1``
    columns) only when the names cannot say: a file without a header, or a model fitted
    without names (x0, x1, ...) on a file that uses none of them. Anything else is
    refused: taking another column for a missing coordinate would predict silently wrong.
    """
    names = list(default_x or [])
    if names and all(n in header for n in names):
        return names
    missing = [n for n in names if n not in header]
    nameless = not names or _generated(names)
    if headerless or (nameless and len(missing) == len(names)):
        if n_dims is None or len(header) not in (n_dims, n_dims + 1):
            raise CliError(
                f"{path}: cannot tell which columns are coordinates; the model needs {n_dims} "
                f"({', '.join(names)}) and the file has {len(header)} columns; give --x-cols"
            )
        if not headerless:
            print(
                f"wandering: note: {path}: the model was fitted without column names ({', '.join(names)}); "
                f"the columns {', '.join(header[:n_dims])} are taken as them, in this order",
                file=sys.stderr,
            )
        return header[:n_dims]
    plural = "s" if len(missing) > 1 else ""
    raise CliError(
        f"{path}: no column{plural} {', '.join(repr(n) for n in missing)} (the model's coordinates are "
        f"{', '.join(names)}; the file has {_listed(header)}); give --x-cols to say which columns "
        f"hold them, in that order"
    )


def _listed(names: list[str], most: int = 12) -> str:
    """Column names for a one-line message: the first ``most`` and how many in all."""
    if len(names) <= most:
        return ", ".join(names)
    return f"{', '.join(names[:most])}, ... ({len(names)} columns)"


def _check_order(x_names: list[str], model_names: list[str]) -> None:
    """--x-cols feeds the model's coordinates in order; a coordinate's own name in another place is a mistake."""
    for i, name in enumerate(x_names):
        if name in model_names and model_names.index(name) != i:
            raise CliError(
                f"--x-cols: {name!r} is the model's coordinate {model_names.index(name) + 1} of "
                f"{len(model_names)} ({', '.join(model_names)}), but is given in place {i + 1}; "
                f"list the columns in the model's order"
            )


def _numbers(frame, names: list[str], path: str, first_row: int) -> np.ndarray:
    """The named columns as a float64 (n, len(names)) array; the first bad cell is named by row and column."""
    pd = require("pandas")
    out = np.empty((len(frame), len(names)))
    for j, name in enumerate(names):
        col = frame[name]
        if col.dtype.kind in "iuf":
            vals = col.to_numpy(dtype=np.float64)
        else:  # text somewhere in the column: find it
            vals = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
            bad = np.flatnonzero(np.isnan(vals) & col.notna().to_numpy())
            for i in bad:
                cell = str(col.iloc[i]).strip()
                if not _is_number(cell):
                    raise CliError(f"{path}: row {i + first_row}, column {name!r}: {cell!r} is not a number")
        finite = np.isfinite(vals)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            cell = col.iloc[i]
            if pd.isna(cell) and not isinstance(cell, str):
                what = "is empty"
            else:
                what = f"value {str(cell).strip()!r} is not finite (NaN or inf)"
            raise CliError(f"{path}: row {i + first_row}, column {name!r}: {what}")
        out[:, j] = vals
    return out


def write_predictions(path: str, table: Table, pred: np.ndarray, pred_names: str | list[str]) -> None:
    """Input columns as they were read, plus one prediction column per output.

    ``pred`` is (n,) with one name, or (n, P) with P names. A path ending in .npz
    gets arrays ``x`` (the coordinates in the model's order), ``y_pred`` (pred's
    shape), ``pred_names`` and, if the input had values, ``y``.
    """
    names = [pred_names] if isinstance(pred_names, str) else list(pred_names)
    taken = set(table.header)
    for i, name in enumerate(names):
        while name in taken:  # never shadow an input column, nor another prediction
            name += "_"
        names[i] = name
        taken.add(name)
    pred2 = pred.reshape(len(pred), -1)
    if pred2.shape[1] != len(names):
        raise ValueError(f"{len(names)} prediction names for {pred2.shape[1]} outputs")
    try:
        if path.lower().endswith(".npz"):
            arrays = {"x": table.x, "y_pred": pred, "pred_names": np.array(names)}
            if table.y is not None:
                arrays["y"] = table.y
            with open(path, "wb") as f:
                np.savez(f, **arrays)
            return
        pd = require("pandas")
        data = dict(zip(table.header, table.columns))
        data.update({name: pred2[:, p] for p, name in enumerate(names)})
        pd.DataFrame(data, copy=False).to_csv(path, index=False, na_rep="", lineterminator="\n")
    except OSError as e:
        raise CliError(f"{path}: cannot write ({e.strerror or e})") from None
