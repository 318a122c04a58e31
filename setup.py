"""A shim for tools that call setup.py: every piece of metadata lives in pyproject.toml."""

import setuptools

setuptools.setup()
