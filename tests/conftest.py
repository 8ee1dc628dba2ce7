import os

import pytest
import torch

# Two torch processes that both use every core slow each other down badly on small
# machines; tests run single-threaded unless told otherwise.
torch.set_num_threads(int(os.environ.get("S2AP_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
