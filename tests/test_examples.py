"""The examples run as documented (in their quick modes, to stay fast)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_multi_output_neurons_quick():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "multi_output_neurons.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in ("multi", "separate"):
            rows[parts[0]] = parts
    assert set(rows) == {"multi", "separate"}, r.stdout
    assert rows["multi"][1] == "1" and rows["separate"][1] == "4"  # modules: one, or one per output
    for method, parts in rows.items():
        seconds, peak_rss, mean_r2, min_r2 = float(parts[2]), float(parts[5]), float(parts[6]), float(parts[7])
        assert seconds > 0 and peak_rss > 0, (method, parts)
        assert 0.8 < min_r2 <= mean_r2 <= 1.0, (method, parts)
    assert "ru_maxrss" in r.stdout  # the table says how memory was measured


def test_fit_image_small(tmp_path):
    import re

    import pytest

    pytest.importorskip("skimage")  # the `images` extra
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    out = tmp_path / "fit.png"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "fit_image.py"),
            "--size",
            "64",
            "--bumps",
            "120",
            "--steps",
            "80",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"astronaut 64x64: 120 oriented bumps, ([\d,]+) numbers .* PSNR ([\d.]+) dB", r.stdout)
    assert m, r.stdout
    assert int(m.group(1).replace(",", "")) == 120 * 8 + 3  # centre 2, scales 2, angle 1, colour 3; offset 3
    # a 64 x 64 picture from 963 numbers: well above a flat colour (~12 dB), below a copy
    assert 20.0 < float(m.group(2)) < 40.0, r.stdout
    assert out.stat().st_size > 1000
