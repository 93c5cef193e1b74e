"""Tests for the ``wandering`` command: demo, fit, predict, and one-line errors with exit code 2."""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from wandering.cli import main
from wandering.fit.checkpoint import FORMAT_TAG

FAST = ["--steps", "60", "--bumps", "8", "--quiet"]


def png_size(path) -> tuple[int, int]:
    """(width, height) from the PNG signature and IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def smooth_data(n, d, seed=0, offset=5.0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 2, size=(n, d))
    y = np.sin(2 * x).sum(1) + offset + rng.normal(scale=0.02, size=n)
    return x, y


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def data_csv(path, n=300, d=2, seed=0):
    x, y = smooth_data(n, d, seed)
    names = [f"c{j}" for j in range(d)] + ["val"]
    return write_csv(path, names, np.column_stack([x, y]).tolist()), x, y


def read_out(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], np.array(rows[1:], dtype=float)


def run_err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------ demo
def test_demo_quick_writes_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "150", "--points", "800", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "R^2" in printed and "RMSE" in printed
    assert "warm-up (one-off compilation)" in printed and "; fit " in printed  # compilation is not fit time
    w, h = png_size(out / "demo.png")
    assert (w, h) == (1100, 1000)
    m = json.loads((out / "metrics.json").read_text())
    assert 0.5 < m["r2"] <= 1 and m["rmse"] > 0 and m["seconds"] > 0 and m["seconds_warmup"] > 0
    assert m["written_by"] == "wandering demo"
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["format"] == FORMAT_TAG and ckpt["d"] == 2


def test_demo_refuses_to_overwrite_then_force(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "metrics.json").write_text("keep me")
    msg = run_err(capsys, ["demo", "--out", str(out), "--steps", "5", "--points", "100", "--quiet"])
    assert "metrics.json" in msg and "--force" in msg
    assert (out / "metrics.json").read_text() == "keep me"
    assert main(["demo", "--out", str(out), "--steps", "5", "--points", "100", "--quiet", "--force"]) == 0
    assert (out / "metrics.json").read_text() != "keep me"


@pytest.mark.slow
def test_demo_default_is_accurate(tmp_path, capsys):
    """The real demo, as the README runs it (its time is measured in benchmarks, not asserted here)."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["r2"] >= 0.95


def test_demo_twice_in_the_same_folder_replaces_its_own_output(tmp_path, capsys, monkeypatch):
    """A second `wandering demo` works: the folder holds the demo's own output (metrics.json says so)."""
    monkeypatch.chdir(tmp_path)
    tiny = ["--steps", "5", "--points", "100", "--quiet"]
    assert main(["demo", *tiny]) == 0  # the default folder, ./wandering_demo
    first = (tmp_path / "wandering_demo" / "model.pt").read_bytes()
    capsys.readouterr()
    assert main(["demo", *tiny, "--seed", "1"]) == 0
    assert "replacing the earlier demo output in wandering_demo" in capsys.readouterr().out
    assert (tmp_path / "wandering_demo" / "model.pt").read_bytes() != first
    # A folder whose metrics.json the demo did not write is still refused (see the test above).
    (tmp_path / "wandering_demo" / "metrics.json").write_text('{"r2": 0.5}')
    assert "--force" in run_err(capsys, ["demo", *tiny])


def test_demo_is_seeded(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert main(["demo", "--out", str(out), "--steps", "20", "--points", "200", "--quiet"]) == 0
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert ma["rmse"] == mb["rmse"]


# ------------------------------------------------------------------ fit / predict
@pytest.mark.parametrize("d, size", [(1, (900, 500)), (2, (1600, 500)), (3, (1600, 500))])
def test_fit_csv_dims_and_plot(tmp_path, capsys, d, size):
    data, _, _ = data_csv(tmp_path / "data.csv", n=400, d=d)
    out = tmp_path / "fit"
    assert main(["fit", data, "--out", str(out), "--steps", "300", "--bumps", "12", "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("r2", "rmse", "train_r2", "train_rmse", "seconds"):
        assert key in m
    assert m["r2"] > 0.5, m
    assert m["n_holdout"] == 40 and m["n_train"] == 360
    assert png_size(out / "fit.png") == size


def test_fit_5d_has_no_plot_and_says_so(tmp_path, capsys):
    x, y = smooth_data(300, 5)
    np.savez(tmp_path / "d5.npz", x=x, y=y)
    out = tmp_path / "fit"
    assert main(["fit", str(tmp_path / "d5.npz"), "--out", str(out), *FAST]) == 0
    assert "d <= 3" in capsys.readouterr().out
    assert not (out / "fit.png").exists()
    assert (out / "model.pt").exists()


def test_round_trip_csv_matches_fit_metrics(tmp_path, capsys):
    data, x, y = data_csv(tmp_path / "data.csv", n=400, d=2)
    out = tmp_path / "fit"
    assert main(["fit", data, "--out", str(out), "--steps", "300", "--bumps", "12", "--quiet", "--no-plot"]) == 0
    pred_path = tmp_path / "pred.csv"
    assert main(["predict", str(out / "model.pt"), data, "-o", str(pred_path)]) == 0
    header, vals = read_out(pred_path)
    assert header == ["c0", "c1", "val", "val_pred"]
    np.testing.assert_allclose(vals[:, :3], np.column_stack([x, y]))
    # Training RMSE recomputed from the written predictions agrees with metrics.json.
    m = json.loads((out / "metrics.json").read_text())
    rmse_all = np.sqrt(np.mean((vals[:, 3] - y) ** 2))
    expect = np.sqrt((m["rmse"] ** 2 * m["n_holdout"] + m["train_rmse"] ** 2 * m["n_train"]) / len(y))
    np.testing.assert_allclose(rmse_all, expect, rtol=1e-4)


def test_predict_csv_without_value_column_and_reordered(tmp_path, capsys):
    data, x, _ = data_csv(tmp_path / "data.csv", n=200, d=2)
    out = tmp_path / "fit"
    assert main(["fit", data, "--out", str(out), *FAST, "--no-plot"]) == 0
    # Coordinates only, in swapped order: the model's column names pick them.
    q = write_csv(tmp_path / "q.csv", ["c1", "c0"], x[:7, ::-1].tolist())
    q_ref = write_csv(tmp_path / "q_ref.csv", ["c0", "c1"], x[:7].tolist())
    assert main(["predict", str(out / "model.pt"), q, "-o", str(tmp_path / "p.csv")]) == 0
    assert main(["predict", str(out / "model.pt"), q_ref, "-o", str(tmp_path / "p_ref.csv")]) == 0
    h, v = read_out(tmp_path / "p.csv")
    _h_ref, v_ref = read_out(tmp_path / "p_ref.csv")
    assert h == ["c1", "c0", "val_pred"] and len(v) == 7
    np.testing.assert_allclose(v[:, 2], v_ref[:, 2])


@pytest.fixture(scope="module")
def fitted_abc(tmp_path_factory):
    """A model fitted on coordinates named a, b, c (value 'val'), its training points and a reference prediction."""
    tmp = tmp_path_factory.mktemp("abc")
    x, y = smooth_data(200, 3)
    data = write_csv(tmp / "d.csv", ["a", "b", "c", "val"], np.column_stack([x, y]).tolist())
    assert main(["fit", data, "--out", str(tmp / "fit"), *FAST, "--no-plot"]) == 0
    model = str(tmp / "fit" / "model.pt")
    ref = write_csv(tmp / "ref.csv", ["a", "b", "c"], x[:6].tolist())
    assert main(["predict", model, ref, "-o", str(tmp / "ref_pred.csv")]) == 0
    return model, x[:6], read_out(tmp / "ref_pred.csv")[1][:, -1]


def test_predict_never_takes_another_column_for_a_missing_coordinate(tmp_path, capsys, fitted_abc):
    """Model on a, b, c; a file with a, b and some v: refused, naming c, whatever the column count."""
    model, x, _ = fitted_abc
    p = str(tmp_path / "p.csv")
    v = np.arange(len(x), dtype=float)[:, None]
    cases = {
        ("a", "b", "v"): "no column 'c'",  # as many columns as the model has coordinates
        ("a", "b", "v", "val"): "no column 'c'",  # one more: a value column after them
        ("v", "b"): "no columns 'a', 'c'",
        ("p", "q", "r"): "no columns 'a', 'b', 'c'",  # none of the model's names
    }
    for header, pattern in cases.items():
        rows = np.column_stack([x, v, v])[:, : len(header)]
        msg = run_err(capsys, ["predict", model, write_csv(tmp_path / "q.csv", header, rows.tolist()), "-o", p])
        assert pattern in msg and "--x-cols" in msg, (header, msg)
        assert "a, b, c" in msg, msg  # the model's coordinates are named
    assert not os.path.exists(p)


def test_predict_maps_columns_by_name_or_as_told(tmp_path, capsys, fitted_abc):
    model, x, ref = fitted_abc
    # Reordered, with extra columns before and after: by name.
    q = write_csv(
        tmp_path / "q.csv",
        ["id", "c", "note", "a", "b"],
        [[i, r[2], "t", r[0], r[1]] for i, r in enumerate(x.tolist())],
    )
    assert main(["predict", model, q, "-o", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "c", "note", "a", "b", "val_pred"]
    np.testing.assert_allclose([float(r[-1]) for r in rows[1:]], ref, rtol=1e-6)
    # --x-cols says which column is which coordinate, in the model's order: taken as told.
    q = write_csv(tmp_path / "q2.csv", ["a", "b", "depth"], x.tolist())
    assert main(["predict", model, q, "-o", str(tmp_path / "p2.csv"), "--x-cols", "a,b,depth"]) == 0
    np.testing.assert_allclose(read_out(tmp_path / "p2.csv")[1][:, -1], ref, rtol=1e-6)
    # ... but a model coordinate's own name in another place is a mistake, not a wish.
    q = write_csv(tmp_path / "q3.csv", ["a", "b", "c"], x.tolist())
    msg = run_err(capsys, ["predict", model, q, "-o", str(tmp_path / "p3.csv"), "--x-cols", "b,a,c"])
    assert "'b'" in msg and "a, b, c" in msg, msg
    assert not (tmp_path / "p3.csv").exists()


def test_predict_with_a_model_fitted_without_names(tmp_path, capsys):
    """A model fitted on .npz (coordinates x0, x1): a CSV's columns are taken by position, with a note,
    unless the CSV uses some of the names x0, x1 (then all are needed)."""
    x, y = smooth_data(200, 2)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out = tmp_path / "fit"
    assert main(["fit", str(tmp_path / "d.npz"), "--out", str(out), *FAST, "--no-plot"]) == 0
    model = str(out / "model.pt")
    assert (
        main(
            [
                "predict",
                model,
                write_csv(tmp_path / "ref.csv", ["x0", "x1"], x[:5].tolist()),
                "-o",
                str(tmp_path / "ref_pred.csv"),
            ]
        )
        == 0
    )
    ref = read_out(tmp_path / "ref_pred.csv")[1][:, -1]
    capsys.readouterr()
    q = write_csv(tmp_path / "q.csv", ["lon", "lat", "val"], np.column_stack([x[:5], y[:5]]).tolist())
    assert main(["predict", model, q, "-o", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    assert "fitted without column names" in err and "lon, lat" in err, err
    header, vals = read_out(tmp_path / "p.csv")
    assert header == ["lon", "lat", "val", "y_pred"]
    np.testing.assert_allclose(vals[:, -1], ref, rtol=1e-6)
    q = write_csv(tmp_path / "q2.csv", ["x0", "v"], x[:5].tolist())
    msg = run_err(capsys, ["predict", model, q, "-o", str(tmp_path / "p2.csv")])
    assert "no column 'x1'" in msg, msg


def test_round_trip_npz(tmp_path, capsys):
    x, y = smooth_data(300, 2)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out = tmp_path / "fit"
    assert main(["fit", str(tmp_path / "d.npz"), "--out", str(out), *FAST, "--no-plot"]) == 0
    np.savez(tmp_path / "q.npz", x=x[:5])
    assert main(["predict", str(out / "model.pt"), str(tmp_path / "q.npz"), "-o", str(tmp_path / "p.csv")]) == 0
    h, v = read_out(tmp_path / "p.csv")
    assert h == ["x0", "x1", "y_pred"]
    np.testing.assert_allclose(v[:, :2], x[:5])
    assert np.all(np.isfinite(v[:, 2]))


def test_column_options_pick_columns(tmp_path, capsys):
    x, y = smooth_data(200, 2)
    rows = [[i, a, v, b, "note"] for i, (a, b), v in zip(range(len(y)), x, y)]
    data = write_csv(tmp_path / "d.csv", ["id", "a", "v", "b", "txt"], rows)
    out = tmp_path / "fit"
    assert main(["fit", data, "--out", str(out), "--x-cols", "a,b", "--y-col", "v", *FAST, "--no-plot"]) == 0
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["x_names"] == ["a", "b"] and ckpt["y_name"] == "v"
    # Non-numeric columns that are not selected are echoed unchanged.
    assert main(["predict", str(out / "model.pt"), data, "-o", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        rows_out = list(csv.reader(f))
    assert rows_out[0] == ["id", "a", "v", "b", "txt", "v_pred"]
    assert rows_out[1][4] == "note"


def test_fit_is_good_with_defaults_on_offset_data(tmp_path, capsys):
    """Default settings on data far from 0 and far from the unit box."""
    rng = np.random.default_rng(3)
    x = rng.uniform(100, 300, size=(3000, 2))
    y = 1000 + 50 * np.sin(x[:, 0] / 30) * np.cos(x[:, 1] / 40) + rng.normal(scale=1, size=3000)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out = tmp_path / "fit"
    assert main(["fit", str(tmp_path / "d.npz"), "--out", str(out), "--steps", "800", "--quiet", "--no-plot"]) == 0
    assert json.loads((out / "metrics.json").read_text())["r2"] > 0.95


def test_bounds_keep_centres_inside(tmp_path, capsys):
    data, _, _ = data_csv(tmp_path / "d.csv", n=200, d=2)
    out = tmp_path / "fit"
    argv = ["fit", data, "--out", str(out), *FAST, "--no-plot", "--bounds", "0:0.5,-1:2", "--c-grad-std", "0.5"]
    assert main(argv) == 0
    ckpt = torch.load(out / "model.pt", weights_only=True)
    c = ckpt["state_dict"]["bumps.c"].double().T * ckpt["x_scale"] + ckpt["x_lo"]
    assert float(c[:, 0].min()) >= -1e-5 and float(c[:, 0].max()) <= 0.5 + 1e-5


# ------------------------------------------------------------------ bad input
@pytest.fixture
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fitted")
    data, _, _ = data_csv(tmp / "data.csv", n=100, d=2)
    assert main(["fit", data, "--out", str(tmp / "fit"), *FAST, "--no-plot"]) == 0
    return tmp, data, str(tmp / "fit" / "model.pt")


def test_bad_inputs_fit(tmp_path, capsys, fitted):
    _, good, _ = fitted
    out = str(tmp_path / "o")
    nan_csv = write_csv(tmp_path / "nan.csv", ["a", "v"], [[1, 2]] * 20 + [["nan", 1]])
    word_csv = write_csv(tmp_path / "w.csv", ["a", "v"], [[1, 2]] * 20 + [["x", 1]])
    few_csv = write_csv(tmp_path / "few.csv", ["a", "v"], [[1, 2], [2, 3], [3, 4]])
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    np.savez(tmp_path / "noy.npz", x=np.zeros((20, 2)))
    np.savez(tmp_path / "nany.npz", x=np.zeros((20, 2)), y=np.r_[np.zeros(19), np.nan])
    np.savez(tmp_path / "strx.npz", x=np.array([["a", "b"]] * 20), y=np.zeros(20))
    cases = [
        (["fit", str(tmp_path / "missing.csv"), "--out", out], "no such file"),
        (["fit", str(empty), "--out", out], "empty file"),
        (["fit", str(binary), "--out", out], "cannot be read"),
        (["fit", nan_csv, "--out", out], "not finite"),
        (["fit", word_csv, "--out", out], "'x' is not a number"),
        (["fit", good, "--out", out, "--x-cols", "c0,nope"], "no column 'nope'"),
        (["fit", good, "--out", out, "--y-col", "zzz"], "no column 'zzz'"),
        (["fit", few_csv, "--out", out], "too few rows"),
        (["fit", str(tmp_path / "noy.npz"), "--out", out], "no array 'y'"),
        (["fit", str(tmp_path / "nany.npz"), "--out", out], "contains NaN"),
        (["fit", str(tmp_path / "strx.npz"), "--out", out], "not numeric"),
        (["fit", good, "--out", out, "--bumps", "0"], "--bumps must be a positive"),
        (["fit", good, "--out", out, "--steps", "-3"], "--steps must be a positive"),
        (["fit", good, "--out", out, "--steps", "ten"], "invalid int value"),
        (["fit", good, "--out", out, "--device", "banana"], "unknown device"),
        (["fit", good, "--out", out, "--holdout", "1.5"], "--holdout"),
        (["fit", good, "--out", out, "--bounds", "3:1"], "lo < hi"),
        (["fit", good], "--out"),
        (["nonsense"], "invalid choice"),
    ]
    for argv, pattern in cases:
        msg = run_err(capsys, argv)
        assert pattern in msg, (argv, msg)
        assert msg.startswith("wandering: error:")
    assert not os.path.exists(out) or not os.listdir(out)


def test_bad_inputs_predict(tmp_path, capsys, fitted):
    _, good, model = fitted
    p = str(tmp_path / "p.csv")
    fake = tmp_path / "fake.pt"
    fake.write_text("not a checkpoint")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    three = write_csv(tmp_path / "three.csv", ["u", "v", "w", "z"], [[1, 2, 3, 4]] * 3)
    cases = [
        (["predict", str(tmp_path / "nope.pt"), good, "-o", p], "no such file"),
        (["predict", str(fake), good, "-o", p], "not a wandering model checkpoint"),
        (["predict", str(other), good, "-o", p], "not a wandering model checkpoint"),
        (["predict", model, str(tmp_path / "nope.csv"), "-o", p], "no such file"),
        (["predict", model, three, "-o", p], "give --x-cols"),
        (["predict", model, good, "-o", p, "--x-cols", "c0,q"], "no column 'q'"),
        (["predict", model, good, "-o", p, "--device", "cuda:7x"], "device"),
    ]
    for argv, pattern in cases:
        msg = run_err(capsys, argv)
        assert pattern in msg, (argv, msg)
    assert not os.path.exists(p)


def test_predict_refuses_to_overwrite(tmp_path, capsys, fitted):
    _, good, model = fitted
    p = tmp_path / "p.csv"
    p.write_text("precious")
    msg = run_err(capsys, ["predict", model, good, "-o", str(p)])
    assert "--force" in msg and p.read_text() == "precious"
    assert main(["predict", model, good, "-o", str(p), "--force"]) == 0
    assert read_out(p)[0][-1] == "val_pred"


def test_fit_refuses_to_overwrite(tmp_path, capsys, fitted):
    tmp, good, model = fitted
    before = open(model, "rb").read()
    msg = run_err(capsys, ["fit", good, "--out", str(tmp / "fit"), *FAST])
    assert "model.pt" in msg and "--force" in msg
    assert open(model, "rb").read() == before


def test_missing_dependency_is_one_line(tmp_path, capsys, monkeypatch, fitted):
    _, good, _ = fitted
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    msg = run_err(capsys, ["fit", good, "--out", str(tmp_path / "o"), *FAST])
    assert "wandering[cli]" in msg
    monkeypatch.setitem(sys.modules, "pandas", None)
    msg = run_err(capsys, ["fit", good, "--out", str(tmp_path / "o"), *FAST, "--no-plot"])
    assert "pandas is required" in msg and "wandering[cli]" in msg


def test_help_and_no_command(capsys):
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert main([]) == 2


# ------------------------------------------------------------------ installed command
def test_python_dash_m_runs_tiny_demo(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run(
        [sys.executable, "-m", "wandering", "demo", "--out", str(out), "--steps", "10", "--points", "100"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "R^2" in r.stdout and "BumpRegressor" in r.stderr  # tqdm bar goes to stderr
    assert png_size(out / "demo.png")[0] > 0


def test_console_script_help():
    exe = os.path.join(os.path.dirname(sys.executable), "wandering")
    if not os.path.exists(exe):
        pytest.skip("console script not installed next to this interpreter")
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "predict" in r.stdout


# ------------------------------------------------------------------ several outputs
DATA = os.path.join(os.path.dirname(__file__), "data")
MULTI_FAST = ["--steps", "120", "--bumps", "12", "--quiet"]


def multi_data(n, d, seed=0):
    """Three smooth outputs of very different scales and offsets."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 2, size=(n, d))
    y = np.column_stack(
        [
            np.sin(2 * x).sum(1) + 5,
            10 * np.cos(1.5 * x).sum(1) - 3,
            0.01 * (x**2).sum(1),
        ]
    )
    return x, y + rng.normal(scale=0.01, size=y.shape) * y.std(0)


def own_output(ckpt, x):
    """The checkpoint's function rebuilt by hand from a plain module: no CLI code involved."""
    from wandering import SlowSumOfBumpFcns

    sd = ckpt["state_dict"]
    bumps = SlowSumOfBumpFcns(
        sd["bumps.c"], sd["bumps.w"], sd["bumps.m"], ckpt["c_bounds"], ckpt["w_bounds"], support_p=ckpt["support_p"]
    )
    xu = torch.as_tensor((x - ckpt["x_lo"].numpy()) / ckpt["x_scale"].numpy(), dtype=torch.float32)
    with torch.no_grad():
        yu = (bumps(xu) + sd["offset"]).double().numpy()
    return yu * np.asarray(ckpt["y_std"]) + np.asarray(ckpt["y_mean"])


def check_multi_metrics(m, names):
    assert m["n_outputs"] == len(names) and list(m["outputs"]) == names
    for key in ("r2", "rmse", "train_r2", "train_rmse"):
        per = [m["outputs"][n][key] for n in names]
        assert m[key] == pytest.approx(np.mean(per)), key
    for n in names:
        assert m["outputs"][n]["r2"] > 0.8 and m["outputs"][n]["train_r2"] > 0.8, (n, m["outputs"][n])
        assert m["outputs"][n]["rmse"] > 0


@pytest.fixture(scope="module")
def multi_csv_fit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multi")
    x, y = multi_data(300, 2)
    data = write_csv(tmp / "d.csv", ["a", "p", "b", "q", "r"], np.column_stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1:]]))
    argv = ["fit", data, "--out", str(tmp / "fit"), "--x-cols", "a,b", "--y-cols", "p,q,r", *MULTI_FAST]
    assert main(argv) == 0
    return tmp, data, x, y


def test_multi_output_csv_round_trip(multi_csv_fit, tmp_path, capsys):
    tmp, data, x, y = multi_csv_fit
    m = json.loads((tmp / "fit" / "metrics.json").read_text())
    check_multi_metrics(m, ["p", "q", "r"])
    assert png_size(tmp / "fit" / "fit.png") == (1600, 1500)  # one row per output
    ckpt = torch.load(tmp / "fit" / "model.pt", weights_only=True)
    assert ckpt["version"] == 2 and ckpt["y_names"] == ["p", "q", "r"] and "y_name" not in ckpt
    assert tuple(ckpt["state_dict"]["bumps.m"].shape) == (12, 3)
    assert tuple(ckpt["state_dict"]["offset"].shape) == (3,)

    pred_path = tmp_path / "pred.csv"
    assert main(["predict", str(tmp / "fit" / "model.pt"), data, "-o", str(pred_path)]) == 0
    assert "3 outputs" in capsys.readouterr().out
    header, vals = read_out(pred_path)
    assert header == ["a", "p", "b", "q", "r", "p_pred", "q_pred", "r_pred"]
    pred = vals[:, 5:]
    np.testing.assert_allclose(pred, own_output(ckpt, x), rtol=1e-5, atol=1e-6 * np.abs(y).max())
    # Per-output RMSE over all rows, recomputed from the written predictions, agrees with metrics.json.
    for j, name in enumerate(["p", "q", "r"]):
        o = m["outputs"][name]
        expect = np.sqrt((o["rmse"] ** 2 * m["n_holdout"] + o["train_rmse"] ** 2 * m["n_train"]) / len(y))
        np.testing.assert_allclose(np.sqrt(np.mean((pred[:, j] - y[:, j]) ** 2)), expect, rtol=1e-4)


def test_multi_output_predict_names_and_npz_output(multi_csv_fit, tmp_path, capsys):
    tmp, _, x, _ = multi_csv_fit
    model = str(tmp / "fit" / "model.pt")
    q = write_csv(tmp_path / "q.csv", ["b", "a"], x[:5, ::-1])  # coordinates only, reordered
    assert main(["predict", model, q, "-o", str(tmp_path / "p.csv"), "--name", "u,v,w"]) == 0
    header, vals = read_out(tmp_path / "p.csv")
    assert header == ["b", "a", "u", "v", "w"]
    assert main(["predict", model, q, "-o", str(tmp_path / "p.npz")]) == 0
    with np.load(tmp_path / "p.npz") as z:
        assert z["y_pred"].shape == (5, 3) and list(z["pred_names"]) == ["p_pred", "q_pred", "r_pred"]
        np.testing.assert_allclose(z["y_pred"], vals[:, 2:], rtol=1e-12)
        np.testing.assert_allclose(z["x"], x[:5])  # in the model's coordinate order


def test_multi_output_npz_round_trip(tmp_path, capsys):
    x, y = multi_data(300, 3, seed=1)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out = tmp_path / "fit"
    assert main(["fit", str(tmp_path / "d.npz"), "--out", str(out), *MULTI_FAST]) == 0
    printed = capsys.readouterr().out
    assert "mean over 3 outputs" in printed and "y2" in printed
    check_multi_metrics(json.loads((out / "metrics.json").read_text()), ["y0", "y1", "y2"])
    assert png_size(out / "fit.png") == (1600, 1500)
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["y_names"] == ["y0", "y1", "y2"]
    np.savez(tmp_path / "q.npz", x=x[:20])
    assert main(["predict", str(out / "model.pt"), str(tmp_path / "q.npz"), "-o", str(tmp_path / "p.npz")]) == 0
    with np.load(tmp_path / "p.npz") as z:
        assert z["y_pred"].shape == (20, 3) and "y" not in z.files
        np.testing.assert_allclose(z["y_pred"], own_output(ckpt, x[:20]), rtol=1e-5, atol=1e-6 * np.abs(y).max())
    assert main(["predict", str(out / "model.pt"), str(tmp_path / "d.npz"), "-o", str(tmp_path / "p.csv")]) == 0
    header, _ = read_out(tmp_path / "p.csv")
    assert header == ["x0", "x1", "x2", "y0", "y1", "y2", "y0_pred", "y1_pred", "y2_pred"]


def test_multi_output_npz_names_and_picture_cap(tmp_path, capsys):
    """y_names in the .npz name the outputs; fit.png shows the first 4 and the command says so."""
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, size=(120, 1))
    y = np.column_stack([np.sin(3 * x[:, 0] + k) for k in range(5)])
    names = np.array(["v", "w", "s", "t", "u"])
    np.savez(tmp_path / "d.npz", x=x, y=y, y_names=names)
    out = tmp_path / "fit"
    assert main(["fit", str(tmp_path / "d.npz"), "--out", str(out), *FAST]) == 0
    assert "first 4 of 5 outputs" in capsys.readouterr().out
    assert png_size(out / "fit.png") == (900, 1400)
    assert list(json.loads((out / "metrics.json").read_text())["outputs"]) == list(names)


def test_one_value_column_is_the_single_output_fit(tmp_path, capsys):
    """--y-cols with one name, --y-col, and .npz y of shape (n, 1) all give the same single-output fit,
    saved in the version-1 layout (the keys, order and types of a file written before BumpRegressor)."""
    data = os.path.join(DATA, "single_output_v1_train.csv")
    argv = ["--steps", "30", "--bumps", "6", "--quiet", "--no-plot"]
    old = torch.load(os.path.join(DATA, "single_output_v1_model.pt"), weights_only=True)
    fits = []
    for opt in (["--y-col", "val"], ["--y-cols", "val"]):
        out = tmp_path / opt[0]
        assert main(["fit", data, "--out", str(out), *opt, *argv]) == 0
        m = json.loads((out / "metrics.json").read_text())
        assert "outputs" not in m and "n_outputs" not in m
        new = torch.load(out / "model.pt", weights_only=True)
        assert list(new) == list(old) and new["version"] == 1 and new["y_name"] == "val"
        assert list(new["state_dict"]) == list(old["state_dict"])
        for key, v in old.items():
            if key == "state_dict":
                for k, t in v.items():
                    assert new[key][k].shape == t.shape and new[key][k].dtype == t.dtype, k
            elif torch.is_tensor(v):
                assert new[key].shape == v.shape and new[key].dtype == v.dtype, key
            else:
                assert type(new[key]) is type(v), key
        fits.append(new)
    _, arr = read_out(data)
    np.savez(tmp_path / "d.npz", x=arr[:, :2], y=arr[:, 2:])  # y of shape (n, 1)
    assert main(["fit", str(tmp_path / "d.npz"), "--out", str(tmp_path / "npz"), *argv]) == 0
    ckpt = torch.load(tmp_path / "npz" / "model.pt", weights_only=True)
    assert ckpt["version"] == 1 and ckpt["y_name"] == "y" and ckpt["state_dict"]["bumps.m"].dim() == 1
    for other in (fits[1], ckpt):
        for k, t in fits[0]["state_dict"].items():
            torch.testing.assert_close(other["state_dict"][k], t, rtol=0, atol=0)


def test_old_single_output_checkpoint_still_predicts(tmp_path, capsys):
    model = os.path.join(DATA, "single_output_v1_model.pt")
    q = os.path.join(DATA, "single_output_v1_query.csv")
    assert main(["predict", model, q, "-o", str(tmp_path / "p.csv")]) == 0
    header, vals = read_out(tmp_path / "p.csv")
    ref_header, ref = read_out(os.path.join(DATA, "single_output_v1_pred.csv"))
    assert header == ref_header == ["c0", "c1", "val_pred"]
    np.testing.assert_allclose(vals, ref, rtol=1e-6)
    assert main(["predict", model, q, "-o", str(tmp_path / "p.npz")]) == 0
    with np.load(tmp_path / "p.npz") as z:
        assert z["y_pred"].shape == (6,)
        np.testing.assert_allclose(z["y_pred"], ref[:, 2], rtol=1e-6)


def test_bad_inputs_several_outputs(tmp_path, capsys, multi_csv_fit):
    tmp, data, x, y = multi_csv_fit
    out = str(tmp_path / "o")
    n = len(x)
    np.savez(tmp_path / "y3d.npz", x=x, y=y[:, :, None] * np.ones(2))
    np.savez(tmp_path / "y0.npz", x=x, y=np.zeros((n, 0)))
    np.savez(tmp_path / "yrows.npz", x=x, y=y[:-1])
    np.savez(tmp_path / "ynames.npz", x=x, y=y, y_names=np.array(["u", "v"]))
    np.savez(tmp_path / "ydup.npz", x=x, y=y, y_names=np.array(["u", "v", "u"]))
    np.savez(tmp_path / "ynum.npz", x=x, y=y, y_names=np.arange(3))
    dup_header = write_csv(tmp_path / "dup.csv", ["a", "p", "p"], [[1, 2, 3]] * 20)
    cases = [
        (["fit", data, "--out", out, "--y-cols", "p,q,p"], "--y-cols names 'p' more than once"),
        (["fit", data, "--out", out, "--y-cols", " , "], "--y-cols must name at least one column"),
        (["fit", data, "--out", out, "--x-cols", "a,b,a"], "--x-cols names 'a' more than once"),
        (["fit", data, "--out", out, "--x-cols", "a,b", "--y-cols", "p,b"], "'b' is in both --x-cols and --y-cols"),
        (["fit", data, "--out", out, "--x-cols", "a,p", "--y-cols", "p"], "'p' is both a coordinate and the value"),
        (["fit", data, "--out", out, "--y-col", "p", "--y-cols", "q,r"], "--y-col or --y-cols, not both"),
        (["fit", data, "--out", out, "--y-cols", "p,nope"], "no column 'nope'"),
        (["fit", data, "--out", out, "--y-cols", "a,b,p,q,r"], "no coordinate columns"),
        (["fit", dup_header, "--out", out, "--y-cols", "p"], "more than one column named 'p'"),
        (["fit", str(tmp_path / "y3d.npz"), "--out", out], "must have shape (n,) or (n, P)"),
        (["fit", str(tmp_path / "y0.npz"), "--out", out], "must have shape (n,) or (n, P)"),
        (["fit", str(tmp_path / "yrows.npz"), "--out", out], f"'x' has {n} rows but 'y' has {n - 1}"),
        (["fit", str(tmp_path / "ynames.npz"), "--out", out], "'y_names' must hold 3 strings"),
        (["fit", str(tmp_path / "ydup.npz"), "--out", out], "3 different, non-empty names"),
        (["fit", str(tmp_path / "ynum.npz"), "--out", out], "'y_names' must hold 3 strings"),
    ]
    for argv, pattern in cases:
        msg = run_err(capsys, argv)
        assert pattern in msg, (argv, msg)
        assert msg.startswith("wandering: error:")
    assert not os.path.exists(out) or not os.listdir(out)

    model = str(tmp / "fit" / "model.pt")
    p = str(tmp_path / "p.csv")
    ckpt = torch.load(model, weights_only=True)
    bad_names = dict(ckpt, y_names=["p", "q"])
    torch.save(bad_names, tmp_path / "bad_names.pt")
    future = dict(ckpt, version=3)
    torch.save(future, tmp_path / "future.pt")
    cases = [
        (["predict", model, data, "-o", p, "--name", "u,v"], "the model has 3 outputs"),
        (["predict", model, data, "-o", p, "--name", "u,v,u"], "the model has 3 outputs"),
        (["predict", str(tmp_path / "bad_names.pt"), data, "-o", p], "damaged wandering checkpoint"),
        (["predict", str(tmp_path / "future.pt"), data, "-o", p], "version 3 is not supported"),
    ]
    for argv, pattern in cases:
        msg = run_err(capsys, argv)
        assert pattern in msg, (argv, msg)
    assert not os.path.exists(p)


# ------------------------------------------------------------------ files read wrongly, silently (now errors)
def test_duplicate_column_names_are_refused(tmp_path, capsys):
    x, y = smooth_data(50, 2)
    dup = write_csv(tmp_path / "dup.csv", ["a", "a", "v"], np.column_stack([x, y]))
    out = tmp_path / "o"
    msg = run_err(capsys, ["fit", dup, "--out", str(out), *FAST])
    assert "more than one column named 'a'" in msg
    assert not out.exists()


def test_csv_without_header_is_read_as_data_with_generated_names(tmp_path, capsys):
    """A first row of numbers is data, not a header: columns x0, x1, ..., y, and a note says so."""
    x, y = smooth_data(200, 2)
    with_header, _, _ = data_csv(tmp_path / "h.csv", n=200, d=2)
    bare = tmp_path / "bare.csv"
    np.savetxt(bare, np.column_stack([x, y]), delimiter=",", fmt="%.17g")
    for name, data in (("bare", str(bare)), ("header", with_header)):
        assert main(["fit", data, "--out", str(tmp_path / name), *FAST, "--no-plot"]) == 0
    err = capsys.readouterr().err
    assert "first row is all numbers" in err and "x0, x1, y" in err
    ckpt = torch.load(tmp_path / "bare" / "model.pt", weights_only=True)
    assert ckpt["x_names"] == ["x0", "x1"] and ckpt["y_name"] == "y"
    m_bare, m_head = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("bare", "header"))
    assert m_bare["n_train"] + m_bare["n_holdout"] == 200  # the first row was not lost
    assert m_bare["rmse"] == pytest.approx(m_head["rmse"], rel=1e-6)
    # predict: a bare file of the model's d columns is all coordinates
    q = tmp_path / "q.csv"
    np.savetxt(q, x[:4], delimiter=",", fmt="%.17g")
    assert main(["predict", str(tmp_path / "header" / "model.pt"), str(q), "-o", str(tmp_path / "p.csv")]) == 0
    header, vals = read_out(tmp_path / "p.csv")
    assert header == ["x0", "x1", "val_pred"] and vals.shape == (4, 3)
    np.testing.assert_allclose(vals[:, :2], x[:4])


def test_utf8_bom_is_not_part_of_the_first_name(tmp_path, capsys):
    """Excel's "CSV UTF-8" starts with a byte-order mark; the first column is still 'a'."""
    x, y = smooth_data(100, 2)
    path = tmp_path / "bom.csv"
    with open(path, "w", newline="", encoding="utf-8-sig") as f:
        csv.writer(f).writerows([["a", "b", "v"], *np.column_stack([x, y]).tolist()])
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    out = tmp_path / "fit"
    assert main(["fit", str(path), "--out", str(out), "--x-cols", "a,b", "--y-col", "v", *FAST, "--no-plot"]) == 0
    assert torch.load(out / "model.pt", weights_only=True)["x_names"] == ["a", "b"]
    assert main(["predict", str(out / "model.pt"), str(path), "-o", str(tmp_path / "p.csv")]) == 0
    assert read_out(tmp_path / "p.csv")[0] == ["a", "b", "v", "v_pred"]


# ------------------------------------------------------------------ one line, not a traceback
def test_huge_finite_values_are_one_line(tmp_path, capsys):
    x, y = smooth_data(50, 2)
    big_x = x.copy()
    big_x[0, 1], big_x[1, 1] = 1e308, -1e308
    np.savez(tmp_path / "bigx.npz", x=big_x, y=y)
    big_y = write_csv(tmp_path / "bigy.csv", ["a", "b", "v"], np.column_stack([x, np.r_[1e300, -1e300, y[2:]]]))
    out = str(tmp_path / "o")
    msg = run_err(capsys, ["fit", str(tmp_path / "bigx.npz"), "--out", out, *FAST])
    assert "column 'x1': values too large" in msg
    assert "column 'v': values too large" in run_err(capsys, ["fit", big_y, "--out", out, *FAST])
    assert not os.path.exists(out)
    good, _, _ = data_csv(tmp_path / "good.csv", n=100, d=2)
    assert main(["fit", good, "--out", out, *FAST, "--no-plot"]) == 0
    q = write_csv(tmp_path / "q.csv", ["c0", "c1"], [[0.5, 0.5], [1e308, -1e308]])
    msg = run_err(capsys, ["predict", os.path.join(out, "model.pt"), q, "-o", str(tmp_path / "p.csv")])
    assert "column 'c0': 1e+308 is too far outside the range" in msg


def test_forged_checkpoint_with_the_right_tag_is_one_line(tmp_path, capsys, fitted):
    _, good, model = fitted
    ckpt = torch.load(model, weights_only=True)
    p = str(tmp_path / "p.csv")
    forged = {
        "no_keys": {"format": FORMAT_TAG, "version": 1},
        "no_x_names": {k: v for k, v in ckpt.items() if k != "x_names"},
        "short_x_lo": dict(ckpt, x_lo=torch.zeros(1, dtype=torch.float64)),
        "no_m": dict(ckpt, state_dict={k: v for k, v in ckpt["state_dict"].items() if k != "bumps.m"}),
        "nan_scale": dict(ckpt, x_scale=torch.tensor([1.0, float("nan")], dtype=torch.float64)),
        "text_d": dict(ckpt, d="2"),
    }
    for name, bad in forged.items():
        torch.save(bad, tmp_path / f"{name}.pt")
        msg = run_err(capsys, ["predict", str(tmp_path / f"{name}.pt"), good, "-o", p])
        assert "damaged wandering checkpoint" in msg, (name, msg)
    assert "no d, n_bumps" in run_err(capsys, ["predict", str(tmp_path / "no_keys.pt"), good, "-o", p])
    assert not os.path.exists(p)


def test_output_folder_that_cannot_be_written_is_refused_before_fitting(tmp_path, capsys, fitted):
    _, good, model = fitted
    folders = []
    if sys.platform.startswith("linux") and os.path.isdir("/proc"):
        folders.append("/proc")  # a directory nobody, root included, can create files in
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        folders.append(str(locked))
    if not folders:
        pytest.skip("no folder here that this user cannot write")
    for folder in folders:
        msg = run_err(capsys, ["fit", good, "--out", folder, *FAST, "--no-plot"])
        assert "cannot write there" in msg
        assert "R^2" not in capsys.readouterr().out  # refused before the fit, not after it
        msg = run_err(capsys, ["predict", model, good, "-o", os.path.join(folder, "p.csv")])
        assert "cannot write there" in msg


def test_stale_fit_png_is_not_left_beside_a_new_model(tmp_path, capsys, fitted):
    _, good, _ = fitted
    out = tmp_path / "fit"
    assert main(["fit", good, "--out", str(out), *FAST]) == 0
    assert (out / "fit.png").exists()
    # --no-plot with --force replaces the whole earlier run, its picture included
    assert main(["fit", good, "--out", str(out), *FAST, "--no-plot", "--force", "--seed", "1"]) == 0
    assert "removed the earlier run's" in capsys.readouterr().out
    assert not (out / "fit.png").exists() and (out / "model.pt").exists()
    # a folder holding only an earlier picture: refused without --force
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "fit.png").write_bytes(b"old")
    msg = run_err(capsys, ["fit", good, "--out", str(lone), *FAST, "--no-plot"])
    assert "fit.png" in msg and "--force" in msg
    assert (lone / "fit.png").read_bytes() == b"old" and not (lone / "model.pt").exists()


# ------------------------------------------------------------------ start-up: light, and Ctrl-C is one line
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"], ["predict", "--help"], ["demo", "--help"]])
def test_help_does_not_import_torch(argv):
    r = run_python(
        "import sys\n"
        "from wandering.cli import main\n"
        f"code = main({argv!r})\n"
        "heavy = [m for m in ('torch', 'numba', 'pandas', 'matplotlib', 'wandering.nn.modules', 'wandering._engine')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
        "sys.exit(code)\n"
    )
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout, r.stdout[-300:]
    assert "usage: wandering" in r.stdout


def test_bad_data_files_are_refused_before_torch_is_imported(tmp_path, fitted):
    """A missing, empty, unreadable or headerless-by-mistake file, or a missing column, is one line at once:
    torch (seconds to import) is not loaded for it."""
    _, good, model = fitted
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    blank = tmp_path / "blank.csv"
    blank.write_text("\n\n")
    npz = tmp_path / "empty.npz"
    npz.write_bytes(b"")
    notzip = tmp_path / "text.npz"
    notzip.write_text("a,b\n1,2\n")
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    out = str(tmp_path / "o")
    p = str(tmp_path / "p.csv")
    cases = [
        (["fit", str(tmp_path / "missing.csv"), "--out", out], "no such file"),
        (["fit", str(empty), "--out", out], "empty file"),
        (["fit", str(blank), "--out", out], "empty file"),
        (["fit", str(npz), "--out", out], "empty file"),
        (["fit", str(notzip), "--out", out], "not a readable .npz file"),
        (["fit", str(folder), "--out", out], "is a directory"),
        (["fit", good, "--out", out, "--y-col", "zzz"], "no column 'zzz'"),
        (["fit", good, "--out", out, "--x-cols", "c0,nope"], "no column 'nope'"),
        (["predict", model, str(tmp_path / "missing.csv"), "-o", p], "no such file"),
        (["predict", model, str(empty), "-o", p], "empty file"),
        (["predict", str(tmp_path / "nope.pt"), good, "-o", p], "no such file"),
        (["predict", str(empty), good, "-o", p], "not a wandering model checkpoint"),
    ]
    script = (
        "import json, sys\n"
        "from wandering.cli import main\n"
        "out = []\n"
        f"for argv in {[argv for argv, _ in cases]!r}:\n"
        "    code = main(argv)\n"
        "    out.append([code, 'torch' in sys.modules])\n"
        "print('RESULT', json.dumps(out))\n"
    )
    r = run_python(script)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout.split("RESULT", 1)[1])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == len(cases), r.stderr  # one line each
    for (argv, pattern), (code, torch_loaded), line in zip(cases, results, lines):
        assert code == 2 and line.startswith("wandering: error:") and pattern in line, (argv, line)
        assert not torch_loaded, (argv, line)


def test_ctrl_c_while_importing_torch_is_one_line(tmp_path, fitted):
    """KeyboardInterrupt raised inside `import torch` (as Ctrl-C at start-up would): exit 130, no traceback."""
    _, good, _ = fitted
    r = run_python(
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from wandering.cli import main\n"
        f"sys.exit(main(['fit', {good!r}, '--out', {str(tmp_path / 'o')!r}, '--quiet']))\n"
    )
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip() == "wandering: interrupted"


def test_predict_in_large_chunks_equals_small_chunks(fitted):
    from wandering.cli import load_checkpoint
    from wandering.cli._recipe import predict_arrays

    _, _, model = fitted
    net, _ckpt = load_checkpoint(model)
    x = np.random.default_rng(5).uniform(-1, 2, size=(5000, 2))
    np.testing.assert_allclose(predict_arrays(net, x, chunk=777), predict_arrays(net, x), rtol=1e-6)


# ---------------------------------------------------------------- fit is a shell over BumpRegressor
def test_fit_settings_defaults_are_bump_regressors():
    import dataclasses
    import inspect

    from wandering import BumpRegressor
    from wandering.fit._settings import FitSettings

    reg = inspect.signature(BumpRegressor).parameters
    s = FitSettings()
    same = {
        "bumps": "n_bumps",
        "steps": "steps",
        "lr_position": "lr_position",
        "lr_magnitude": "lr_magnitude",
        "c_grad_std": "c_grad_std",
        "w_grad_std": "w_grad_std",
        "m_grad_gain": "m_grad_gain",
        "support_p": "support_p",
        "relocate": "relocate",
        "shape": "shape",
        "lr_angle": "lr_angle",
    }
    for ours, theirs in same.items():
        assert getattr(s, ours) == reg[theirs].default, ours
    assert s.batch is None and reg["batch"].default == "auto"
    assert {f.name for f in dataclasses.fields(FitSettings)} >= set(same)


def test_fit_command_is_the_regressor_on_the_training_rows(tmp_path, capsys):
    """`wandering fit` = BumpRegressor(same options).fit on the rows it did not hold out, bit for bit."""
    from wandering import BumpRegressor
    from wandering.fit.checkpoint import load, to_regressor

    data, x, y = data_csv(tmp_path / "d.csv", n=200, d=2)
    out = tmp_path / "fit"
    argv = [
        "--steps",
        "25",
        "--bumps",
        "7",
        "--quiet",
        "--no-plot",
        "--seed",
        "3",
        "--batch",
        "64",
        "--lr-position",
        "0.2",
        "--c-grad-std",
        "0.01",
        "--relocate",
    ]
    assert main(["fit", data, "--out", str(out), *argv]) == 0
    cli_reg = to_regressor(load(str(out / "model.pt")))
    hold = np.sort(np.random.default_rng(3).permutation(len(x))[: round(0.1 * len(x))])
    train = np.setdiff1d(np.arange(len(x)), hold)
    ref = BumpRegressor(7, steps=25, batch=64, lr_position=0.2, c_grad_std=0.01, relocate=True, random_state=3)
    ref.fit(x[train], y[train])
    q = np.random.default_rng(1).uniform(-0.5, 1.5, size=(300, 2))
    np.testing.assert_array_equal(cli_reg.predict(q), ref.predict(q))
    for name, t in ref.module_.state_dict().items():
        torch.testing.assert_close(cli_reg.module_.state_dict()[name], t, rtol=0, atol=0)
    m = json.loads((out / "metrics.json").read_text())
    assert m["r2"] == pytest.approx(ref.score(x[hold], y[hold]), rel=1e-6)


def test_fit_default_bump_count_follows_the_data(tmp_path, capsys):
    """--bumps defaults to auto, BumpRegressor's rule on the training rows: 180 rows in 3-D -> 6 bumps."""
    from wandering.fit.regressor import auto_n_bumps

    x, y = smooth_data(200, 3)
    data = write_csv(tmp_path / "d.csv", ["a", "b", "c", "v"], np.column_stack([x, y]).tolist())
    for name, extra in (("default", []), ("auto", ["--bumps", "auto"])):
        assert main(["fit", data, "--out", str(tmp_path / name), "--steps", "30", "--quiet", "--no-plot", *extra]) == 0
        m = json.loads((tmp_path / name / "metrics.json").read_text())
        assert m["bumps"] == auto_n_bumps(m["n_train"], 3) == 6, m
        assert torch.load(tmp_path / name / "model.pt", weights_only=True)["n_bumps"] == 6
    msg = run_err(capsys, ["fit", data, "--out", str(tmp_path / "o"), "--bumps", "many"])
    assert "--bumps must be a positive integer or 'auto', but got 'many'" in msg


def test_fit_worse_than_a_constant_says_so_in_one_line(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x, y = rng.uniform(size=(330, 5)), rng.normal(size=330)  # nothing to fit
    data = write_csv(tmp_path / "noise.csv", ["a", "b", "c", "d", "e", "v"], np.column_stack([x, y]).tolist())
    assert main(["fit", data, "--out", str(tmp_path / "o"), "--bumps", "64", "--steps", "100", "--quiet"]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith(
        "wandering: warning: BumpRegressor predicts its validation split worse than a constant: validation R^2 -"
    ), err
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["validation_r2"] < 0 and f"validation R^2 {m['validation_r2']:.3g} " in err[0]
    assert "n_bumps='auto' picks" in err[0]


def test_old_lr_option_sets_both_rates():
    from wandering.cli._recipe import regressor_for
    from wandering.fit._settings import FitSettings

    reg = regressor_for(FitSettings(bumps=64, lr=0.02), d=2)
    assert reg.lr_magnitude == 0.02 and reg.lr_position == pytest.approx(0.02 * 64**0.5)  # 0.02 of the box
    reg = regressor_for(FitSettings(bumps=64), d=2)
    assert (reg.lr_position, reg.lr_magnitude) == (0.1, 0.01)
    reg = regressor_for(FitSettings(lr=0.02), d=2, n=1000)  # auto: 1000 // 20 = 50 bumps
    assert reg.n_bumps == "auto" and reg.lr_position == pytest.approx(0.02 * 50**0.5)
    with pytest.raises(ValueError, match="needs n"):
        regressor_for(FitSettings(lr=0.02), d=2)


@pytest.mark.parametrize("bad", ["0", "-3", "many", "1.5"])
def test_bad_batch_is_one_line(tmp_path, capsys, fitted, bad):
    _, good, _ = fitted
    msg = run_err(capsys, ["fit", good, "--out", str(tmp_path / "o"), "--batch", bad, "--quiet"])
    assert "--batch must be 'auto' or a positive integer" in msg and bad.lstrip("-") in msg


def test_old_checkpoint_loads_as_a_fitted_regressor():
    from wandering import BumpRegressor
    from wandering.fit.checkpoint import load, to_regressor

    reg = to_regressor(load(os.path.join(DATA, "single_output_v1_model.pt")))
    assert isinstance(reg, BumpRegressor) and reg.n_features_in_ == 2 and reg.n_outputs_ == 1
    _, q = read_out(os.path.join(DATA, "single_output_v1_query.csv"))
    _, ref = read_out(os.path.join(DATA, "single_output_v1_pred.csv"))
    pred = reg.predict(q[:, :2])
    assert pred.shape == (len(q),)
    np.testing.assert_allclose(pred, ref[:, 2], rtol=1e-6)
