"""Publisher side: statistics of a model's activations on private data, and the release export."""
