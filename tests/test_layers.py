"""
The house's one rule, checked on the code: a request flows one way, so an
import only ever runs to the same package or to a lower layer (see
ARCHITECTURE.md), and no module imports another inside a function to dodge
that.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import llmproxy

ROOT = Path(llmproxy.__file__).parent

#: Each top-level module or package of llmproxy and its layer, from the
#: leaves (0) up.  routing, adapt and translate are pure and know nothing
#: of each other or of the connectors, so they share a layer with backends.
LAYERS = {
    "llmproxy": 0, "errors": 0, "sse": 0, "dialects": 0, "config": 0,
    "routing": 1, "adapt": 1, "translate": 1, "backends": 1,
    "state": 1.5,
    "exchange": 2,
    "frontends": 3,
    "capture": 4,
    "startup": 4, "logs": 4, "workers": 5, "service": 5,
    "tap": 6, "__main__": 7,
    "testing": 8,
}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _module(path: Path) -> str:
    parts = ("llmproxy",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """
    The llmproxy modules C{tree} imports, each with whether the import sits
    inside a function.
    """
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [child.module]
            elif isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            else:
                names = []
            found.extend((n, inner) for n in names if n.split(".")[0] == "llmproxy")
            visit(child, inner)

    visit(tree, False)
    return found


class LayerTests(SynchronousTestCase):
    def test_every_unit_has_a_layer(self) -> None:
        units = {_unit(_module(p)) for p in ROOT.rglob("*.py")}
        self.assertEqual(units - set(LAYERS), set())

    def test_imports_run_down(self) -> None:
        wrong = []
        for path in sorted(ROOT.rglob("*.py")):
            here = _module(path)
            for target, nested in _imports(ast.parse(path.read_text(encoding="utf-8"))):
                a, b = _unit(here), _unit(target)
                if nested:
                    wrong.append(f"{here} imports {target} inside a function")
                elif a != b and LAYERS[b] >= LAYERS[a] and b != "llmproxy":
                    wrong.append(f"{here} (layer {LAYERS[a]}) imports {target} "
                                 f"(layer {LAYERS[b]})")
        self.assertEqual(wrong, [])

    def test_the_rule_is_checked(self) -> None:
        """
        The check finds an import that runs up, and one hidden in a function.
        """
        tree = ast.parse("from llmproxy.exchange import x\n"
                         "def f():\n    import llmproxy.frontends\n")
        self.assertEqual(_imports(tree), [("llmproxy.exchange", False),
                                          ("llmproxy.frontends", True)])
