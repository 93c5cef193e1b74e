"""The checkpoint format with oriented bumps: round trips through the file (predictions bit for
bit), old layouts loading as axis-aligned regressors, damaged oriented checkpoints, and
``wandering fit --shape oriented`` / ``wandering predict``."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch

from wandering import BumpRegressor, SlowOrientedSumOfBumpFcns, SlowSumOfBumpFcns
from wandering.cli import main
from wandering.fit.checkpoint import CheckpointError, from_regressor, load, save, to_regressor

DATA = os.path.join(os.path.dirname(__file__), "data")


def _data(n=300, d=2, P=None, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 2, size=(n, d))
    y = np.sin(2 * x).sum(1) + np.exp(-(((x[:, 0] - x[:, -1]) / 0.3) ** 2))
    if P is not None:
        y = np.stack([y + k for k in range(P)], axis=1)
    return x, y


def _round_trip(reg, tmp_path, y_name):
    d = reg.n_features_in_
    path = str(tmp_path / "model.pt")
    save(from_regressor(reg, [f"x{j}" for j in range(d)], y_name), path)
    return load(path), to_regressor(load(path))


@pytest.mark.parametrize("d, P", [(1, None), (2, None), (2, 3), (3, 2)])
def test_oriented_round_trip_predicts_bit_for_bit(tmp_path, d, P):
    x, y = _data(d=d, P=P)
    reg = BumpRegressor(8, steps=30, shape="oriented", random_state=0).fit(x, y)
    reg.module_.bumps.angle_grad_std = 0.25
    names = "y" if P is None else [f"y{p}" for p in range(P)]
    ckpt, back = _round_trip(reg, tmp_path, names)
    assert ckpt["version"] == (1 if P is None else 2)
    assert ckpt["shape"] == "oriented" and ckpt["angle_grad_std"] == 0.25
    assert ckpt["state_dict"]["bumps.angles"].shape == (d * (d - 1) // 2, 8)
    raw = torch.load(str(tmp_path / "model.pt"), weights_only=True)  # plain tensors, numbers and strings
    assert raw["shape"] == "oriented"
    assert isinstance(back.module_.bumps, SlowOrientedSumOfBumpFcns) and back.shape == "oriented"
    assert back.module_.bumps.angle_grad_std == 0.25
    for name, t in reg.module_.state_dict().items():
        assert torch.equal(back.module_.state_dict()[name], t), name
    q = np.random.default_rng(1).uniform(-1.5, 2.5, size=(500, d))
    np.testing.assert_array_equal(back.predict(q), reg.predict(q))
    assert back.n_params_ == reg.n_params_


def test_axis_aligned_checkpoints_keep_their_layout_and_load_as_axis(tmp_path):
    x, y = _data(P=2)
    reg = BumpRegressor(8, steps=20, random_state=0).fit(x, y)
    ckpt, back = _round_trip(reg, tmp_path, ["a", "b"])
    assert ckpt["version"] == 2 and "shape" not in ckpt and "angle_grad_std" not in ckpt
    assert "bumps.angles" not in ckpt["state_dict"]
    assert isinstance(back.module_.bumps, SlowSumOfBumpFcns) and back.shape == "axis"
    q = np.random.default_rng(1).uniform(-1.5, 2.5, size=(300, 2))
    np.testing.assert_array_equal(back.predict(q), reg.predict(q))
    old = to_regressor(load(os.path.join(DATA, "single_output_v1_model.pt")))  # written before oriented bumps
    assert isinstance(old.module_.bumps, SlowSumOfBumpFcns) and old.shape == "axis"


def test_damaged_oriented_checkpoints_are_refused(tmp_path):
    x, y = _data()
    reg = BumpRegressor(6, steps=5, shape="oriented", random_state=0).fit(x, y)
    good = from_regressor(reg, ["a", "b"], "v")
    axis = from_regressor(BumpRegressor(6, steps=5, random_state=0).fit(x, y), ["a", "b"], "v")

    def without_angles(ck):
        sd = dict(ck["state_dict"])
        del sd["bumps.angles"]
        return dict(ck, state_dict=sd)

    stray = "state_dict has 'bumps.angles' but the checkpoint's shape is 'axis'"
    cases = [
        ("shape must be 'axis' or 'oriented', but got 'round'", dict(good, shape="round")),
        ("no state_dict['bumps.angles']", without_angles(good)),
        (
            "state_dict['bumps.angles'] must be a finite (1, 6) tensor",
            dict(good, state_dict=dict(good["state_dict"], **{"bumps.angles": torch.zeros(2, 6)})),
        ),
        (
            "state_dict['bumps.angles'] must be a finite (1, 6) tensor",
            dict(good, state_dict=dict(good["state_dict"], **{"bumps.angles": torch.full((1, 6), float("nan"))})),
        ),
        ("angle_grad_std is not a number", dict(good, angle_grad_std="x")),
        (stray, dict(axis, state_dict=dict(axis["state_dict"], **{"bumps.angles": torch.zeros(1, 6)}))),
        (stray, {k: v for k, v in good.items() if k != "shape"}),  # angles without the shape that reads them
    ]
    for i, (message, ckpt) in enumerate(cases):
        path = str(tmp_path / f"bad{i}.pt")
        save(ckpt, path)
        with pytest.raises(CheckpointError, match="damaged wandering checkpoint") as err:
            load(path)
        assert message in str(err.value), (message, str(err.value))


# ---------------------------------------------------------------- the command
def _csv(path, x, y):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"c{j}" for j in range(x.shape[1])] + ["val"])
        w.writerows(np.column_stack([x, y]).tolist())
    return str(path)


def test_fit_shape_oriented_is_the_oriented_regressor_and_predict_reads_it(tmp_path, capsys):
    x, y = _data(200)
    data = _csv(tmp_path / "d.csv", x, y)
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
        "--shape",
        "oriented",
        "--lr-angle",
        "0.05",
    ]
    assert main(["fit", data, "--out", str(out), *argv]) == 0
    ckpt = load(str(out / "model.pt"))
    assert ckpt["shape"] == "oriented" and ckpt["state_dict"]["bumps.angles"].shape == (1, 7)
    assert json.loads((out / "metrics.json").read_text())["shape"] == "oriented"
    cli_reg = to_regressor(ckpt)
    hold = np.sort(np.random.default_rng(3).permutation(len(x))[: round(0.1 * len(x))])
    train = np.setdiff1d(np.arange(len(x)), hold)
    ref = BumpRegressor(7, steps=25, shape="oriented", lr_angle=0.05, random_state=3).fit(x[train], y[train])
    for name, t in ref.module_.state_dict().items():
        assert torch.equal(cli_reg.module_.state_dict()[name], t), name
    assert ref.module_.bumps.angles.detach().abs().max() > 0
    # predict through the command: the regressor's predictions
    q = np.random.default_rng(1).uniform(-1, 2, size=(50, 2))
    query = _csv(tmp_path / "q.csv", q, np.zeros(len(q)))
    assert main(["predict", str(out / "model.pt"), query, "-o", str(tmp_path / "p.npz")]) == 0
    with np.load(tmp_path / "p.npz") as z:
        np.testing.assert_array_equal(z["y_pred"], ref.predict(q))
    capsys.readouterr()


def test_fit_shape_errors_are_one_line(tmp_path, capsys):
    x, y = _data(50)
    data = _csv(tmp_path / "d.csv", x, y)
    for argv, pattern in (
        (["--shape", "round"], "argument --shape: invalid choice: 'round' (choose from 'axis', 'oriented')"),
        (["--lr-angle", "-1"], "--lr-angle must be >= 0, but got -1.0"),
        (["--lr-angle", "nan"], "--lr-angle must be >= 0, but got nan"),
    ):
        code = main(["fit", data, "--out", str(tmp_path / "o"), "--quiet", *argv])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert code == 2 and len(err) == 1 and pattern in err[0], err
