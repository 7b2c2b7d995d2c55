# cffi has no pyproject.toml key: without this, setuptools builds no extension.
import sysconfig

from setuptools import setup

# cffi builds the module against the stable ABI (_core.abi3.so): tag the wheel
# so, one wheel for CPython 3.12 and later.  Free-threaded builds have no
# stable ABI.
options = {} if sysconfig.get_config_var("Py_GIL_DISABLED") else {"bdist_wheel": {"py_limited_api": "cp312"}}

setup(cffi_modules=["build_ffi.py:ffibuilder"], options=options)
