"""``c-header``: a C header rendered as its comments (prose) and its declarations (code).

    ```{c-header} ../csrc/xenmapcache.h
    ```

The header is cut at blank lines into blocks; a block's leading ``/* ... */``
comment becomes a paragraph, the rest a C code block, so the page says exactly
what the header says (tests/test_docs.py checks that every function declared
there has a comment).  Include guards, ``extern "C"`` and the cffi markers are
left out.
"""

from __future__ import annotations

import re
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

SKIP = re.compile(
    r'^\s*(#ifndef \w+_H|#define \w+_H|#endif /\*|#ifdef __cplusplus|#endif$|}$|extern "C" \{|'
    r"/\* cdef-(begin|end)|#include <)"
)


def blocks(text: str) -> list[tuple[str, str]]:
    """(comment, code) pairs of a header, in order."""
    out = []
    for chunk in re.split(r"\n\s*\n", text):
        lines = [line for line in chunk.splitlines() if not SKIP.match(line)]
        body = "\n".join(lines).strip("\n")
        if not body.strip():
            continue
        comment, code = "", body
        m = re.match(r"\s*/\*(.*?)\*/\s*\n?", body, re.S)
        if m and not body[: m.start()].strip():
            comment = " ".join(line.strip().lstrip("*").strip() for line in m.group(1).splitlines()).strip()
            code = body[m.end() :]
        out.append((comment, code.strip("\n")))
    return out


class CHeader(SphinxDirective):
    """Render the header named by the argument (relative to this page)."""

    required_arguments = 1
    option_spec = {"skip-first": directives.flag}

    def run(self) -> list[nodes.Node]:
        path = Path(self.env.relfn2path(self.arguments[0], self.env.docname)[1])
        self.env.note_dependency(str(path))
        result: list[nodes.Node] = []
        parts = blocks(path.read_text())
        if "skip-first" in self.options:
            parts = parts[1:]
        for comment, code in parts:
            if comment:
                result.append(nodes.paragraph(comment, comment))
            if code.strip():
                block = nodes.literal_block(code, code)
                block["language"] = "c"
                result.append(block)
        return result


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("c-header", CHeader)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
