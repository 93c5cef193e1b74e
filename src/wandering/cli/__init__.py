"""The ``wandering`` command: ``demo``, ``fit`` and ``predict`` (argument parsing and the commands).

Importing this module, building the parser and ``--help`` use the standard library only:
torch, numba, numpy, pandas and the package's heavy modules are imported inside the
commands, so help is instant and Ctrl-C at any point of start-up is one line (exit 130).
The fitting recipe (``_fit_recipe``), the checkpoint format (``checkpoint``), the demo
target (``demo``), data files (``_cli_data``) and pictures (``_cli_plots``) live in their
own modules; matplotlib and tqdm (the ``wandering[cli]`` extra) are imported only when used.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import TYPE_CHECKING

from wandering.cli._errors import CliError, require
from wandering.fit._settings import SHAPES, FitSettings
from wandering.fit.checkpoint import FORMAT_TAG

if TYPE_CHECKING:  # numpy loads on first use; --help stays fast
    import numpy as np

__all__ = ["main", "FORMAT_TAG"]

PLOT_OUTPUTS = 4  # fit.png shows at most this many outputs
DEMO_MARK = "wandering demo"  # metrics.json's "written_by" in a folder the demo wrote


# ---------------------------------------------------------------- output files
def _written_by_demo(out: str) -> bool:
    """Whether DIR holds the demo's own earlier output (its metrics.json says so)."""
    try:
        with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
            return json.load(f).get("written_by") == DEMO_MARK
    except (OSError, ValueError, AttributeError):
        return False


def _prepare_out_dir(
    out: str, names: list[str], force: bool, stale: tuple[str, ...] | list[str] = (), own: bool = False
) -> list[str]:
    """Creates DIR and checks that it can be written, before any fitting.

    Refuses to overwrite a file in ``names`` unless ``force`` (or ``own``: the caller
    recognised its own earlier output). A file in ``stale`` is one an earlier run wrote
    that this run will not rewrite (fit.png with --no-plot): left there it would describe
    another model, so it is refused as well, and with ``force``/``own`` it is returned
    for the caller to remove when the new files are written.
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise CliError(f"--out {out}: exists and is not a directory")
    clash = [n for n in names if os.path.lexists(os.path.join(out, n))]
    old = [n for n in stale if os.path.lexists(os.path.join(out, n))]
    for n in clash + old:
        if os.path.isdir(os.path.join(out, n)):
            raise CliError(f"--out {out}: {n} is a directory")
    if clash and not (force or own):
        raise CliError(f"--out {out}: would overwrite {', '.join(clash)} (use --force)")
    if old and not (force or own):
        raise CliError(
            f"--out {out}: holds {', '.join(old)} from an earlier run, which would be left beside "
            f"the new model (use --force to replace the earlier run, or another --out)"
        )
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise CliError(f"--out {out}: cannot create directory ({e.strerror or e})") from None
    _check_writable(out, f"--out {out}")
    return [os.path.join(out, n) for n in old]


def _check_writable(folder: str, what: str) -> None:
    """Creates and removes a scratch file: the only sure test (permissions, read-only disks, root)."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder or ".", prefix=".wandering-write-test-"):
            pass
    except OSError as e:
        raise CliError(f"{what}: cannot write there ({e.strerror or e})") from None


def _remove(paths: list[str]) -> None:
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise CliError(f"{path}: cannot remove the earlier run's file ({e.strerror or e})") from None


def _save_model(ckpt: dict, path: str) -> None:
    from wandering.fit import checkpoint

    try:
        checkpoint.save(ckpt, path)
    except checkpoint.CheckpointError as e:
        raise CliError(str(e)) from None


def _write_json(obj: dict, path: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    except OSError as e:
        raise CliError(f"{path}: cannot write ({e.strerror or e})") from None


def load_checkpoint(path: str, device: str = "cpu"):
    """The fitted BumpRegressor a model.pt holds, and its checked checkpoint dict; problems are one line."""
    from wandering.cli._recipe import load_regressor

    return load_regressor(path, device)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _parse_bounds(text: str | None, d: int) -> np.ndarray | None:
    """'lo:hi' for every dimension, or 'lo:hi,lo:hi,...' one per dimension."""
    if text is None:
        return None
    import numpy as np

    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 1:
        parts = parts * d
    if len(parts) != d:
        raise CliError(f"--bounds: expected 1 or {d} 'lo:hi' pairs, but got {len(parts)}")
    out = np.empty((d, 2))
    for j, p in enumerate(parts):
        try:
            lo, hi = (float(s) for s in p.split(":"))
        except ValueError:
            raise CliError(f"--bounds: {p!r} is not 'lo:hi'") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise CliError(f"--bounds: need finite lo < hi, but got {p!r}")
        out[j] = lo, hi
    return out


# ---------------------------------------------------------------- commands
def _batch(text: str) -> int | None:
    """--batch: 'auto' (None) or a positive integer."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise CliError(f"--batch must be 'auto' or a positive integer, but got {text!r}") from None
    if value <= 0:
        raise CliError(f"--batch must be 'auto' or a positive integer, but got {value}")
    return value


def _bumps(text) -> int | str:
    """--bumps: 'auto' or a positive integer (an int default passes through)."""
    if isinstance(text, int):
        return text
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise CliError(f"--bumps must be a positive integer or 'auto', but got {text!r}") from None


def _settings(a: argparse.Namespace, d: int) -> FitSettings:
    if a.bumps != "auto" and a.bumps <= 0:
        raise CliError(f"--bumps must be a positive integer or 'auto', but got {a.bumps}")
    if a.steps <= 0:
        raise CliError(f"--steps must be a positive integer, but got {a.steps}")
    if a.lr is not None and not (a.lr > 0 and math.isfinite(a.lr)):
        raise CliError(f"--lr must be > 0, but got {a.lr}")
    for name in ("lr_position", "lr_magnitude", "lr_angle", "c_grad_std", "w_grad_std", "m_grad_gain"):
        v = getattr(a, name)
        if not (v >= 0 and math.isfinite(v)):
            raise CliError(f"--{name.replace('_', '-')} must be >= 0, but got {v}")
    if not (0 < a.support_p < 1):
        raise CliError(f"--support-p must be in (0, 1), but got {a.support_p}")
    if not (0 <= a.holdout < 1):
        raise CliError(f"--holdout must be in [0, 1), but got {a.holdout}")
    return FitSettings(
        bumps=a.bumps,
        steps=a.steps,
        lr_position=a.lr_position,
        lr_magnitude=a.lr_magnitude,
        lr=a.lr,
        batch=_batch(a.batch),
        c_grad_std=a.c_grad_std,
        w_grad_std=a.w_grad_std,
        m_grad_gain=a.m_grad_gain,
        support_p=a.support_p,
        relocate=a.relocate,
        holdout=a.holdout,
        seed=a.seed,
        bounds=_parse_bounds(a.bounds, d),
        device=a.device,
        progress=not a.quiet,
        shape=a.shape,
        lr_angle=a.lr_angle,
    )


def _check_magnitudes(table, path: str) -> None:
    """Refuses finite values so large that the fit's scaling overflows (the unit box, the standardised target)."""
    import numpy as np

    with np.errstate(over="ignore", invalid="ignore"):
        cols = [(name, table.x[:, j]) for j, name in enumerate(table.x_names)]
        y2 = table.y.reshape(len(table.y), -1)
        cols += [(name, y2[:, j]) for j, name in enumerate(table.y_names)]
        for name, v in cols:
            bad = not np.isfinite(v.max() - v.min()) or not np.isfinite(v.std())
            if bad:
                raise CliError(
                    f"{path}: column {name!r}: values too large to fit (from {v.min():.3g} to "
                    f"{v.max():.3g}; their spread overflows double precision); rescale them"
                )


def _check_query(x, ckpt: dict, names: list[str], path: str) -> None:
    """Refuses coordinates so far outside the fitted range that the model's float32 unit box overflows."""
    import numpy as np

    with np.errstate(over="ignore", invalid="ignore"):
        xu = np.abs((x - ckpt["x_lo"].numpy()) / ckpt["x_scale"].numpy())
        ok = xu < np.finfo(np.float32).max
    if not ok.all():
        i, j = (int(v[0]) for v in np.nonzero(~ok))
        raise CliError(
            f"{path}: row {i + 1} of the data, column {names[j]!r}: {x[i, j]:.3g} is too far outside "
            f"the range the model was fitted on to evaluate"
        )


def _cmd_fit(a: argparse.Namespace) -> int:
    from wandering.cli._data import check_data_file, read_table

    check_data_file(a.data, a.x_cols, a.y_col, a.y_cols)  # a wrong file is one line at once, before torch
    from wandering.cli._recipe import MIN_ROWS, fit_arrays, pick_device

    pick_device(a.device)  # fail before reading a large file
    table = read_table(a.data, a.x_cols, a.y_col, need_y=True, y_cols=a.y_cols)
    n, d = table.x.shape
    s = _settings(a, d)
    if n < MIN_ROWS:
        raise CliError(f"{a.data}: too few rows: {n} (at least {MIN_ROWS} are needed)")
    _check_magnitudes(table, a.data)
    plot = d <= 3 and not a.no_plot
    if plot:
        require("matplotlib")  # before the fit, not after it
    outputs = ["model.pt", "metrics.json"] + (["fit.png"] if plot else [])
    stale = _prepare_out_dir(a.out, outputs, a.force, stale=[] if plot else ["fit.png"])
    assert table.y is not None  # read_table(need_y=True) refuses a file without its y column(s)
    multi = table.y.ndim == 2
    y_names = table.y_names if multi else table.y_name
    assert y_names is not None
    res = fit_arrays(table.x, table.y, s, table.x_names, y_names)
    res.metrics["data"] = os.path.abspath(a.data)
    for message in res.warnings:  # after the progress bar, before the results
        print(f"wandering: warning: {message}", file=sys.stderr)
    _remove(stale)
    _save_model(res.ckpt, os.path.join(a.out, "model.pt"))
    _write_json(res.metrics, os.path.join(a.out, "metrics.json"))
    if plot:
        from wandering.cli._plots import plot_fit

        plot_fit(os.path.join(a.out, "fit.png"), table, res, max_outputs=PLOT_OUTPUTS)
    m = res.metrics
    if multi:
        width = max(len(name) for name in table.y_names)
        for name, o in m["outputs"].items():
            print(
                f"  {name:<{width}}  held-out R^2 {_fmt(o['r2'])}  RMSE {_fmt(o['rmse'])}  "
                f"(train R^2 {_fmt(o['train_r2'])})"
            )
        print(
            f"mean over {len(table.y_names)} outputs: held-out R^2 {_fmt(m['r2'])}  RMSE {_fmt(m['rmse'])}  "
            f"(train R^2 {_fmt(m['train_r2'])})  time {m['seconds']:.1f} s"
        )
    else:
        print(
            f"held-out R^2 {_fmt(m['r2'])}  RMSE {_fmt(m['rmse'])}  (train R^2 {_fmt(m['train_r2'])})  "
            f"time {m['seconds']:.1f} s"
        )
    if d > 3:
        print(f"no fit.png: plots are made for d <= 3, this data has d = {d}")
    elif plot and multi and len(table.y_names) > PLOT_OUTPUTS:
        print(
            f"fit.png shows the first {PLOT_OUTPUTS} of {len(table.y_names)} outputs "
            f"({', '.join(table.y_names[:PLOT_OUTPUTS])})"
        )
    if stale:
        print(f"removed the earlier run's {', '.join(stale)}")
    print(f"wrote {', '.join(os.path.join(a.out, o) for o in outputs)}")
    return 0


def _cmd_predict(a: argparse.Namespace) -> int:
    if os.path.exists(a.output) and not a.force:
        raise CliError(f"-o {a.output}: exists (use --force to overwrite)")
    if os.path.isdir(a.output):
        raise CliError(f"-o {a.output}: is a directory")
    folder = os.path.dirname(a.output)
    if folder and not os.path.isdir(folder):
        raise CliError(f"-o {a.output}: no folder {folder}")
    _check_writable(folder, f"-o {a.output}")
    from wandering.cli._data import check_data_file, read_table, write_predictions
    from wandering.fit import checkpoint

    try:  # wrong files are one line at once, before torch is imported
        checkpoint.check_file(a.model)
    except checkpoint.CheckpointError as e:
        raise CliError(str(e)) from None
    check_data_file(a.data, a.x_cols, a.y_col)
    from wandering.cli._recipe import predict_arrays
    from wandering.fit.checkpoint import output_names

    reg, ckpt = load_checkpoint(a.model, a.device)
    table = read_table(a.data, a.x_cols, a.y_col, need_y=False, default_x=ckpt["x_names"], n_dims=ckpt["d"])
    if table.x.shape[1] != ckpt["d"]:
        raise CliError(f"{a.data}: the model needs {ckpt['d']} coordinate columns, but got {table.x.shape[1]}")
    if len(table.x) == 0:
        raise CliError(f"{a.data}: too few rows: 0")
    _check_query(table.x, ckpt, table.x_names, a.data)
    names = output_names(ckpt)
    if a.name is None:
        pred_names = [f"{v}_pred" for v in names]
    else:
        pred_names = [t.strip() for t in a.name.split(",")] if len(names) > 1 else [a.name]
        if len(pred_names) != len(names) or not all(pred_names) or len(set(pred_names)) != len(pred_names):
            raise CliError(
                f"--name: the model has {len(names)} outputs, so give {len(names)} different, "
                f"comma-separated names, but got {a.name!r}"
            )
    pred = predict_arrays(reg, table.x)
    write_predictions(a.output, table, pred, pred_names if len(names) > 1 else pred_names[0])
    outs = "" if len(names) == 1 else f" of {len(names)} outputs"
    print(f"wrote {len(pred)} predictions{outs} to {a.output}")
    return 0


def _warm_up(x, y, s: FitSettings) -> float:
    """A few untimed steps on a small slice of the demo's problem: Numba's one-off compilation
    (or loading its cache) happens here, so the fit's time is the fit's alone."""
    import dataclasses

    from wandering.cli._recipe import fit_arrays

    t0 = time.perf_counter()
    n = min(len(x), 400)  # enough points that the engine chosen is the one the fit uses
    fit_arrays(x[:n], y[:n], dataclasses.replace(s, steps=3, progress=False, record_every=0), ["x0", "x1"], "y")
    return time.perf_counter() - t0


def _cmd_demo(a: argparse.Namespace) -> int:
    from wandering.cli._recipe import MIN_ROWS, fit_arrays
    from wandering.cli.demo import demo_target

    if a.points < MIN_ROWS:
        raise CliError(f"--points must be at least {MIN_ROWS}, but got {a.points}")
    s = _settings(a, 2)
    s.record_every = max(1, s.steps // 150)
    outputs = ["demo.png", "model.pt", "metrics.json"]
    own = _written_by_demo(a.out)
    _prepare_out_dir(a.out, outputs, a.force, own=own)
    require("matplotlib")
    if own:
        print(f"replacing the earlier demo output in {a.out}")
    t0 = time.perf_counter()
    f, x, y = demo_target(a.seed, a.points)
    warm = _warm_up(x, y, s)
    res = fit_arrays(x, y, s, ["x0", "x1"], "y")
    from wandering.cli._plots import plot_demo

    for message in res.warnings:
        print(f"wandering: warning: {message}", file=sys.stderr)
    plot_demo(os.path.join(a.out, "demo.png"), f, x, y, res, res.predict)
    res.metrics["seconds_warmup"] = warm
    res.metrics["seconds_total"] = time.perf_counter() - t0
    res.metrics["target"] = f"seeded synthetic 2-D bumps, seed {a.seed}, {a.points} points"
    res.metrics["written_by"] = DEMO_MARK
    _save_model(res.ckpt, os.path.join(a.out, "model.pt"))
    _write_json(res.metrics, os.path.join(a.out, "metrics.json"))
    m = res.metrics
    print(f"held-out R^2 {_fmt(m['r2'])}  RMSE {_fmt(m['rmse'])}  (train R^2 {_fmt(m['train_r2'])})")
    print(f"warm-up (one-off compilation) {warm:.1f} s; fit {m['seconds']:.1f} s; {m['seconds_total']:.1f} s in all")
    print(f"wrote {', '.join(os.path.join(a.out, o) for o in outputs)}")
    return 0


# ---------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        raise CliError(f"{message} (see '{self.prog} --help')")


def _add_fit_options(p: argparse.ArgumentParser, defaults: FitSettings, hidden: bool = False) -> None:
    h = (lambda text: argparse.SUPPRESS) if hidden else (lambda text: text + " (default: %(default)s)")
    p.add_argument(
        "--bumps",
        type=_bumps,
        default=defaults.bumps,
        metavar="K",
        help=h("number of bumps, or auto: training points / (4 (2d + 1)), at most 256"),
    )
    p.add_argument("--steps", type=int, default=defaults.steps, metavar="S", help=h("optimizer steps"))
    p.add_argument(
        "--lr-position",
        type=float,
        default=defaults.lr_position,
        help=h("Adam learning rate of centres and widths, in bump spacings"),
    )
    p.add_argument(
        "--lr-magnitude",
        type=float,
        default=defaults.lr_magnitude,
        help=h("Adam learning rate of magnitudes and offset (standardised target)"),
    )
    p.add_argument(
        "--shape",
        choices=SHAPES,
        default=defaults.shape,
        help=h("bump shape: axis-aligned, or oriented (rotated ellipsoids, full covariance)"),
    )
    p.add_argument(
        "--lr-angle",
        type=float,
        default=defaults.lr_angle,
        help=h("Adam learning rate of the oriented bumps' rotation angles, in radians"),
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help=argparse.SUPPRESS
        if hidden
        else "one Adam learning rate for every parameter (unit box and "
        "standardised target; replaces --lr-position and --lr-magnitude)",
    )
    p.add_argument(
        "--batch", default="auto", help=h("points per step: auto (all up to 131072, else 65536) or an integer")
    )
    p.add_argument(
        "--relocate",
        action="store_true",
        help=argparse.SUPPRESS if hidden else "move dead bumps to where the residual is large",
    )
    p.add_argument("--c-grad-std", type=float, default=defaults.c_grad_std, help=h("noise std on centre gradients"))
    p.add_argument("--w-grad-std", type=float, default=defaults.w_grad_std, help=h("noise std on width gradients"))
    p.add_argument("--m-grad-gain", type=float, default=defaults.m_grad_gain, help=h("decay gain on magnitudes"))
    p.add_argument("--support-p", type=float, default=defaults.support_p, help=h("support cut-off in (0, 1)"))
    p.add_argument("--holdout", type=float, default=defaults.holdout, help=h("fraction held out for R^2/RMSE"))
    p.add_argument("--seed", type=int, default=defaults.seed, help=h("random seed"))
    p.add_argument("--device", default=defaults.device, help=h("torch device (cpu, cuda, cuda:1, ...)"))
    p.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS if hidden else "no progress bar")


def _build_parser() -> argparse.ArgumentParser:
    from wandering import __version__
    from wandering.cli.demo import DEMO_POINTS, DEMO_SETTINGS

    parser = _Parser(prog="wandering", description="Fit sums of wandering Gaussian bumps to data.")
    parser.add_argument("--version", action="version", version=f"wandering {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("demo", help="fit a seeded synthetic 2-D target and draw the result")
    p.add_argument("--out", default="wandering_demo", help="output directory (default: ./wandering_demo)")
    p.add_argument("--force", action="store_true", help="overwrite files already in --out")
    _add_fit_options(p, DEMO_SETTINGS, hidden=True)  # for tests and tinkering; the defaults are the demo
    p.add_argument("--points", type=int, default=DEMO_POINTS, help=argparse.SUPPRESS)
    p.add_argument("--bounds", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("fit", help="fit a CSV or .npz file")
    p.add_argument("data", metavar="DATA", help="CSV with a header, or .npz with arrays x and y ((n,) or (n, P))")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--x-cols", help="comma-separated coordinate columns (default: all but the value)")
    p.add_argument("--y-col", help="value column (default: the last column)")
    p.add_argument(
        "--y-cols",
        metavar="A,B,...",
        help="several comma-separated value columns, fitted together with one shared set of bumps",
    )
    p.add_argument("--bounds", help="centre bounds 'lo:hi' or 'lo:hi,lo:hi,...' (default: the data's range)")
    _add_fit_options(p, FitSettings())
    p.add_argument("--no-plot", action="store_true", help="skip fit.png")
    p.add_argument("--force", action="store_true", help="overwrite files already in --out")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("predict", help="predict with a fitted model")
    p.add_argument("model", metavar="MODEL", help="model.pt written by fit or demo")
    p.add_argument("data", metavar="DATA", help="CSV with a header, or .npz with array x")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT.csv",
        help="CSV to write (a name ending in .npz writes arrays x, y_pred, pred_names)",
    )
    p.add_argument("--x-cols", help="coordinate columns (default: the names the model was fitted on)")
    p.add_argument("--y-col", help="value column to echo, if present")
    p.add_argument("--name", help="prediction column name; one per output, comma-separated (default: <value>_pred)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--force", action="store_true", help="overwrite OUT.csv")
    p.set_defaults(func=_cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the ``wandering`` command; returns the exit code (2 for bad input, 130 for Ctrl-C)."""
    try:
        parser = _build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help / --version
            return int(e.code or 0)
        if args.command is None:
            parser.print_help()
            return 2
        return int(args.func(args))
    except CliError as e:
        print(f"wandering: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wandering: interrupted", file=sys.stderr)
        return 130
