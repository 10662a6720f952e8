"""Only a clear message for a build without isolation on too old a setuptools (Debian 12 has
66.1): pyproject.toml's `license` is an SPDX expression (PEP 639), which setuptools reads
from 77 on. Everything else about the package is in pyproject.toml."""

import sys

import setuptools

if int(setuptools.__version__.split(".")[0]) < 77:
    sys.exit(f"serd: building needs setuptools >= 77, this Python has {setuptools.__version__}: "
             "build with isolation (python -m build, or pip install without "
             "--no-build-isolation), or pip install 'setuptools>=77' first")
setuptools.setup()
