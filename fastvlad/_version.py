"""The package version, from the installed distribution's metadata (pyproject.toml's ``version``).

Its own module, so that ``estimator.py`` (model files record it) need not import the package's
``__init__``, which imports ``estimator.py``."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fastvlad")
except PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"
