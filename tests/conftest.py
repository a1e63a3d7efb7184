import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

# The tests' models are tiny: one thread each avoids oversubscribing CI's 2 cores.
torch.set_num_threads(1)
