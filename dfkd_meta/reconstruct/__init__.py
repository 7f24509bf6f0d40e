"""Consumer side: reconstruct a transfer set from a teacher and its sidecar (no data)."""
