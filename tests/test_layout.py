"""The layout's rules (../shared/DESIGN.md, "Layout"), checked on the source itself.

Every import counts, at the top of a module or inside a function (a lazy import is still a
dependency), and so do imports under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from provision import errors
from provision.activation import ActivationRejected

PACKAGE = Path(__file__).resolve().parent.parent / "provision"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """Every module PATH imports, as written (absolute names)."""
    found: set[str] = set()
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def third_party_users(prefixes: tuple[str, ...]) -> set[str]:
    return {
        name
        for name, path in modules().items()
        if any(i == p or i.startswith(p + ".") for i in imports_of(path) for p in prefixes)
    }


def inside(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_nothing_outside_cli_imports_click() -> None:
    assert {m for m in third_party_users(("click",)) if not inside(m, "provision.cli")} == set()


def test_nothing_outside_web_imports_flask_or_werkzeug() -> None:
    users = third_party_users(("flask", "werkzeug", "limits", "flask_wtf", "flask_login"))
    assert {m for m in users if not inside(m, "provision.web")} == set()


def test_nothing_outside_the_registry_and_migrations_imports_sqlalchemy() -> None:
    users = third_party_users(("sqlalchemy", "alembic"))
    allowed = ("provision.registry", "provision.migrations")
    assert {m for m in users if not inside(m, *allowed)} == set()


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = {i for i in imports_of(path) if i in known and i != name}
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_there_are_no_import_cycles_within_provision() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    # So that the test above can fail: a -> b -> c -> a is one component.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# The machine-readable `type` of each error in `--json` output: scripts depend on these.
ERROR_TYPES = {
    errors.ProvisionError: "provision",
    errors.ConfigError: "config",
    errors.KeyringError: "keyring",
    errors.ManifestError: "manifest",
    errors.TemplateError: "template",
    errors.BatchError: "batch",
    errors.ConflictError: "conflict",
    errors.DeviceError: "device",
    errors.RecallError: "recall",
    errors.RegistryError: "registry",
    errors.WorkerError: "worker",
    errors.AlertError: "alert",
    errors.StaffError: "staff",
    errors.NotifyFailed: "notify_failed",
    errors.CheckpointError: "checkpoint",
    errors.JobError: "job",
    errors.UsageError: "usage",
    errors.RowsRejected: "rows_rejected",
    errors.ChecksFailed: "checks_failed",
    errors.FailOnHit: "fail_on",
    ActivationRejected: "activation_rejected",
}


@pytest.mark.parametrize("cls", list(ERROR_TYPES), ids=lambda c: c.__name__)
def test_each_error_carries_its_json_type_and_exit_code(cls: type[errors.ProvisionError]) -> None:
    assert cls.kind == ERROR_TYPES[cls]
    assert "kind" in vars(cls), f"{cls.__name__} inherits its kind: renaming would not show"
    codes = {errors.FailOnHit: 3, errors.UsageError: 2, errors.RowsRejected: 4}
    assert cls.exit_code == codes.get(cls, 1)


def test_every_error_class_is_pinned() -> None:
    def subclasses(c: type) -> set[type]:
        return {c} | {s for sub in c.__subclasses__() for s in subclasses(sub)}

    provision_errors = {
        c for c in subclasses(errors.ProvisionError) if c.__module__.startswith("provision")
    }
    assert provision_errors == set(ERROR_TYPES)


def test_no_command_calls_sys_exit_for_an_error() -> None:
    for name, path in modules().items():
        if inside(name, "provision.cli"):
            assert "sys.exit(" not in path.read_text(encoding="utf-8"), name


def test_no_state_literal_remains_outside_the_enum_definitions() -> None:
    from provision.states import DeviceStatus, KeyState, PairingResult, Reason

    values = {str(m) for e in (DeviceStatus, KeyState, PairingResult, Reason) for m in e}
    found = []
    for name, path in modules().items():
        if name == "provision.states" or inside(name, "provision.migrations"):
            continue  # the definitions; migrations are frozen history
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # A JSON key that happens to spell a state ("rejected": 3 rows, or row["rejected"]) is a
        # name, not a state.
        keys = {id(k) for n in ast.walk(tree) if isinstance(n, ast.Dict) for k in n.keys}
        keys |= {id(n.slice) for n in ast.walk(tree) if isinstance(n, ast.Subscript)}  # row["..."]
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in values and id(node) not in keys:
                found.append(f"{name}:{node.lineno}: {node.value!r}")
    templates = PACKAGE / "web" / "templates"
    for page in sorted(templates.glob("*.html")):
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
            found += [f"{page.name}:{number}: {v!r}" for v in values if f'"{v}"' in line]
    assert found == []
