"""Training data: readers with line-level error reports, pretraining and instruction sets."""
