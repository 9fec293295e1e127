"""Test set-up shared by every test module.

TRITON_INTERPRET must be set before triton is first imported, so that the Triton kernels run on
CPU (this machine and CI have no GPU).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
# Idle OpenMP workers sleep instead of spinning: the chunked scan makes ~1,000 small parallel
# calls, and spinning workers steal the calling thread's core on a 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py


@pytest.fixture
def one_thread():
    """For modules of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    one torch thread is as fast for them, and much steadier on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
