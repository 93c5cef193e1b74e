"""The package's layers: _engine -> nn -> fit -> cli, each importing only those below it;
the public names and the modules of the flat 0.1 layout keep working, pickles included."""

import ast
import importlib
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import wandering

PKG = pathlib.Path(wandering.__file__).parent
DATA = pathlib.Path(__file__).parent / "data"
LAYERS = {"_engine": 0, "nn": 1, "fit": 2, "cli": 3}


def _layer_of(dotted: str) -> int | None:
    parts = dotted.split(".")
    if parts[0] != "wandering" or len(parts) < 2:
        return None
    return LAYERS.get(parts[1])


def _wandering_imports(path: pathlib.Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: relative import; the package imports by absolute name")
            names += [f"{node.module}.{a.name}" for a in node.names]
    return [n for n in names if n.startswith("wandering.")]


def test_the_top_folder_holds_only_the_package_entry_points_and_the_layers():
    files = sorted(p.name for p in PKG.glob("*.py"))
    folders = sorted(p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert files == ["__init__.py", "__main__.py"]
    assert folders == sorted(LAYERS)


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_a_layer_imports_only_layers_below_it(layer):
    bad = []
    for path in sorted((PKG / layer).glob("*.py")):
        for name in _wandering_imports(path):
            target = _layer_of(name)
            if target is not None and target > LAYERS[layer]:
                bad.append(f"{path.relative_to(PKG)} imports {name}")
    assert not bad, bad


def test_the_layer_rule_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from wandering.fit.regressor import BumpRegressor\nimport torch\n")
    assert [_layer_of(n) for n in _wandering_imports(bad)] == [2]


def test_public_names_import_from_the_top_and_from_their_layer():
    from wandering import BumpRegressor, SlowSumOfBumpFcns, attach, bump_sum  # noqa: F401
    from wandering.fit import BumpRegressor as B
    from wandering.nn import SlowSumOfBumpFcns as S

    assert B is BumpRegressor and S is SlowSumOfBumpFcns
    for name in wandering.__all__:
        obj = getattr(wandering, name)
        if name != "__version__":
            assert obj.__doc__ and len(obj.__doc__.strip()) > 40, f"{name} lacks a docstring"


@pytest.mark.parametrize("old", sorted(wandering._MOVED_MODULES))
def test_modules_of_the_flat_layout_are_the_moved_modules(old):
    moved = importlib.import_module(f"wandering.{old}")
    new = importlib.import_module(f"wandering.{wandering._MOVED_MODULES[old]}")
    assert moved is new
    assert new.__spec__.name == new.__name__ == f"wandering.{wandering._MOVED_MODULES[old]}"


def test_an_unknown_module_is_still_an_import_error():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("wandering.no_such_module")
    with pytest.raises(AttributeError, match="no_such_name"):
        wandering.no_such_name  # noqa: B018


def _check_flat_layout_objects(objs):
    torch.testing.assert_close(objs["sum"](objs["xq"]).detach(), objs["sum_y"], rtol=0, atol=0)
    torch.testing.assert_close(objs["oriented"](objs["xq"]).detach(), objs["oriented_y"], rtol=0, atol=0)
    np.testing.assert_array_equal(objs["regressor"].predict(objs["Xq"]), objs["regressor_y"])
    assert type(objs["sum"]).__module__ == "wandering.nn.modules"
    assert type(objs["regressor"]).__module__ == "wandering.fit.regressor"


def test_pickles_written_by_the_flat_layout_load_and_predict_the_same():
    raw = (DATA / "flat_layout_objects.pkl").read_bytes()
    assert b"wandering.modules" in raw and b"wandering.regressor" in raw  # written by 0.1's layout
    _check_flat_layout_objects(pickle.loads(raw))


def test_torch_saves_written_by_the_flat_layout_load_and_predict_the_same():
    _check_flat_layout_objects(torch.load(DATA / "flat_layout_objects.pt", weights_only=False))


def test_new_pickles_name_the_new_modules():
    s = wandering.SumOfBumpFcns(torch.rand(2, 3), torch.full((2, 3), 0.3), torch.ones(3), None, None)
    raw = pickle.dumps(s)
    assert b"wandering.nn.modules" in raw and b"wandering.modules\x94" not in raw
    torch.testing.assert_close(pickle.loads(raw).c, s.c)


def test_help_loads_neither_torch_nor_numba():
    code = "import sys; import wandering.cli as c\ntry:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
    code += "print(sorted(m for m in ('torch', 'numba') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
