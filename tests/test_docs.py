"""The documentation: every public name is documented with its arguments, returns and
errors; every docstring example runs; every code block of the docs pages runs; and the
Sphinx site builds with warnings as errors (a broken docstring, a stale reference or a
failing gallery example fails it)."""

from __future__ import annotations

import doctest
import importlib
import inspect
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch

import wandering

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PUBLIC_SUBMODULES = (
    "wandering.nn.relocation",
    "wandering.fit.checkpoint",
    "wandering.nn.training",
    "wandering.nn.growth",
)  # Relocation is relocation's
# Callables that take arguments but raise nothing of their own, and why.
NOTHING_TO_RAISE = {"wandering.WanderingHooks": "built by attach(), which checks everything"}
SECTION = re.compile(r"^\s*(Args|Arguments|Returns|Yields|Raises|Shape|Example|Examples|Attributes|Note|Notes):\s*$")


# ---------------------------------------------------------------- the public API
def public_objects() -> dict[str, object]:
    """Every public name, under the path the docs use: ``wandering.X`` for the package's
    names, ``wandering.sub.X`` for the rest of the public submodules' ``__all__``."""
    found: dict[str, object] = {}
    seen: set[int] = set()
    for name in wandering.__all__:
        if name != "__version__":
            obj = getattr(wandering, name)
            found[f"wandering.{name}"] = obj
            seen.add(id(obj))
    for modname in PUBLIC_SUBMODULES:
        mod = importlib.import_module(modname)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and id(obj) not in seen:
                found[f"{modname}.{name}"] = obj
                seen.add(id(obj))
    return found


def _own(obj: object) -> bool:
    """Defined in wandering (not inherited from torch, scikit-learn or builtins)."""
    target = obj.fget if isinstance(obj, property) else obj
    return (getattr(target, "__module__", None) or "").startswith("wandering")


def public_members(cls: type) -> dict[str, object]:
    """The methods and properties users call on a public class: its own and those of its
    wandering bases, without dunders, torch's hooks (``extra_repr``) or foreign members."""
    members = {}
    for name in dir(cls):
        if name.startswith("_") or name == "extra_repr":
            continue
        attr = inspect.getattr_static(cls, name)
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        if (inspect.isfunction(attr) or isinstance(attr, property)) and _own(attr):
            members[name] = attr
    return members


def sections(doc: str) -> dict[str, str]:
    """Google-style sections of a docstring: name -> its text."""
    out: dict[str, str] = {}
    current = None
    for line in doc.splitlines():
        match = SECTION.match(line)
        if match:
            current = match.group(1)
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out


def _parameters(fn) -> list[inspect.Parameter]:
    params = list(inspect.signature(fn).parameters.values())
    return [p for p in params if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _returns_value(fn) -> bool:
    ann = inspect.signature(fn).return_annotation
    return ann not in (None, "None") and ann is not type(None)


def callable_problems(qualname: str, fn, doc: str | None) -> list[str]:
    """What a callable's docstring lacks: Args naming every argument, Returns, Raises."""
    doc = inspect.cleandoc(doc or "")
    if not doc:
        return [f"{qualname}: no docstring"]
    problems = []
    params = _parameters(fn)
    found = sections(doc)
    if params:
        args = found.get("Args", found.get("Arguments"))
        if args is None:
            problems.append(f"{qualname}: no Args section for {[p.name for p in params]}")
        else:
            missing = [p.name for p in params if not re.search(rf"(^|[\s,]){re.escape(p.name)}[\s,:(]", args)]
            if missing:
                problems.append(f"{qualname}: Args does not describe {missing}")
        if "Raises" not in found and qualname not in NOTHING_TO_RAISE:
            problems.append(f"{qualname}: no Raises section (say what bad arguments raise)")
    if fn.__name__ != "__init__" and _returns_value(fn) and not ({"Returns", "Yields"} & set(found)):
        problems.append(f"{qualname}: no Returns section")
    return problems


def docstring_problems() -> list[str]:
    problems = []
    for qualname, obj in public_objects().items():
        if inspect.isclass(obj):
            if not inspect.cleandoc(obj.__doc__ or ""):
                problems.append(f"{qualname}: no docstring")
                continue
            init = obj.__init__
            if _own(init) and _parameters(init):  # the class docstring documents the constructor
                problems += callable_problems(qualname, init, obj.__doc__)
            for name, member in public_members(obj).items():
                if isinstance(member, property):
                    if not inspect.cleandoc(member.__doc__ or ""):
                        problems.append(f"{qualname}.{name}: no docstring")
                else:
                    problems += callable_problems(f"{qualname}.{name}", member, member.__doc__)
        elif callable(obj):
            problems += callable_problems(qualname, obj, obj.__doc__)
    return problems


def test_the_walk_sees_the_whole_public_api():
    objs = public_objects()
    assert {f"wandering.{n}" for n in wandering.__all__ if n != "__version__"} <= set(objs)
    assert "wandering.nn.relocation.Relocation" in objs and "wandering.fit.checkpoint.load" in objs
    members = public_members(wandering.SlowSumOfBumpFcns)
    assert {"forward", "bound", "pert_grads", "perturb_params", "support_p"} <= set(members)
    assert "state_dict" not in members and "extra_repr" not in members  # torch's, not ours


def test_the_checker_finds_what_is_missing():
    def f(a: int, b: int = 0) -> int:
        """Adds.

        Args:
            a: first.
        """
        return a + b

    problems = callable_problems("f", f, f.__doc__)
    assert any("['b']" in p for p in problems)
    assert any("Raises" in p for p in problems) and any("Returns" in p for p in problems)
    assert callable_problems("g", f, None) == ["g: no docstring"]


def test_every_public_name_documents_its_arguments_returns_and_errors():
    problems = docstring_problems()
    assert not problems, "\n".join(problems)


def test_every_public_name_is_in_the_api_reference():
    api = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.rst"))
    listed = set(re.findall(r"^\s+([A-Za-z_][\w.]*)\s*$", api, re.M)) | set(re.findall(r"automodule:: ([\w.]+)", api))
    missing = [n for n in wandering.__all__ if n != "__version__" and n not in listed]
    missing += [m for m in PUBLIC_SUBMODULES if m not in listed]
    assert not missing, f"not in docs/api/*.rst: {missing}"


# ---------------------------------------------------------------- docstring examples
def docstring_examples() -> list[tuple[str, doctest.DocTest]]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for qualname, obj in public_objects().items():
        module = sys.modules[obj.__module__]
        globs = {**vars(module), "torch": torch, **{n: getattr(wandering, n) for n in wandering.__all__}}
        for t in finder.find(obj, qualname, module=module, globs=globs):
            if t.examples:
                tests.append((t.name, t))
    return tests


def test_docstring_examples_exist():
    names = [name for name, _ in docstring_examples()]
    assert any("bump_sum" in n for n in names) and any("BumpFcn" in n for n in names)


@pytest.mark.parametrize("name,test", docstring_examples(), ids=lambda v: v if isinstance(v, str) else "")
def test_docstring_example_runs(name, test):
    torch.manual_seed(0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=lambda text: pytest.fail(f"{name}:\n{text}"))
    assert runner.failures == 0


# ---------------------------------------------------------------- the site builds
def _sphinx_missing() -> str | None:
    for mod in ("sphinx", "furo", "sphinx_gallery", "myst_parser"):
        try:
            importlib.import_module(mod)
        except ImportError:
            return f"{mod} is not installed (pip install -e '.[docs]')"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_sphinx_missing() is not None, reason=str(_sphinx_missing()))
def test_the_site_builds_without_warnings(tmp_path):
    # Build a copy, so the build writes nothing into the checkout (the gallery and the API
    # pages are generated next to their sources).
    shutil.copytree(DOCS, tmp_path / "docs", ignore=shutil.ignore_patterns("_build", "auto_examples", "generated"))
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env.setdefault("MPLBACKEND", "agg")
    start = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", "docs/_build/html"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    seconds = time.perf_counter() - start
    assert r.returncode == 0, f"sphinx failed after {seconds:.0f} s:\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}"
    html = tmp_path / "docs" / "_build" / "html"
    for page in ("index.html", "api/index.html", "auto_examples/index.html", "benchmarks.html"):
        assert (html / page).is_file(), page
    assert list((html / "_images").glob("sphx_glr_plot_*.png")), "the gallery made no pictures"
    print(f"docs built in {seconds:.0f} s")
