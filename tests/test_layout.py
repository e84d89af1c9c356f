"""The library reads as the pipeline: one package per stage, imports only down the pipeline order, no import cycles,
no private name used across modules, thin job entrypoints, modules of a readable size (docs/architecture.md)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
# Pipeline order: a package may import its own modules and those of packages before it. `demo` (the local default's
# world and models) sits beside the stages: only `job` may import it.
ORDER = ["common", "pool", "verify", "grade", "sample", "teach", "sft", "evaluate", "demo", "job"]
MAX_LINES = 400
LONG_FILE_NOTE = "Why this file is long"


def library(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the `adaptcot` package under `root`."""
    out = {}
    for path in sorted((root / "adaptcot").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__main__" else None  # adaptcot/__init__.py: no stage


def imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported adaptcot module, names taken from it, line) for every import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "adaptcot"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "adaptcot":
            names = [a.name for a in node.names]
            found += [(f"{node.module}.{n}", [], node.lineno) for n in names if f"{node.module}.{n}" in modules]
            found.append((node.module, [n for n in names if f"{node.module}.{n}" not in modules], node.lineno))
    return found


def upward_imports(modules: dict[str, Path]) -> list[str]:
    found = []
    for module, path in modules.items():
        own = package_of(module)
        for target, _, line in imports(path, modules):
            theirs = package_of(target)
            if own is None or theirs is None or own == theirs:
                continue
            if ORDER.index(theirs) > ORDER.index(own) or (theirs == "demo" and own != "job"):
                found.append(f"{module}:{line} ({own}) imports {target} ({theirs})")
    return found


def import_cycles(modules: dict[str, Path]) -> list[str]:
    graph = {m: {t for t, _, _ in imports(p, modules) if t in modules and t != m and modules[t].name != "__init__.py"}
             for m, p in modules.items()}
    state, cycles = {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def private_uses(modules: dict[str, Path]) -> list[str]:
    found = []
    for module, path in modules.items():
        aliases = set()
        for target, names, line in imports(path, modules):
            found += [f"{module}:{line} imports {target}.{n}" for n in names if n.startswith("_") and n[1] != "_"]
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("adaptcot"):
                aliases |= {a.asname or a.name for a in node.names if f"{node.module}.{a.name}" in modules}
            elif isinstance(node, ast.Import):
                aliases |= {a.asname for a in node.names if a.asname and a.name in modules}
        found += [f"{module}:{node.lineno} uses {node.value.id}.{node.attr}" for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                  and node.attr.startswith("_") and not node.attr.startswith("__")]
    return found


MODULES = library(ROOT)


def test_every_module_lives_in_a_stage_package():
    loose = [m for m in MODULES if package_of(m) is None and m not in ("adaptcot", "adaptcot.__main__")]
    assert not loose, f"modules outside the stage packages {ORDER}: {loose}"
    assert {package_of(m) for m in MODULES} - {None} == set(ORDER)


def test_imports_only_point_down_the_pipeline():
    assert not (found := upward_imports(MODULES)), "imports against the pipeline order:\n" + "\n".join(found)


def test_no_import_cycles():
    assert not (found := import_cycles(MODULES)), "import cycles (lazy imports too):\n" + "\n".join(found)


def test_no_private_name_is_used_across_modules():
    assert not (found := private_uses(MODULES)), "private names used from another module:\n" + "\n".join(found)


def test_the_checks_find_what_they_look_for(tmp_path):
    """A made-up library with one upward import, one cycle and one private name: each check finds its own."""
    files = {"grade/bank.py": "def _read(): pass\n",
             "grade/levels.py": "from adaptcot.job.config import X\nfrom adaptcot.grade import bank\n",
             "job/config.py": "def f():\n    from adaptcot.job import stages\n",
             "job/stages.py": "from adaptcot.job.config import f\nfrom adaptcot.grade import bank\nbank._read()\n"}
    for name, text in files.items():
        (tmp_path / "adaptcot" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "adaptcot" / name).write_text(text)
    fake = library(tmp_path)
    assert upward_imports(fake) == ["adaptcot.grade.levels:1 (grade) imports adaptcot.job.config (job)"]
    assert import_cycles(fake) == ["adaptcot.job.config -> adaptcot.job.stages -> adaptcot.job.config"]
    assert private_uses(fake) == ["adaptcot.job.stages:3 uses bank._read"]


@pytest.mark.parametrize("module", sorted(MODULES), ids=str)
def test_modules_stay_readable_in_size(module):
    path = MODULES[module]
    lines = len(path.read_text().splitlines())
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert lines <= MAX_LINES or LONG_FILE_NOTE in doc, \
        f"{path.relative_to(ROOT)} has {lines} lines: split it, or say in its docstring '{LONG_FILE_NOTE}: ...'"


ENTRYPOINTS = sorted(p for p in (ROOT / "ray_jobs").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", ENTRYPOINTS, ids=lambda p: p.name)
def test_job_entrypoints_are_thin_scripts_over_adaptcot_job(path):
    tree = ast.parse(path.read_text())
    doc = ast.get_docstring(tree) or ""
    assert f"ray job submit --working-dir . -- python ray_jobs/{path.name}" in doc
    targets = [n.module if isinstance(n, ast.ImportFrom) else a.name for n in ast.walk(tree)
               if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names]
    assert [t for t in targets if t.startswith("adaptcot")] and \
        all(t.startswith("adaptcot.job") for t in targets if t != "sys"), targets
    code_lines = len(path.read_text().splitlines()) - len(doc.splitlines())
    assert code_lines <= 12, f"{path.name}: {code_lines} lines of code besides the docstring"


def test_the_library_never_imports_its_entrypoints():
    offenders = [f"{m}:{n.lineno}" for m, p in MODULES.items() for n in ast.walk(ast.parse(p.read_text()))
                 if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "ray_jobs"
                 or isinstance(n, ast.Import) and any(a.name.split(".")[0] == "ray_jobs" for a in n.names)]
    assert not offenders
