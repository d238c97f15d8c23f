"""Serving: `engine.Engine` (continuous batching over a slot KV cache), apart from any HTTP."""
