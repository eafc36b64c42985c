"""Running the python blocks of a Markdown document, in order, in one namespace."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)


def blocks(path: Path) -> list[tuple[str, str | None]]:
    """[(python source, expected output or None)] — the output is the text block right after a python block."""
    found = [(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(path.read_text())]
    out = []
    for k, (lang, body, _, end) in enumerate(found):
        if lang != "python":
            continue
        expected = None
        if k + 1 < len(found) and found[k + 1][0] == "text" and path.read_text()[end : found[k + 1][2]].strip() == "":
            expected = found[k + 1][1]
        out.append((body, expected))
    return out


def run_blocks(path: Path):
    """Execute every python block; yield (index, source, printed, expected)."""
    namespace: dict = {"__name__": "__doc__"}
    for index, (source, expected) in enumerate(blocks(path)):
        if source.startswith("# file: "):  # a file to write, not a snippet to run
            yield index, source, "", None
            continue
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            exec(compile(source, f"{path.name}[block {index}]", "exec"), namespace)
        yield index, source, buffer.getvalue(), expected
