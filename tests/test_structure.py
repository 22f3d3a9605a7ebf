"""The package's size limits: no file over 300 lines, no function over 60 (docstrings included)."""

import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parents[1] / "vrpo_loss"


def _sizes():
    for path in sorted(PKG.rglob("*.py")):
        text = path.read_text()
        yield path, len(text.splitlines()), [
            (node.name, node.end_lineno - node.lineno + 1)
            for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        ]


def test_no_file_over_300_lines_and_no_function_over_60():
    long_files = [(p.relative_to(PKG).as_posix(), n) for p, n, _ in _sizes() if n > 300]
    long_functions = [(p.relative_to(PKG).as_posix(), f, n) for p, _, fs in _sizes() for f, n in fs if n > 60]
    assert not long_files, long_files
    assert not long_functions, long_functions
