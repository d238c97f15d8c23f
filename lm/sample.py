"""A qualitative look at a model mid-training: fill [MASK]s (encoder) or continue text (decoder)."""

import jax.numpy as jnp
import numpy as np

from lm import generate


def fill_masks(model, params, tok, text: str) -> str:
  """Replaces each [MASK] in `text` with the encoder's top prediction."""
  ids = [tok.cls_id] + tok.encode(text)[: model.cfg.max_len - 2] + [tok.sep_id]
  ids = np.asarray([ids], np.int32)
  out = model.apply({'params': params}, jnp.asarray(ids), jnp.zeros_like(ids), jnp.ones_like(ids))
  pred = np.asarray(jnp.argmax(out['mlm_logits'], -1))[0]
  filled = np.where(ids[0] == tok.mask_id, pred, ids[0])
  return tok.decode([int(t) for t in filled[1:-1]])


def continue_text(model, params, tok, text: str, max_new_tokens: int) -> str:
  prompt = tok.encode(text)
  room = model.cfg.max_len - max_new_tokens
  out = generate.generate(
    model,
    params,
    [prompt[-room:]],
    max_new_tokens=max_new_tokens,
    strategy='greedy',
    eos_id=tok.eos_id,
    pad_id=tok.pad_id,
  )
  return text + tok.decode(out[0][0])


def fill_span(model, params, tok, text: str, max_new_tokens: int) -> str:
  """T5: `text` with one noise span (the first sentinel, id vocab_size) appended; returns the
  decoder's greedy prediction for it, sentinels dropped."""
  out = generate.generate(
    model,
    params,
    [tok.encode(text)[-200:] + [tok.vocab_size, tok.eos_id]],
    max_new_tokens=max_new_tokens,
    eos_id=tok.eos_id,
  )
  return text + ' <span> ' + tok.decode([t for t in out[0][0] if t < tok.vocab_size])


def sample(objective, model, params, tok, text: str, max_new_tokens: int) -> str:
  if objective == 'mlm':
    return fill_masks(model, params, tok, text)
  if objective == 'span':
    return fill_span(model, params, tok, text, max_new_tokens)
  return continue_text(model, params, tok, text, max_new_tokens)
