"""Every code block of the documentation pages (docs/**/*.md) is checked, so a stale
example fails: the Python blocks of each page run top to bottom in one namespace, as a
reader would paste them; the shell blocks' ``wandering`` commands parse with the
command's own parser, the scripts they run exist and take the options given, and the
extras they install exist."""

from __future__ import annotations

import pathlib
import re
import shlex

import pytest
import torch
from _spawn import free_port

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GENERATED = ("_build", "auto_examples", "generated")
# (page, text in a block, replacement): fewer steps, to stay fast; nothing else changes.
FEWER_STEPS = [
    ("guide/oriented.md", "range(150)", "range(60)"),
    ("guide/multi_output.md", "range(100)", "range(40)"),
    ("getting_started.md", "range(300)", "range(100)"),
]


def pages() -> list[pathlib.Path]:
    return sorted(
        p
        for p in DOCS.rglob("*.md")
        if p.name != "README.md" and not any(part in GENERATED for part in p.relative_to(DOCS).parts)
    )


def blocks(page: pathlib.Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M)


def _name(page: pathlib.Path) -> str:
    return page.relative_to(DOCS).as_posix()


PYTHON_PAGES = [p for p in pages() if blocks(p, "python")]


def test_the_pages_have_the_blocks_this_test_expects():
    names = {_name(p) for p in PYTHON_PAGES}
    for name, old, _ in FEWER_STEPS:
        assert old in "".join(blocks(DOCS / name, "python")), (name, old)
    assert {"getting_started.md", "guide/modules.md", "guide/training.md", "guide/engines.md"} <= names
    assert sum(len(blocks(p, "python")) for p in PYTHON_PAGES) >= 25
    assert sum(len(blocks(p, "bash")) for p in pages()) >= 10


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=_name)
def test_every_python_block_of_the_page_runs_in_order(page, monkeypatch, tmp_path, capsys):
    # The DDP block is a torchrun script: give it a one-process world on this machine.
    for key, value in dict(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
    ).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = {"__name__": f"__docs_{page.stem}__"}
    for i, block in enumerate(blocks(page, "python")):
        for name, old, new in FEWER_STEPS:
            if name == _name(page):
                block = block.replace(old, new)
        try:
            exec(compile(block, f"{page}:python-block-{i}", "exec"), namespace)
        except Exception as exc:  # name the block in the failure
            pytest.fail(f"{_name(page)} python block {i} failed: {exc!r}\n{block}")
    assert not torch.distributed.is_initialized()
    out = capsys.readouterr().out
    if page.name == "getting_started.md":  # the first loop learns; the regressor fits
        loss0 = (namespace["y"] ** 2).mean().sqrt().item()
        assert namespace["loss"].sqrt().item() < 0.5 * loss0
        assert "held-out R^2 0.9" in out
    if page.name == "multi_output.md":  # the loop learns all outputs at once
        assert namespace["model"](namespace["x"]).shape == (20_000, 3)
        assert namespace["loss"].item() < 0.5 * (namespace["targets"] ** 2).mean().item()
        assert "multi-output rmse" in out


# ---------------------------------------------------------------- shell blocks
def shell_commands() -> list[tuple[str, str]]:
    """(page, command) for every command line of every bash block (comments dropped)."""
    found = []
    for page in pages():
        for block in blocks(page, "bash"):
            for line in block.splitlines():
                line = line.split(" #")[0].strip()
                if line and not line.startswith("#"):
                    for command in line.split("&&"):
                        found.append((_name(page), command.strip()))
    return found


def _extras() -> set[str]:
    """The extras of pyproject.toml's [project.optional-dependencies] (read without tomllib,
    which Python 3.10 lacks)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+)\s*=", section, re.M))


def check_command(command: str) -> str | None:
    """What is wrong with one documented shell command, or None."""
    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # TRITON_INTERPRET=1 python ...
        words = words[1:]
    if not words:
        return None
    if words[0] == "pip":
        for spec in words:
            match = re.fullmatch(r"(?:-e\s*)?\.\[([\w,-]+)\]", spec)
            if match:
                unknown = set(match.group(1).split(",")) - _extras()
                if unknown:
                    return f"pyproject.toml has no extra {sorted(unknown)}"
        return None
    if words[:3] == ["python", "-m", "wandering"]:
        words = ["wandering", *words[3:]]
    if words[0] == "wandering":
        from wandering.cli import CliError, _build_parser

        try:
            _build_parser().parse_args(words[1:])
        except (CliError, SystemExit) as exc:
            return f"the parser refuses it: {exc}"
        return None
    if words[:2] == ["python", "-m"] and words[2] in ("pytest", "sphinx"):
        return None
    if words[0] == "python" and words[1].endswith(".py"):
        script = ROOT / words[1]
        if not script.is_file():
            return f"no such script {words[1]}"
        source = script.read_text(encoding="utf-8")
        missing = [w.split("=")[0] for w in words[2:] if w.startswith("--") and f'"{w.split("=")[0]}"' not in source]
        return f"{words[1]} has no option {missing}" if missing else None
    if words[0] == "torchrun":  # a launch line for a user's train.py
        return None
    return f"no check for this command: {command!r}"


def test_every_shell_command_of_the_docs_is_current():
    problems = [f"{page}: {cmd}: {why}" for page, cmd in shell_commands() if (why := check_command(cmd))]
    assert not problems, "\n".join(problems)


def test_the_shell_check_catches_stale_commands():
    assert check_command("wandering fit data.csv --out run1 --bumps 64") is None
    assert "refuses" in check_command("wandering fit data.csv --out run1 --no-such-option")
    assert "no extra" in check_command('pip install -e ".[no_such_extra]"')
    assert "no option" in check_command("python benchmarks/bench_engine.py --no-such-option")
    assert "no such script" in check_command("python benchmarks/no_such_script.py")


def test_getting_started_gives_the_readmes_two_commands():
    readme = re.findall(r"^```bash\n(.*?)^```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S | re.M)
    assert blocks(DOCS / "getting_started.md", "bash")[:2] == readme[:2]
