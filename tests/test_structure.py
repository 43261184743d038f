"""The package's shape stays as docs/architecture.md describes it (issue 25): no module over 400
lines, no function over 80, no module importing another one's private names, no re-export shim,
and a README that stays a manual (at most 300 lines)."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "fedmix_jax"
MODULES = sorted(PACKAGE.rglob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_the_package_is_found():
    assert len(MODULES) > 50 and (PACKAGE / "round.py") in MODULES


def test_no_module_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in MODULES
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_readme_is_at_most_300_lines():
    readme = PACKAGE.parent / "README.md"
    assert len(readme.read_text().splitlines()) <= 300


def test_no_name_imported_only_to_be_re_exported():
    """A ``from ... import`` marked ``# noqa: F401`` (imported, never used) is a re-export shim:
    each name is imported from the module that defines it (the package's ``__init__`` is the one
    place that gathers names; a bare ``import m`` for its side effect is not a shim)."""
    shims = [f"{p.relative_to(PACKAGE)}:{i}" for p in MODULES if p.name != "__init__.py"
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if line.lstrip().startswith("from ") and "noqa: F401" in line]
    assert not shims, shims


def test_no_function_over_80_lines():
    long = []
    for p in MODULES:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno - node.lineno + 1 > 80:
                    long.append(f"{p.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert not long, long


def _fedmix_module_aliases(tree) -> set:
    """Local names bound to fedmix_jax modules (``from fedmix_jax.x import y`` may bind a
    module; any such name counts)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedmix"):
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.asname or a.name.split(".")[0] for a in node.names
                      if a.name.startswith("fedmix")}
    return names


def test_no_import_of_another_modules_private_name():
    found = []
    for p in MODULES:
        tree = ast.parse(p.read_text())
        aliases = _fedmix_module_aliases(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(
                    node.value, ast.Name) and node.value.id in aliases:
                found.append(f"{p.relative_to(PACKAGE)}:{node.lineno} "
                             f"{node.value.id}.{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module and (
                    node.module.startswith("fedmix_jax") or node.level):
                parts = node.module.split(".")
                found += [f"{p.relative_to(PACKAGE)}:{node.lineno} {node.module}.{a.name}"
                          for a in node.names if _private(a.name)]
                if any(_private(x) for x in parts):
                    found.append(f"{p.relative_to(PACKAGE)}:{node.lineno} {node.module}")
    assert not found, found


def _api_rows() -> dict:
    """``{module: names}`` of docs/api.md's table (the backticked names of each row)."""
    import re

    rows = {}
    for line in (PACKAGE.parent / "docs" / "api.md").read_text().splitlines():
        m = re.match(r"\| (`fedmix_jax[^|]*) \| (.*) \|$", line)
        if m:
            for module in re.findall(r"`(fedmix_jax[\w.]*)`", m.group(1)):
                rows[module] = set(re.findall(r"`([A-Za-z_]\w*)", m.group(2)))
    return rows


def test_a_modules_all_is_what_docs_api_lists_for_it():
    """``__all__`` says what is public: outside the packages' ``__init__``, a module has one only
    if docs/api.md has a row for it, and every name in it is in that row and defined there."""
    rows, wrong = _api_rows(), []
    assert "fedmix_jax.losses" in rows and "dice_loss" in rows["fedmix_jax.losses"]
    for p in MODULES:
        if p.name == "__init__.py":
            continue
        module = ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        tree = ast.parse(p.read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__"
                                                    for t in node.targets):
                names = ast.literal_eval(node.value)
                wrong += [f"{module}.{n}" for n in names if n not in rows.get(module, ())]
                defined = {getattr(n, "name", None) for n in tree.body} | {
                    t.id for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                    for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                    if isinstance(t, ast.Name)} | {
                    a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom)
                    for a in n.names}
                wrong += [f"{module}.{n} (not defined)" for n in names if n not in defined]
    assert not wrong, wrong
