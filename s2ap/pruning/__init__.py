"""Score-masked layers and pruning methods."""
