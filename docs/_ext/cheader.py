"""``c-header``: a C header rendered as its comments (prose) and its declarations (Sphinx's C domain).

    ```{c-header} ../csrc/xenmapcache.h
    ```

The header is cut at blank lines into blocks; a block's leading ``/* ... */``
comment becomes a paragraph, and each declaration after it an entry of
Sphinx's C domain: a function becomes ``c:function``, a ``#define`` a
``c:macro``, a typedef a ``c:type`` showing its code, each with the comment
on its line.  So every name is in the index and ``{c:func}`xmc_map``` links
to it, and the page says exactly what the header says (tests/test_docs.py
checks that every function declared there has a comment).  Include guards,
``extern "C"`` and the cffi markers are left out; anything else (a
conditional, a static assertion) is shown as code.  A name declared twice (one
of the QEMU API's two sets, a macro per language) is indexed at its last
declaration and shown as code elsewhere.
"""

from __future__ import annotations

import re
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

SKIP = re.compile(
    r'^\s*(#ifndef \w+_H$|#define \w+_H$|#endif /\* \w+_H \*/$|#ifdef __cplusplus|#endif$|}$|extern "C" \{|'
    r"/\* cdef-(begin|end)|#include )"
)
COMMENT = re.compile(r"/\*(.*?)\*/", re.S)


def prose(comment: str) -> str:
    """A ``/* ... */`` comment's text as one line."""
    return " ".join(line.strip().lstrip("*").strip() for line in comment.splitlines()).strip()


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
            comment = prose(m.group(1))
            code = body[m.end() :]
        out.append((comment, code.strip("\n")))
    return out


def statements(code: str) -> list[tuple[bool, str]]:
    """The code of a block cut into (is_comment, text): a comment on lines of its own (as prose), a
    preprocessor line, or a declaration up to its ``;`` outside braces and comments."""
    out: list[tuple[bool, str]] = []
    pending = ""
    for line in code.splitlines():
        if not pending and line.lstrip().startswith("#"):
            out.append((False, line))
            continue
        pending += line + "\n"
        if pending.count("/*") != pending.count("*/"):
            continue  # inside a comment
        text = COMMENT.sub("", pending)
        if not text.strip():
            out.append((True, prose(pending.strip()[2:-2])))
            pending = ""
        elif text.count("{") == text.count("}") and text.rstrip().endswith(";"):
            out.append((False, pending.rstrip("\n")))
            pending = ""
    if pending.strip():
        out.append((False, pending.rstrip("\n")))
    return out


def classify(statement: str) -> tuple[str, str]:
    """(C domain directive, its signature) for one declaration; ("", "") for plain code."""
    bare = " ".join(COMMENT.sub("", statement).split())
    if m := re.match(r"#define (\w+(\([^)]*\))?)", bare):
        return "macro", m.group(1)
    if bare.startswith("typedef"):
        m = re.search(r"(\w+)\s*;$", bare) if "{" in bare else re.search(r"\(\*\s*(\w+)\)\s*\(", bare)
        m = m or re.search(r"(\w+)\s*;$", bare)
        return ("type", m.group(1)) if m else ("", "")
    m = re.match(r"([A-Za-z_][\w\s\*]*?\b)(\w+)\((.*)\);$", bare)
    if m and m.group(1).strip() and not bare.startswith("#"):
        return "function", bare[:-1]
    return "", ""


def code_block(code: str) -> nodes.literal_block:
    block = nodes.literal_block(code, code)
    block["language"] = "c"
    return block


class CHeader(SphinxDirective):
    """Render the header named by the argument (relative to this page)."""

    required_arguments = 1
    option_spec = {"skip-first": directives.flag}

    def c_object(self, kind: str, signature: str, body: list[nodes.Node]) -> list[nodes.Node]:
        """One entry of the C domain, as ``c:KIND:: SIGNATURE`` with ``body`` as its content."""
        directive = self.env.get_domain("c").directive(kind)
        assert directive is not None
        made: list[nodes.Node] = directive(
            f"c:{kind}", [signature], {}, StringList(), self.lineno, self.content_offset,
            self.block_text, self.state, self.state_machine,
        ).run()
        for content in made[-1].findall(addnodes.desc_content):
            content.extend(body)
            break
        return made

    def run(self) -> list[nodes.Node]:
        path = Path(self.env.relfn2path(self.arguments[0], self.env.docname)[1])
        self.env.note_dependency(str(path))
        parts = blocks(path.read_text())
        if "skip-first" in self.options:
            parts = parts[1:]
        items: list[tuple[str, str, str]] = []  # (kind, signature or prose, statement)
        for comment, code in parts:
            items.append(("comment", comment, ""))
            for is_comment, text in statements(code):
                items.append(("comment", text, "") if is_comment else (*classify(text), text))
        # A name declared twice (the QEMU API's legacy set, a macro per
        # language) is indexed at its last declaration, the default one.
        last = {name(kind, sig): i for i, (kind, sig, _) in enumerate(items) if kind not in ("", "comment")}
        result: list[nodes.Node] = []
        for i, (kind, sig, statement) in enumerate(items):
            if kind == "comment":
                if sig:
                    result.append(nodes.paragraph(sig, sig))
            elif kind and last[name(kind, sig)] == i:
                if kind == "function":
                    own = " ".join(prose(c) for c in COMMENT.findall(statement))
                    body: list[nodes.Node] = [nodes.paragraph(own, own)] if own else []
                else:
                    body = [code_block(statement.strip())]
                result.extend(self.c_object(kind, sig, body))
            elif statement.strip():
                result.append(code_block(statement.strip()))
        return result


def name(kind: str, signature: str) -> str:
    """The name a C domain signature declares."""
    if kind == "function":
        return re.sub(r"\(.*", "", signature).split()[-1].lstrip("*")
    return signature.split("(")[0]


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("c-header", CHeader)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
