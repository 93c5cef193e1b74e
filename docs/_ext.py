"""This site's one small Sphinx extension.

``.. wandering-scripts::`` lists every script in ``examples/`` that is not a gallery
example (``plot_*.py``): its first docstring line as the title, then the whole file.
These are the longer experiments and benchmarks-like examples; the build does not run
them (the test suite runs their quick modes), so a new script appears here by itself.
"""

from __future__ import annotations

import ast
import pathlib
import re

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _title(path: pathlib.Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    first = doc.strip().splitlines()[0].strip() if doc.strip() else path.stem
    return first.rstrip(".")


class WanderingScripts(SphinxDirective):
    """Every ``examples/*.py`` except ``plot_*.py``, titled and shown in full."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        scripts = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("plot_"))
        lines: list[str] = []
        for path in scripts:
            self.env.note_dependency(str(path))
            title = f"``examples/{path.name}``: {_title(path)}"
            rel = path.relative_to(EXAMPLES.parent).as_posix()
            lines += [
                title,
                "-" * len(title),
                "",
                f"Run it with ``python examples/{path.name}``.",
                "",
                f".. literalinclude:: /../{rel}",
                "   :language: python",
                "",
            ]
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source="examples/"), node)
        return node.children


# Members a wandering class defines for torch's machinery rather than for users.
_HIDDEN = {"extra_repr"}


def skip_foreign_member(app, what, name, obj, skip, options):
    """Documents a class's own members and those it inherits from wandering's private
    bases, never torch.nn.Module's or scikit-learn's hundreds (their docstrings are theirs)."""
    if what not in ("class", "exception"):
        return None
    if name in _HIDDEN:
        return True
    target = obj.fget if isinstance(obj, property) else obj
    module = getattr(target, "__module__", None) or ""
    if callable(target) or isinstance(obj, property):
        if not module.startswith("wandering"):
            return True
    return None


# |w| and |m| in the docstrings mean absolute values, not reStructuredText substitutions.
_ABS = re.compile(r"(?<![\\|`])\|([^|\s`]|[^|\s`][^|`]*?[^|\s`])\|(?![|_`])")
_LITERAL = re.compile(r"(``.*?``)")


def escape_absolute_values(app, what, name, obj, options, lines):
    """Writes ``|x|`` outside literals and doctest lines as ``\\|x\\|``, so docstrings can keep
    the plain-text notation for absolute values."""
    for i, line in enumerate(lines):
        if line.lstrip().startswith((">>>", "...")) or "|" not in line:
            continue
        parts = _LITERAL.split(line)
        lines[i] = "".join(p if p.startswith("``") else _ABS.sub(r"\\|\1\\|", p) for p in parts)


def setup(app):
    app.add_directive("wandering-scripts", WanderingScripts)
    app.connect("autodoc-skip-member", skip_foreign_member)
    app.connect("autodoc-process-docstring", escape_absolute_values)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
