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

from wandering.cli import FORMAT_TAG, main

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
    assert "R^2" in printed and "RMSE" in printed and "time" in printed
    w, h = png_size(out / "demo.png")
    assert (w, h) == (1100, 1000)
    m = json.loads((out / "metrics.json").read_text())
    assert 0.5 < m["r2"] <= 1 and m["rmse"] > 0 and m["seconds"] > 0
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
def test_demo_default_is_accurate_and_quick(tmp_path, capsys):
    """The real demo, as the README runs it (well under a minute on 2 cores)."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["r2"] >= 0.95
    assert m["seconds_total"] < 60


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
    h_ref, v_ref = read_out(tmp_path / "p_ref.csv")
    assert h == ["c1", "c0", "val_pred"] and len(v) == 7
    np.testing.assert_allclose(v[:, 2], v_ref[:, 2])


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


def test_help_and_no_command(capsys):
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert main([]) == 2


# ------------------------------------------------------------------ installed command
def test_python_dash_m_runs_tiny_demo(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run(
        [sys.executable, "-m", "wandering", "demo", "--out", str(out), "--steps", "10", "--points", "100"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "R^2" in r.stdout and "fitting" in r.stderr  # tqdm bar goes to stderr
    assert png_size(out / "demo.png")[0] > 0


def test_console_script_help():
    exe = os.path.join(os.path.dirname(sys.executable), "wandering")
    if not os.path.exists(exe):
        pytest.skip("console script not installed next to this interpreter")
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "predict" in r.stdout
