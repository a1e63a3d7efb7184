import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

# The tests' models are tiny: one thread each avoids oversubscribing CI's 2 cores.
# OPTIMLAB_TEST_THREADS picks another count (.ci/run repeats the rounding-sensitive tests at 2).
_threads = os.environ.get("OPTIMLAB_TEST_THREADS", "1")
if not _threads.isdigit() or int(_threads) < 1:
    raise ValueError(f"OPTIMLAB_TEST_THREADS={_threads!r}: expected a positive integer")
torch.set_num_threads(int(_threads))
