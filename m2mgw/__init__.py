"""m2mgw: an M2M service platform gateway for GB/Z 41383-2022 (WMMP) on Twisted."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("m2mgw")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
