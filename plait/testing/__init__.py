"""plait's testing harness: time skipping, replay checks, strategies, conformance, pytest plugin."""

from .env import TimeSkippingEnvironment
from .replay import replay, replay_all

__all__ = ["TimeSkippingEnvironment", "replay", "replay_all"]
