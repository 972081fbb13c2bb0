"""Lines of code in the package, the measure of issue 18's budget (at most 7,000).

A line counts when it holds a token of code: blank lines, comment-only lines and the lines of
docstrings (a string literal first in a module, class or function body) do not. Strings that are
code (messages, --help texts) count.

    python benchmarks/code_lines.py [PACKAGE_DIR]      per file, largest first; per sub-package; total
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from collections import Counter
from pathlib import Path

_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}


def code_lines(path: Path) -> int:
    """Number of lines of ``path`` holding code (see the module docstring)."""
    source = path.read_text()
    docstring_lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                docstring_lines.update(range(first.lineno, first.end_lineno + 1))
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in _SKIP:
            lines.update(n for n in range(token.start[0], token.end[0] + 1) if n not in docstring_lines)
    return len(lines)


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "selfsup")
    per_file = {path: code_lines(path) for path in sorted(root.rglob("*.py"))}
    per_package: Counter[str] = Counter()
    for path, count in sorted(per_file.items(), key=lambda item: -item[1]):
        relative = path.relative_to(root)
        per_package[relative.parts[0] if len(relative.parts) > 1 else "(top level)"] += count
        print(f"{count:6d}  {relative}")
    print("per sub-package:", ", ".join(f"{name} {count:,}" for name, count in per_package.most_common()))
    print(f"total: {sum(per_file.values()):,} code lines in {len(per_file)} files")


if __name__ == "__main__":
    main()
