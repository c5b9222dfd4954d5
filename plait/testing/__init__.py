"""plait's testing harness: time skipping, replay checks, strategies, conformance, pytest plugin."""
