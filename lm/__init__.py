"""lm: Transformer language models in JAX/Flax."""
