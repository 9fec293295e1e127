"""Kernels: the selective scan and its backends."""

from genossm.ops.selective_scan import BACKENDS, selective_scan

__all__ = ["BACKENDS", "selective_scan"]
