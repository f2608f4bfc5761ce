"""hocba-hub: a vendor-neutral integration hub for Vietnamese digital school transcripts."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hocba-hub")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
