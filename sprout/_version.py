"""The package version, apart from :mod:`sprout` so that modules can read it without
importing the package root (whose lazy export table refers to nearly every module)."""

__version__ = "0.1.0"
