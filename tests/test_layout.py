"""
The layout's rule, read from the code: the daemon, the client and the CA
tool never import each other; each may import the core (the modules
directly in L{secmsg}); the command line and L{secmsg.tap} sit on top and
nothing imports them; no import cycle anywhere; and no module or class
grows past the size at which it holds two jobs.

Imports are read with L{ast}, so the rule holds for code that is never run
in the tests as much as for code that is.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "secmsg"

WINGS = ("daemon", "client", "pki")
"""The programs' wings: each may import the core and itself."""

ON_TOP = ("cli", "tap")
"""What may import anything, and what nothing else may import."""

MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 300


@dataclass(frozen=True)
class Edge:
    """
    One import: C{importer} names C{imported}, at C{line} of C{path}.

    @ivar typing_only: the import is under C{if TYPE_CHECKING:}, so it
        never runs and cannot close a cycle; it still counts for the
        wings, since a wing that names another's types depends on it.
    """

    importer: str
    imported: str
    path: str
    line: int
    typing_only: bool

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported}"


def module_paths(package: Path = PACKAGE) -> dict[str, Path]:
    """
    Every module of the package, by dotted name.
    """
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def import_edges(modules: Mapping[str, Path]) -> list[Edge]:
    """
    Every import of one of C{modules} by another, wherever it is written
    (at the top, in a function, or for type checking only).
    """
    edges = []
    for importer, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        typing_lines = _typing_only_lines(tree)
        package = (
            importer if path.name == "__init__.py" else importer.rpartition(".")[0]
        )
        for node in ast.walk(tree):
            for imported in _imported(node, package, modules):
                edges.append(
                    Edge(
                        importer,
                        imported,
                        str(path.relative_to(ROOT)),
                        node.lineno,
                        node.lineno in typing_lines,
                    )
                )
    return edges


def _imported(
    node: ast.AST, package: str, modules: Mapping[str, Path]
) -> Iterable[str]:
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    if not isinstance(node, ast.ImportFrom):
        return set()
    module = _absolute(node, package)
    if module not in modules:
        return set()
    # "from secmsg import wire" imports the module secmsg.wire;
    # "from secmsg import __version__" imports the package itself.
    return {
        f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
        for alias in node.names
    }


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """
    The module a C{from} import names, a relative one resolved against the
    importer's C{package}.
    """
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def _typing_only_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or 0) + 1))
    return lines


def place(module: str) -> str:
    """
    Where a module lives: a wing's name, C{"cli"}, C{"tap"}, or C{"core"}
    for the modules directly in the package (and the package itself).
    C{secmsg.__main__} is the command line's, as C{python -m secmsg}.
    """
    parts = module.split(".")
    if module == "secmsg.__main__":
        return "cli"
    if len(parts) >= 2 and parts[1] in WINGS + ON_TOP:
        return parts[1]
    return "core"


def boundary_crossings(edges: Iterable[Edge]) -> list[Edge]:
    """
    The imports the rule forbids: the core importing any wing, a wing
    importing another, anything below importing what sits on top.
    """
    crossings = []
    for edge in edges:
        importer, imported = place(edge.importer), place(edge.imported)
        if importer == imported or imported == "core":
            continue
        if importer in ON_TOP and imported in WINGS:
            continue
        crossings.append(edge)
    return crossings


def cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """
    The import cycles among the imports that run, each as the modules
    around it; the same cycle is reported once.
    """
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if not edge.typing_only:
            graph.setdefault(edge.importer, set()).add(edge.imported)
    found: dict[frozenset[str], list[str]] = {}
    for start in sorted(graph):
        for cycle in _cycles_from(start, graph):
            found.setdefault(frozenset(cycle), cycle)
    return list(found.values())


def _cycles_from(start: str, graph: Mapping[str, set[str]]) -> list[list[str]]:
    cycles_found = []
    stack = [(start, [start])]
    seen = set()
    while stack:
        module, trail = stack.pop()
        for imported in sorted(graph.get(module, ())):
            if imported == start:
                cycles_found.append([*trail, start])
            elif imported not in seen and imported > start:
                seen.add(imported)
                stack.append((imported, [*trail, imported]))
    return cycles_found


def oversized(modules: Mapping[str, Path]) -> list[str]:
    """
    The modules over L{MAX_MODULE_LINES} lines and the classes over
    L{MAX_CLASS_LINES}, each named with its file.
    """
    found = []
    for path in modules.values():
        text = path.read_text()
        shown = path.relative_to(ROOT)
        if (count := len(text.splitlines())) > MAX_MODULE_LINES:
            found.append(f"{shown}: {count} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_CLASS_LINES:
                    found.append(f"{shown}: class {node.name}: {length} lines")
    return found


class LayoutTests(SynchronousTestCase):
    """
    The package as it is keeps the rule.
    """

    def setUp(self) -> None:
        self.modules = module_paths()
        self.edges = import_edges(self.modules)

    def test_the_edges_are_read(self) -> None:
        """
        The reader finds imports of each kind, so that an empty list of
        crossings means the rule holds, not that nothing was read.
        """
        pairs = {(edge.importer, edge.imported) for edge in self.edges}
        self.assertIn(("secmsg.tap", "secmsg.daemon.factory"), pairs)
        self.assertIn(("secmsg.cli.launch", "secmsg.cli.main"), pairs)
        self.assertIn(("secmsg.daemon.hub", "secmsg.wire"), pairs)

    def test_no_wing_imports_another_and_nothing_imports_upward(self) -> None:
        """
        The daemon, the client and the CA tool import only the core and
        themselves; the core imports no wing; only the command line
        imports the command line, and nothing imports L{secmsg.tap}.
        """
        crossings = boundary_crossings(self.edges)
        self.assertEqual([str(edge) for edge in crossings], [])

    def test_no_import_cycle(self) -> None:
        """
        No module imports, through others, a module that imports it.
        """
        self.assertEqual([" -> ".join(cycle) for cycle in cycles(self.edges)], [])

    def test_no_module_or_class_holds_two_jobs_by_its_size(self) -> None:
        """
        No module passes 600 lines and no class 300.
        """
        self.assertEqual(oversized(self.modules), [])

    def test_the_plugin_names_the_daemon_as_a_string(self) -> None:
        """
        Every twistd run scans the plugin, so it imports only ServiceMaker
        and names L{secmsg.tap} as a string.
        """
        plugin = ROOT / "twisted" / "plugins" / "secmsg_plugin.py"
        tree = ast.parse(plugin.read_text())
        imports = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
        ]
        self.assertEqual(
            [(node.module, [a.name for a in node.names]) for node in imports],
            [("twisted.application.service", ["ServiceMaker"])],
        )
        self.assertIn('"secmsg.tap"', plugin.read_text())


class RuleTests(SynchronousTestCase):
    """
    The checks fail on what breaks the rule, naming the file.
    """

    def edge(self, importer: str, imported: str, typing_only: bool = False) -> Edge:
        return Edge(importer, imported, "secmsg/x.py", 7, typing_only)

    def test_a_daemon_module_importing_the_client_is_a_crossing(self) -> None:
        """
        An import of L{secmsg.client} inside L{secmsg.daemon} is named
        with its file and line.
        """
        crossing = self.edge("secmsg.daemon.hub", "secmsg.client.protocol")
        self.assertEqual(
            [str(edge) for edge in boundary_crossings([crossing])],
            ["secmsg/x.py:7: secmsg.daemon.hub imports secmsg.client.protocol"],
        )

    def test_upward_imports_are_crossings(self) -> None:
        """
        The core importing a wing, a wing importing the command line, and
        anything importing L{secmsg.tap} all break the rule; the command
        line importing a wing does not.
        """
        edges = [
            self.edge("secmsg.wire", "secmsg.daemon.policy"),
            self.edge("secmsg.client.connect", "secmsg.cli.options"),
            self.edge("secmsg.cli.main", "secmsg.tap"),
            self.edge("secmsg.tap", "secmsg.cli.options"),
            self.edge("secmsg.pki.instance", "secmsg.daemon.policy", True),
            self.edge("secmsg.cli.main", "secmsg.client.connect"),
            self.edge("secmsg.tap", "secmsg.daemon.protocol"),
            self.edge("secmsg.daemon.tls", "secmsg.pem"),
        ]
        self.assertEqual(boundary_crossings(edges), edges[:5])

    def test_a_relative_import_is_read_as_the_module_it_names(self) -> None:
        """
        C{from ..client import protocol} inside the daemon is an import of
        L{secmsg.client.protocol}, and so a crossing.
        """
        node = ast.parse("from ..client import protocol").body[0]
        assert isinstance(node, ast.ImportFrom)
        modules = module_paths()
        self.assertEqual(
            _imported(node, "secmsg.daemon", modules), {"secmsg.client.protocol"}
        )
        node = ast.parse("from . import wire").body[0]
        assert isinstance(node, ast.ImportFrom)
        self.assertEqual(_imported(node, "secmsg", modules), {"secmsg.wire"})

    def test_a_cycle_is_found_once_with_its_modules(self) -> None:
        """
        A cycle through three modules is reported once, in order; one
        closed only by a type-checking import is no cycle.
        """
        edges = [
            self.edge("secmsg.cli.main", "secmsg.client.connect"),
            self.edge("secmsg.client.connect", "secmsg.cli.launch"),
            self.edge("secmsg.cli.launch", "secmsg.cli.main"),
            self.edge("secmsg.daemon.auth", "secmsg.daemon.interfaces"),
            self.edge("secmsg.daemon.interfaces", "secmsg.daemon.auth", True),
        ]
        self.assertEqual(
            cycles(edges),
            [
                [
                    "secmsg.cli.launch",
                    "secmsg.cli.main",
                    "secmsg.client.connect",
                    "secmsg.cli.launch",
                ]
            ],
        )
