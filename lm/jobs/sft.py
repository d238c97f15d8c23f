"""Text-to-text fine-tuning: SFT (prompt -> response, chat), summarization, translation.

One job for a decoder (a prefix LM: it reads the context and learns its target) or a T5
encoder-decoder (the context is the encoder's input, the target the decoder's), with the loss on
the target tokens only. The tasks differ in their data (:mod:`lm.data.text_to_text`) and in what
eval.py reports (response loss and ROUGE/BLEU of generations for all; the lead-sentence baseline
for summarization). The loss is the causal LM's, or T5's teacher-forced one
(:func:`lm.objectives.loss_sums` 'clm' / 'seq2seq'), through ``trainer.make_train_step`` on the
shared loop. Validation response loss picks ``best/``; eval.py reports the test split.
``init='random'`` trains the same architecture and tokenizer from scratch: the baseline that
shows what pretraining is worth.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import jax
import numpy as np

from lm import checkpoint
from lm import cli
from lm import defaults
from lm import generate as gen
from lm import loop
from lm import metrics as metrics_lib
from lm import models as M
from lm import objectives
from lm import optim
from lm.data import preference
from lm import pretrained
from lm import progress
from lm import report
from lm import sharding
from lm import trainer
from lm.models import lora
from lm.serving import engine as E
from lm.data import sources
from lm.data import text_to_text as t2t
from lm.data import tokenizer as tokenizer_lib

TASKS = t2t.TASKS
KINDS = ('decoder', 'encoder-decoder')

# ------------------------------------------------------------------ models and rows


def featurize(model, examples: list, tok, data_cfg, seed: Optional[int] = None) -> dict:
  """The rows `model` trains on: packed prefix-LM rows for a decoder, one padded input/target
  pair per row for an encoder-decoder."""
  fn = t2t.featurize_seq2seq if gen.is_encoder_decoder(model) else t2t.featurize
  return fn(examples, tok, data_cfg, seed)


# ------------------------------------------------------------------ steps


def _sums(model, params, batch, rng, deterministic, loss_chunk):
  objective = 'seq2seq' if gen.is_encoder_decoder(model) else 'clm'
  return objectives.loss_sums(objective, model, params, batch, rng, deterministic, loss_chunk)


def make_train_step(config, model, tx, state_sh, mesh):
  """The LM loss on the target tokens only (the batch's weights), normalised over the whole
  batch's target tokens, on the shared step."""

  def loss_fn(params, batch, rng, norms):
    sums = _sums(model, params, batch, rng, False, config.train.loss_chunk)
    return objectives.total_loss(sums, norms), sums

  return trainer.make_train_step(
    loss_fn,
    tx,
    state_sh,
    mesh,
    config,
    norms_fn=functools.partial(objectives.normalizers, 'clm'),
    metrics_fn=objectives.metrics,
  )


def make_eval_step(model, params_sh, mesh, loss_chunk: int = 0):
  """(params, batch) -> sums and normalisers over the target tokens of real rows (weight 1)."""

  def eval_fn(params, batch):
    batch = dict(batch, weights=batch['weights'] * batch['weight'][:, None])
    return _sums(model, params, batch, None, True, loss_chunk), objectives.normalizers('clm', batch)

  return trainer.jit_eval(eval_fn, params_sh, mesh)


def response_loss(eval_step, params, rows: dict, batch_size: int, mesh, stop=None) -> dict:
  """Mean NLL (loss), accuracy and perplexity of the target tokens of every row."""
  pi, pc = jax.process_index(), jax.process_count()
  batches = preference.eval_batches(rows, batch_size, pi, pc)
  return objectives.evaluate(
    eval_step, params, (sharding.shard_batch(b, mesh) for b in batches), stop
  )


def generate_texts(model, params, tok, examples: list, config) -> list[str]:
  """Greedy / beam / sampled continuations (config.generate) of each example's context: the
  decoder's prompt, or the encoder's input (the decoder starts from T5's id 0)."""
  g, d = config.generate, config.data
  _, eos, pad = t2t.specials(tok)
  if gen.is_encoder_decoder(model):
    n_in, n_out = t2t.seq2seq_lengths(d)
    prompts = [t2t.encode_seq2seq(t2t.render(e, d), tok, n_in, n_out)[0] for e in examples]
    pad, prompt_len = 0, n_in
  else:
    prompts = [
      t2t.encode(t2t.render(e, d), tok, d.seq_len, d.max_prompt_len, generation=True)[0]
      for e in examples
    ]
    prompt_len = int(d.max_prompt_len)
  got = continuations(model, params, prompts, g, eos, pad, prompt_len, int(config.eval_batch_size))
  # ids past the tokenizer's (span corruption's sentinels, vocabulary padding) are not text
  return [tok.decode([t for t in seq if t < tok.vocab_size]).strip() for seq in got]


def continuations(model, params, prompts, g, eos: int, pad: int, prompt_len: int, size: int):
  """The first continuation (token ids) of each prompt under config.generate `g`: batches of
  `size` through lm.generate (g.backend 'static'), or one lm.serving.engine of g.slots (default
  `size`) rows with the same cache layout (g.backend 'engine': greedy only, the same tokens)."""
  if defaults.backend(g) == 'engine':
    return _engine_continuations(model, params, prompts, g, eos, pad, prompt_len, size)
  out = []
  for s in progress.track(range(0, len(prompts), size), 'generate'):
    chunk = prompts[s : s + size]
    got = gen.generate(
      model,
      params,
      chunk + [[eos]] * (size - len(chunk)),  # one compiled shape for every batch
      max_new_tokens=int(g.max_new_tokens),
      strategy=g.strategy,
      temperature=g.temperature,
      top_k=g.top_k,
      top_p=g.top_p,
      num_beams=g.num_beams,
      length_penalty=g.length_penalty,
      repetition_penalty=g.get('repetition_penalty', 1.0),
      no_repeat_ngram_size=int(g.get('no_repeat_ngram_size', 0)),
      min_new_tokens=int(g.get('min_new_tokens', 0)),
      eos_id=eos,
      pad_id=pad,
      seed=g.seed,
      prompt_len=prompt_len,
    )
    out += [seqs[0] for seqs in got[: len(chunk)]]
  return out


def _engine_continuations(model, params, prompts, g, eos, pad, prompt_len, size):
  """`continuations` through the engine: greedy decoders only (the engine has no beams, no
  processors, and its seeds are per request, where lm.generate's batch shares one key)."""
  processors = (g.get('repetition_penalty', 1.0), g.get('no_repeat_ngram_size', 0))
  if g.strategy != 'greedy' or processors != (1.0, 0) or g.get('min_new_tokens', 0):
    raise ValueError(
      'generate.backend=engine decodes greedily without repetition_penalty, '
      f'no_repeat_ngram_size or min_new_tokens (strategy={g.strategy!r}): use backend=static.'
    )
  if gen.is_encoder_decoder(model):
    raise ValueError('generate.backend=engine serves decoders; T5 generates with backend=static.')
  n = int(g.max_new_tokens)
  slots = int(g.get('slots', 0)) or size
  engine = E.like_static_batches(model, params, slots, prompt_len, n, eos, pad)
  return engine.generate(prompts, E.Sampling(max_tokens=n))


# ------------------------------------------------------------------ the run


def _check(config, cfg):
  d, g = config.data, config.generate
  if d.max_prompt_len >= d.seq_len:
    raise ValueError(
      f'data.max_prompt_len={d.max_prompt_len} leaves no target in seq_len={d.seq_len}.'
    )
  if (
    cfg.position == 'learned' and max(d.seq_len, d.max_prompt_len + g.max_new_tokens) > cfg.max_len
  ):
    raise ValueError(
      f'data.seq_len={d.seq_len} or data.max_prompt_len + generate.max_new_tokens='
      f'{d.max_prompt_len + g.max_new_tokens} exceeds the model max_len={cfg.max_len}.'
    )


def _load_init(config, mesh) -> pretrained.Pretrained:
  """The model and tokenizer of config.init_checkpoint, the start of a fresh run."""
  if not config.init_checkpoint:
    raise ValueError(
      'pass --config.init_checkpoint=DIR (a train.py workdir, or an HF GPT-2 / Llama / T5 '
      'directory).'
    )
  pre = pretrained.load(config.init_checkpoint, mesh).body(config.init_checkpoint, 'sft.py')
  if pre.kind not in KINDS or pre.tokenizer is None:
    raise ValueError(
      f'{config.init_checkpoint} is an {pre.kind} (tokenizer: {pre.tokenizer}): text-to-text '
      'fine-tuning needs a decoder or an encoder-decoder (T5) and its tokenizer.'
    )
  return pre


def _own_model(workdir: str):
  """(kind, model config, tokenizer) of the run WORKDIR already checkpointed, or None (a fresh
  run)."""
  if pretrained.job_of(workdir) is None:
    return None
  _, rec, _ = pretrained.read_record(workdir)
  tok = tokenizer_lib.Tokenizer.load(os.path.join(workdir, 'tokenizer.json'))
  return rec['kind'], M.config_from_dict(rec['kind'], rec['model']), tok


def run(config, workdir: str) -> dict:
  """Fine-tunes config.init_checkpoint (or, with init='random', its architecture from scratch)
  on the text-to-text data; returns the last validation metrics (history in
  WORKDIR/metrics.jsonl; the test split is eval.py's)."""
  workdir = cli.writable_dir(workdir)
  if config.task not in TASKS:
    raise ValueError(f'task={config.task!r}: use one of {TASKS}.')
  pi, pc = jax.process_index(), jax.process_count()
  mesh = sharding.make_mesh(config.mesh_shape)
  if config.init not in ('pretrained', 'random'):  # before loading anything
    raise ValueError(f"init={config.init!r}: use 'pretrained' or 'random'.")
  data = t2t.load_splits(config.task, config.data)  # before the model: bad data fails fast
  own = _own_model(workdir)
  if own is None:
    pre = _load_init(config, mesh)
    kind, base_cfg, tok = pre.kind, pre.cfg, pre.tokenizer
    init_params = pre.params if config.init == 'pretrained' else None
    del pre
  else:  # resume: the run's own model and tokenizer; init_checkpoint is not read (may be gone)
    (kind, base_cfg, tok), init_params = own, None
  cfg = lora.for_job(base_cfg, config)
  _check(config, cfg)
  model = M.body(kind, cfg)
  if pi == 0 and own is None:
    tok.save(workdir)
  train_rows = featurize(model, data['train'], tok, config.data, seed=config.seed)
  eval_rows = featurize(model, data['validation'], tok, config.data) if data['validation'] else None
  if eval_rows is None:
    print(sources.NO_EVAL)
  tx = optim.make(config.train)
  inputs = (np.zeros((1, config.data.seq_len), np.int32),)
  if init_params is None:  # random init, or loop.fit restores the checkpoint into it
    state, state_sh = trainer.create_state(model, tx, mesh, config.seed, inputs)
  else:
    state, state_sh = trainer.create_state_from(model, tx, mesh, config.seed, inputs, init_params)
  del init_params
  start = f'{config.init_checkpoint} ({config.init})' if own is None else f'{workdir} (resuming)'
  print(
    f'{config.task}: {trainer.param_count(state.params):,} params ({type(model).__name__}) from '
    + start
    + ', '
    + ', '.join(f'{len(v)} {k}' for k, v in data.items())
    + f' examples, {len(train_rows["input_ids"])} training rows'
  )
  train_step = make_train_step(config, model, tx, state_sh, mesh)
  eval_step = make_eval_step(model, state_sh.params, mesh, config.train.loss_chunk)
  stop = loop.StopFlag().install()
  evaluate = None
  if eval_rows is not None:

    def evaluate(params):
      return response_loss(eval_step, params, eval_rows, config.eval_batch_size, mesh, stop)

  writer = report.Writer(workdir, int(config.train.steps), config)
  fit = loop.fit(
    state,
    train_step,
    lambda step: sharding.shard_batch(
      preference.train_batch(train_rows, step, config.train.batch_size, config.seed, pi, pc), mesh
    ),
    config,
    workdir,
    writer=writer,
    stop=stop,
    evaluate=evaluate,
    eval_at_start=True,  # the initial model's validation response loss: the baseline
    meta=checkpoint.job_meta('sft', config, M.record(kind, cfg)),
    rate=('rows_per_sec', config.train.batch_size),
  )
  writer.close()
  return fit.eval


# ------------------------------------------------------------------ loading and evaluating


def evaluate(
  workdir: str,
  config=None,
  split: str = 'test',
  which: str = 'best',
  max_examples: int = 0,
  num_batches=None,
  mesh=None,
):
  """(results, predictions) of an sft.py workdir on `split` of `config`'s data (default its own):
  the response loss of the fine-tuned model and of the pretrained one it started from, ROUGE-1/2/L
  and BLEU of the generations (config.generate) and, for summarization, of the lead-sentence
  baseline."""
  if split not in ('test', 'validation'):
    raise ValueError(f"split={split!r}: evaluate 'test' or 'validation'.")
  del num_batches  # every example of the split
  mesh = mesh or sharding.make_mesh((-1, 1, 1))
  got = pretrained.load(workdir, mesh, which=which)
  config = config or got.config
  examples = t2t.load_splits(config.task, config.data)[split]
  if not examples:
    raise ValueError(f'no {split} examples in the data of {workdir}: pass --split=test.')
  if max_examples:
    examples = examples[:max_examples]
  model = got.model
  rows = featurize(model, examples, got.tokenizer, config.data)
  params_sh = jax.tree.map(lambda x: x.sharding, got.params)
  eval_step = make_eval_step(model, params_sh, mesh)
  size = int(config.eval_batch_size)
  results = {'task': config.task, 'split': split, 'examples': len(examples), 'step': got.step}
  results.update(response_loss(eval_step, got.params, rows, size, mesh))
  pretrained_init = config.get('init', 'pretrained') == 'pretrained'
  init_params = None  # the start, scored the same way
  if lora.has_adapters(got.params):  # the frozen base (quantized as trained) with zero adapters
    init_params = lora.without_adapters(got.params)
  elif pretrained_init and os.path.exists(config.init_checkpoint):
    init = pretrained.load(config.init_checkpoint, mesh).body(config.init_checkpoint, 'sft.py')
    init_params = jax.device_put(init.params, params_sh)
  if init_params is not None:
    results['init_loss'] = response_loss(eval_step, init_params, rows, size, mesh)['loss']
  preds = generate_texts(model, got.params, got.tokenizer, examples, config)
  refs = [t2t.reference(e) for e in examples]
  results.update(metrics_lib.text_metrics(preds, refs))
  if config.task == 'summarize':
    results['lead'] = metrics_lib.text_metrics(
      [metrics_lib.lead_sentence(t2t.source_text(e)) for e in examples], refs
    )
  records = [
    {'input': t2t.source_text(e), 'reference': r, 'prediction': p}
    for e, r, p in zip(examples, refs, preds)
  ]
  return results, records
