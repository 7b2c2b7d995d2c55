"""Sphinx configuration of the xenmapcache documentation.

Sphinx because autodoc documents the package from the very docstrings that
``help()`` shows and that the tests check; MyST so that the pages are Markdown,
like the README; furo for a clean theme.  Type hints come from the signatures
through autodoc's own ``autodoc_typehints`` (one dependency fewer than
sphinx-autodoc-typehints, and enough here).  Built with warnings as errors by
``tests/test_docs.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

import facts  # noqa: E402  (docs/_ext/facts.py: the counts the pages state)
from xenmapcache import __version__  # noqa: E402  (the installed package, as users get it)

project = "xenmapcache"
author = "the xenmapcache developers"
copyright = "2026, the xenmapcache developers"
release = version = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "cheader",  # docs/_ext/cheader.py: the C API reference from the header's comments
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_enable_extensions = ["colon_fence", "substitution"]
myst_substitutions = facts.substitutions()
myst_heading_anchors = 3
exclude_patterns = ["_build"]

# The qualifier xenmapcache_qemu.h puts on xen_map_cache()'s MemoryRegion (const for QEMU 11).
c_id_attributes = ["XMC_QEMU_MR_CONST"]

autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_preserve_defaults = True

html_theme = "furo"
html_title = f"xenmapcache {release}"
