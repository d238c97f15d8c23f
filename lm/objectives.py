"""Pretraining objectives: which model, which loss sums, which metrics.

`mlm` trains the Encoder (masked LM, plus next-sentence prediction when data.nsp);
`clm` trains the Decoder (causal LM over packed documents); `span` trains the T5 encoder-decoder
(span corruption over packed documents, `lm.data.span`); `seq2seq` is text-to-text fine-tuning of
T5 (`lm.jobs.sft`: padded inputs, loss on the target tokens' weights). Losses come as sums with
their normalisers computed from the whole batch up front, so a step split into
micro-batches gives the same gradient as one big batch.
"""

import functools

import jax
import jax.numpy as jnp

from lm import losses
from lm import models as M
from lm.models import layers
from lm import trainer
from lm.data import pretrain
from lm.data import span

OBJECTIVES = ('mlm', 'clm', 'span')
KINDS = {'mlm': 'encoder', 'clm': 'decoder', 'span': 'encoder-decoder'}  # the body each trains


def model_config(config, vocab_size: int) -> M.ModelConfig:
  """The model config with the tokenizer's vocab (plus span corruption's sentinels), padded to a
  multiple of 128 so the vocab axis shards evenly over 'tensor' (the extra rows are never a
  target)."""
  cls = M.ModelConfig
  if config.objective == 'span':
    # sentinel k (the k-th noise span of a row) is vocab_size + k
    cls, vocab_size = M.T5Config, vocab_size + config.data.num_sentinels
  return cls.from_dict({**config.model.to_dict(), 'vocab_size': -(-vocab_size // 128) * 128})


def make_model(config, vocab_size: int):
  if config.objective not in OBJECTIVES:
    raise ValueError(f'objective={config.objective!r}: use one of {OBJECTIVES}.')
  cfg = model_config(config, vocab_size)
  return M.body(KINDS[config.objective], cfg)


def make_batcher(config, corpus, tokenizer, seed: int) -> pretrain.Batcher:
  """The batcher a pretraining config asks for: MLM (+NSP) for 'mlm', packed CLM for 'clm',
  span corruption for 'span'."""
  d, b = config.data, config.train.batch_size
  if config.objective == 'mlm':
    return pretrain.MLMBatcher(
      corpus, tokenizer, d.seq_len, b, seed, mlm_prob=d.mlm_prob, nsp=d.nsp
    )
  if config.objective == 'span':
    return span.SpanBatcher(corpus, tokenizer, d.seq_len, b, seed, d.noise_density,
                            d.mean_noise_span_length, tokenizer.vocab_size)  # fmt: skip
  return pretrain.CLMBatcher(corpus, tokenizer, d.seq_len, b, seed)


def init_inputs(config):
  """Dummy inputs with the batch's shapes, for model.init."""
  ids = jnp.zeros((1, config.data.seq_len), jnp.int32)
  return (ids,)


def normalizers(objective: str, batch) -> dict:
  if objective == 'mlm':
    norms = {'mlm': jnp.maximum(jnp.sum(batch['masked_weights']), 1.0)}
    if 'nsp_labels' in batch:
      norms['nsp'] = jnp.asarray(batch['nsp_labels'].shape[0], jnp.float32)
    return norms
  if objective == 'span':  # every target token counts
    return {'span': jnp.asarray(batch['targets'].size, jnp.float32)}
  return {'lm': jnp.maximum(jnp.sum(batch['weights']), 1.0)}


def loss_sums(objective, model, params, batch, rng, deterministic: bool, loss_chunk: int = 0):
  """Per-term (nll_sum, correct_sum) for this (micro-)batch."""
  rngs = None if deterministic else {'dropout': rng}
  if objective == 'mlm':
    out = model.apply(
      {'params': params},
      batch['input_ids'],
      batch['token_type_ids'],
      batch['attention_mask'],
      batch['masked_positions'],
      deterministic,
      rngs=rngs,
    )
    sums = {
      'mlm': losses.cross_entropy_sums(
        out['mlm_logits'], batch['masked_ids'], batch['masked_weights']
      )
    }
    if 'nsp_labels' in batch:
      sums['nsp'] = losses.cross_entropy_sums(
        out['nsp_logits'], batch['nsp_labels'], jnp.ones_like(batch['nsp_labels'], jnp.float32)
      )
    return sums
  if objective in ('span', 'seq2seq'):  # an encoder-decoder, teacher-forced
    logits = model.apply(
      {'params': params},
      batch['input_ids'],
      batch['decoder_input_ids'],
      attention_mask=batch.get('attention_mask'),
      deterministic=deterministic,
      rngs=rngs,
    )
    if objective == 'span':  # exact lengths: every target token counts
      weights = jnp.ones(batch['targets'].shape, jnp.float32)
      return {'span': losses.cross_entropy_sums(logits, batch['targets'], weights)}
    return {'lm': losses.cross_entropy_sums(logits, batch['targets'], batch['weights'])}
  kwargs = dict(
    positions=batch['positions'], segment_ids=batch.get('segment_ids'), deterministic=deterministic
  )
  if loss_chunk:
    hidden = model.apply(
      {'params': params}, batch['input_ids'], method='hidden', rngs=rngs, **kwargs
    )
    emb = layers.output_embedding(params)
    return {
      'lm': losses.chunked_cross_entropy_sums(
        hidden, emb, batch['targets'], batch['weights'], loss_chunk
      )
    }
  logits = model.apply({'params': params}, batch['input_ids'], rngs=rngs, **kwargs)
  return {'lm': losses.cross_entropy_sums(logits, batch['targets'], batch['weights'])}


def total_loss(sums: dict, norms: dict):
  """BERT's loss is the MLM mean plus the NSP mean; GPT's the token mean."""
  return sum(sums[k][0] / norms[k] for k in sums)


def metrics(sums: dict, norms: dict) -> dict:
  out = {'loss': total_loss(sums, norms)}
  for k, (nll, correct) in sums.items():
    out[f'{k}_loss'] = nll / norms[k]
    out[f'{k}_accuracy'] = correct / norms[k]
  main = next(k for k in ('mlm', 'span', 'lm') if k in sums)
  out['perplexity'] = jnp.exp(out[f'{main}_loss'])
  return out


def make_train_step(config, model, tx, state_shardings, mesh):
  """trainer.make_train_step on this objective's loss; normalisers come from the whole batch."""

  def loss_fn(params, batch, rng, norms):
    sums = loss_sums(config.objective, model, params, batch, rng, False, config.train.loss_chunk)
    return total_loss(sums, norms), sums

  norms_fn = functools.partial(normalizers, config.objective)
  return trainer.make_train_step(
    loss_fn, tx, state_shardings, mesh, config, norms_fn=norms_fn, metrics_fn=metrics
  )


def make_eval_step(config, model, params_shardings, mesh):
  """(params, batch) -> (nll/correct sums, normalisers), for trainer.evaluate(..., metrics)."""

  def eval_fn(params, batch):
    sums = loss_sums(config.objective, model, params, batch, None, True, config.train.loss_chunk)
    return sums, normalizers(config.objective, batch)

  return trainer.jit_eval(eval_fn, params_shardings, mesh)


def evaluate(eval_step, params, batches, stop=None) -> dict:
  return trainer.evaluate(eval_step, params, batches, metrics, stop)


def evaluate_sources(eval_step, params, sources: dict, stop=None) -> dict:
  """{name: eval batches} -> the metrics of all batches pooled, plus each source's own as
  '<name>/<metric>' (a mixture's sources); a lone source named '' gives just its metrics."""
  if list(sources) == ['']:
    return evaluate(eval_step, params, sources[''], stop)
  pooled, out = [], {}

  def keep(sums, norms):
    pooled.append((sums, norms))
    return metrics(sums, norms)

  for name, batches in sources.items():
    out.update(
      {
        f'{name}/{k}': v
        for k, v in trainer.evaluate(eval_step, params, batches, keep, stop).items()
      }
    )
  if not pooled or (stop is not None and stop.requested):
    return {}
  sums, norms = (jax.tree.map(lambda *x: sum(x), *part) for part in zip(*pooled))
  return {**{k: float(v) for k, v in metrics(sums, norms).items()}, **out}
