"""Shared fixtures: every contract test runs on each implementation of the API."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from types import ModuleType

import pytest

# Implementations of docs/contract.md, section 6: the C core with the binding's
# builtins and types (CPython), the C core through cffi calls alone (what
# PyPy and free-threaded builds run), and the pure-Python reference.
IMPLEMENTATIONS = {"c": "xenmapcache", "c-cffi": "xenmapcache", "py": "xenmapcache.reference"}

MIB = 1 << 20

# The hostile-input matrix runs in a child interpreter (tests/test_hostile.py).
collect_ignore = [] if os.environ.get("XMC_HOSTILE_CHILD") else ["test_input.py"]


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def xmc(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The module under test (``import xenmapcache as xmc`` or its reference);
    for ``c-cffi``, the caches it makes while the test runs have no builtins."""
    if request.param == "c-cffi":
        import xenmapcache._native

        monkeypatch.setattr(xenmapcache._native, "native_types", lambda: None)
    return importlib.import_module(IMPLEMENTATIONS[request.param])


@pytest.fixture
def ram(xmc: ModuleType) -> Iterator[object]:
    """64 MiB of guest RAM with a hole at [32 MiB, 40 MiB)."""
    r = xmc.GuestRAM(64 * MIB, holes=[(32 * MIB, 40 * MIB)])
    yield r
    r.close()


@pytest.fixture
def cache(xmc: ModuleType, ram: object) -> Iterator[object]:
    """A default cache over ``ram``."""
    c = xmc.MapCache(ram)
    yield c
    c.close()
