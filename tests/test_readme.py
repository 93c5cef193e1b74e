"""The README is the front page: at most 8 KB, the two set-up commands first (the second is
the one .ci/run runs), then what the library is for, the demo picture, one runnable loop,
one table of headline figures and links into docs/. Its Python block runs (with fewer
steps) and learns; its shell commands are current; its figures are the docs' figures;
its links resolve."""

import pathlib
import re

import pytest
import torch
from test_docs_pages import check_command

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_BYTES = 8192
DEMO_COMMAND = 'pip install torch==2.13.0 -e ".[cli]" && wandering demo'
TEST_COMMAND = 'pip install torch==2.13.0 -e ".[test,gpu]" && python -m pytest'

# (text in the block, replacement): fewer steps; nothing else changes.
FEWER_STEPS = [("range(500)", "range(40)")]


def text() -> str:
    return README.read_text(encoding="utf-8")


def fenced_blocks(source: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", source, re.S | re.M)


def python_blocks() -> list[str]:
    return [body for lang, body in fenced_blocks(text()) if lang == "python"]


def figures_table(source: str) -> str:
    section = source.split("## Figures", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


def docs_text() -> str:
    return "\n".join(
        p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").rglob("*.md")) if "_build" not in p.parts
    )


# ---------------------------------------------------------------- shape of the page
def test_readme_is_at_most_8_kb():
    size = README.stat().st_size
    assert size <= MAX_BYTES, f"README.md must be at most {MAX_BYTES} bytes, but is {size}: move detail into docs/"


def test_readme_starts_with_the_two_commands():
    source = text()
    assert source.startswith(f"# wandering\n\n```bash\n{DEMO_COMMAND}\n```\n\n```bash\n{TEST_COMMAND}\n```\n"), source[
        :300
    ]


def test_ci_runs_the_readmes_exact_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    second = fenced_blocks(text())[1]
    assert second == ("bash", TEST_COMMAND + "\n")
    assert TEST_COMMAND in ci.splitlines(), ".ci/run must run the README's test command verbatim, on a line of its own"


def test_readme_parts_come_in_order():
    source = text()
    marks = [
        source.index(TEST_COMMAND),
        source.index("## What it is for"),
        source.index("![The demo"),
        source.index("```python"),
        source.index("## Figures"),
        source.index("python -m sphinx -W --keep-going -b html docs docs/_build/html"),
    ]
    assert marks == sorted(marks), marks
    assert len(python_blocks()) == 1 and "range(500)" in python_blocks()[0]
    table = figures_table(source)
    assert 4 <= len(table.splitlines()) - 2 <= 8, "one small table of headline figures"
    assert source.count("\n|---") == 1, "one table only"


def test_readme_links_and_picture_exist():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text())
    assert any(link.endswith(".png") for link in links)
    assert sum(link.startswith("docs/") and link.endswith(".md") for link in links) >= 8
    missing = [link for link in links if not link.startswith("http") and not (ROOT / link).is_file()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_readme_figures_are_the_docs_figures():
    # Every measured number of the table is quoted verbatim from a docs page, where its
    # conditions are; a figure updated in docs/ but not here (or made up here) fails.
    table = figures_table(text())
    numbers = re.findall(r"\d+\.\d+(?: ulp| s)?|\d+(?:x| ms)", table)
    assert len(numbers) >= 12, numbers
    docs = docs_text()
    missing = [n for n in numbers if n not in docs]
    assert not missing, f"README figures not found in docs/*.md: {missing}"


def test_readme_and_docs_readme_shell_commands_are_current():
    commands = []
    for page in (README, ROOT / "docs" / "README.md"):
        for lang, body in fenced_blocks(page.read_text(encoding="utf-8")):
            if lang == "bash":
                for line in body.splitlines():
                    line = line.split(" #")[0].strip()
                    commands += [c.strip() for c in line.split("&&") if c.strip() and not line.startswith("#")]
    assert DEMO_COMMAND.split(" && ")[1] in commands and "python -m pytest" in commands
    problems = [f"{cmd}: {why}" for cmd in commands if (why := check_command(cmd))]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- the code runs
def test_every_readme_block_runs_and_learns(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    for i, block in enumerate(python_blocks()):
        for old, new in FEWER_STEPS:
            block = block.replace(old, new)
        try:
            exec(compile(block, f"{README}:block{i}", "exec"), namespace)
        except Exception as exc:  # name the block in the failure
            pytest.fail(f"README python block {i} failed: {exc!r}\n{block}")
    loss0 = (namespace["y"] ** 2).mean().sqrt().item()  # the fit starts from m = 0
    assert namespace["loss"].sqrt().item() < 0.7 * loss0
    assert "rmse" in capsys.readouterr().out
    assert not torch.distributed.is_initialized()
