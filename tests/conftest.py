"""Shared fixtures: every contract test runs on each implementation of the API."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from types import ModuleType

import pytest

# Implementations of docs/contract.md, section 6: the C core and the pure-Python reference.
IMPLEMENTATIONS = {"c": "xenmapcache", "py": "xenmapcache.reference"}

MIB = 1 << 20

# The hostile-input matrix runs in a child interpreter (tests/test_hostile.py).
collect_ignore = [] if os.environ.get("XMC_HOSTILE_CHILD") else ["test_input.py"]


@pytest.fixture(params=sorted(IMPLEMENTATIONS), scope="session")
def xmc(request: pytest.FixtureRequest) -> ModuleType:
    """The module under test (``import xenmapcache as xmc`` or its reference)."""
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


@pytest.fixture(params=["builtins", "cffi"])
def arrangement(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Caches with the binding's types and builtins (CPython), or with plain cffi calls alone."""
    if request.param == "cffi":
        import xenmapcache._native

        monkeypatch.setattr(xenmapcache._native, "native_types", lambda: None)
    yield request.param
