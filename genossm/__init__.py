"""genossm: single-nucleotide selective state-space models for genomes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("genossm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
