# cffi has no pyproject.toml key: without this, setuptools builds no extension.
from setuptools import setup

setup(cffi_modules=["build_ffi.py:ffibuilder"])
