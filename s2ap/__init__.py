"""s2ap: score-space sharpness-aware adversarial pruning (S2AP) and its baselines.

The core package is pure PyTorch: it never imports Ray or FastAPI.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
