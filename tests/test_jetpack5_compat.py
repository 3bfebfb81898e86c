"""JetPack 5.1 runs Python 3.8 (TensorRT 8.5.2, CUDA 11.4): what runs on a Jetson must too.

That is ``admpff.runtime`` (embedders, TensorRT backend, tracker, reid) and the engine builder
(``admpff.export.engine_builder``, which imports only the runtime and onnx).  Checked statically: vermin
(a maintained minimum-version checker) for library calls and syntax, plus an AST pass for what vermin
does not see: PEP 604 unions (``int | None``) and PEP 585 generics (``list[int]``) *evaluated at run
time* (isinstance, aliases, defaults).  Inside annotations both are fine under
``from __future__ import annotations``, which every such module must then have.
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JETSON_FILES = sorted((ROOT / "runtime").glob("*.py")) + [ROOT / "export" / "__init__.py",
                                                          ROOT / "export" / "engine_builder.py"]
BUILTIN_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}
TYPE_NAMES = BUILTIN_GENERICS | {"int", "float", "str", "bytes", "bool", "None", "object", "Path", "Callable",
                                 "Sequence", "Mapping", "Any", "np", "os"}


def _vermin():
    exe = shutil.which("vermin", path=str(Path(sys.executable).parent)) or shutil.which("vermin")
    if exe is None:
        pytest.skip("vermin is not installed (pip install -e '.[dev]')")
    return exe


def test_vermin_says_the_jetson_code_runs_on_python_3_8():
    proc = subprocess.run([_vermin(), "--target=3.8-", "--no-tips", "--violations", "--no-make-paths-absolute",
                           *map(str, JETSON_FILES)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _annotation_nodes(tree: ast.AST) -> set[int]:
    inside = set()
    for node in ast.walk(tree):
        anns = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            anns = [a.annotation for a in args.args + args.kwonlyargs + args.posonlyargs] + [node.returns]
            anns += [a.annotation for a in (args.vararg, args.kwarg) if a is not None]
        elif isinstance(node, ast.AnnAssign):
            anns = [node.annotation]
        for ann in anns:
            if ann is not None:
                inside.update(id(n) for n in ast.walk(ann))
    return inside


def _is_type_like(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and node.value is None:
        return True
    if isinstance(node, ast.Name):
        return node.id in TYPE_NAMES or node.id[:1].isupper()
    if isinstance(node, ast.Attribute):
        return node.attr[:1].isupper() or node.attr in ("ndarray", "PathLike")
    if isinstance(node, ast.Subscript):
        return _is_type_like(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _is_type_like(node.left) and _is_type_like(node.right)
    return False


def runtime_type_expressions(path: Path) -> list[str]:
    """Python >= 3.9/3.10 type expressions that are evaluated when the module runs."""
    tree = ast.parse(path.read_text(), str(path))
    in_annotation = _annotation_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in in_annotation:
            continue
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and (
                _is_type_like(node.left) and _is_type_like(node.right)
                and any(isinstance(side, (ast.Constant, ast.Subscript)) or getattr(side, "id", "") in TYPE_NAMES
                        for side in (node.left, node.right))):
            found.append(f"{path.name}:{node.lineno}: PEP 604 union evaluated at run time (3.10+)")
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in BUILTIN_GENERICS:
            found.append(f"{path.name}:{node.lineno}: {node.value.id}[...] evaluated at run time (3.9+)")
    return sorted(found, key=lambda p: int(p.split(":")[1]))


def test_no_new_style_type_expressions_run_outside_annotations():
    problems = [p for f in JETSON_FILES for p in runtime_type_expressions(f)]
    assert problems == [], "\n".join(problems)


def test_the_checker_catches_what_vermin_misses(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from __future__ import annotations\n"
                      "Alias = int | None\n"
                      "def f(x: int | None) -> dict[str, int]:\n"
                      "    return isinstance(x, int | str)\n"
                      "Table = dict[str, int]\n"
                      "flags = 1 | 2\n")
    assert [p.split(": ", 1)[0] for p in runtime_type_expressions(sample)] == [
        "sample.py:2", "sample.py:4", "sample.py:5"]


def test_modules_using_new_style_annotations_defer_them():
    """``x: int | None`` only works on 3.8 when annotations are not evaluated (PEP 563)."""
    missing = []
    for f in JETSON_FILES:
        text = f.read_text()
        tree = ast.parse(text)
        annotations = _annotation_nodes(tree)
        uses_new = any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) or
                       (isinstance(n, ast.Subscript) and getattr(n.value, "id", "") in BUILTIN_GENERICS)
                       for n in ast.walk(tree) if id(n) in annotations)
        if uses_new and "from __future__ import annotations" not in text:
            missing.append(f.name)
    assert missing == []


def test_jetpack5_gets_a_cuda_python_it_can_install():
    """JetPack 5 has CUDA 11.4: cuda-python 12+ needs a CUDA 12 driver, so 11.8.x must be allowed and named."""
    import tomllib

    from packaging.requirements import Requirement

    from admpff.runtime.tensorrt_backend import CUDA_PYTHON_MISSING

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    cuda = next(Requirement(r) for r in extras["tensorrt"] if r.startswith("cuda-python"))
    assert cuda.specifier.contains("11.8.7") and cuda.specifier.contains("12.9.0")
    for jetpack, pin in (("JetPack 5", "11.8"), ("JetPack 6", ">=12,<13"), ("JetPack 7", ">=13")):
        assert jetpack in CUDA_PYTHON_MISSING and pin in CUDA_PYTHON_MISSING
    readme = (ROOT / "README.md").read_text()
    assert "cuda-python>=11.8,<12" in readme and "--ignore-requires-python" in readme
