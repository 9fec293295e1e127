"""Triton kernels behind :mod:`genossm.ops.scan_triton` (chunked selective scan, forward and
backward)."""
