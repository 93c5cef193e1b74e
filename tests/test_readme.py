"""The README's Python examples run as written (with fewer steps, to stay fast)."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_training_loop_runs_and_learns(capsys):
    block = python_blocks()[0]
    assert "range(500)" in block
    namespace = {}
    exec(compile(block.replace("range(500)", "range(40)"), str(README), "exec"), namespace)
    loss0 = ((namespace["y"]) ** 2).mean().sqrt().item()  # the fit starts from m = 0
    assert namespace["loss"].sqrt().item() < 0.7 * loss0
    assert "rmse" in capsys.readouterr().out
