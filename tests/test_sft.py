"""lm/sft.py: the chat template and loss mask, packing with document masks against unpacked
rows, the data sources (JSONL, TFDS by name with mock data, the offline defaults), and sft.py /
eval.py / generate.py end to end from the pretrained_gpt fixture."""

import json
import os

import jax
import numpy as np
import pytest

from conftest import run_script, tiny_gpt2_dir
from lm import defaults
from lm import metrics
from lm import pretrained
from lm import models as M
from lm.jobs import sft
from lm import sharding
from lm.data import text_to_text as t2t
from lm.data import tokenizer as tokenizer_lib


@pytest.fixture(scope='module')
def tok():
  from lm.data import corpus

  return tokenizer_lib.train_tokenizer(corpus.python_docs_corpus()[:60], 'bpe', 600)


def _data(task='sft', **kw):
  c = defaults.text_to_text(task)
  c.data.update(**kw)
  return c.data


CHAT = {
  'messages': [
    {'role': 'system', 'content': 'Be brief.'},
    {'role': 'user', 'content': 'Name a list method.'},
    {'role': 'assistant', 'content': 'append'},
    {'role': 'user', 'content': 'Another?'},
    {'role': 'assistant', 'content': 'extend'},
  ]
}


def test_chat_template_and_loss_mask(tok):
  """The documented template, and the loss on every assistant turn (and its eos) only."""
  pieces = t2t.render(CHAT, _data(template='chat'))
  assert [t for t, _ in pieces] == [
    'Be brief.\n\n',
    'User: Name a list method.\nAssistant:',
    ' append',
    '\nUser: Another?\nAssistant:',
    ' extend',
  ]
  ids, mask = t2t.encode(pieces, tok, 64, 48)
  eos = tok.eos_id
  assert ids[0] == eos and mask[0] == 0  # bos (= eos for byte-level BPE)
  assert tok.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False) == (
    ' append<|endoftext|> extend<|endoftext|>'
  )
  assert (
    tok.decode(ids)
    == 'Be brief.\n\nUser: Name a list method.\nAssistant: append\nUser: Another?\nAssistant: extend'
  )
  prompt, _ = t2t.encode(pieces, tok, 64, 48, generation=True)
  assert prompt == ids[: len(prompt)] and tok.decode(prompt).endswith('Another?\nAssistant:')
  pair = t2t.render({'prompt': 'Hi', 'target': 'Hello.'}, _data(template='chat'))
  assert pair == [('User: Hi\nAssistant:', t2t.CONTEXT), (' Hello.', t2t.TARGET)]


def test_truncation_cuts_the_document_end_then_old_context(tok):
  doc = ' '.join(f'word{i}' for i in range(200))
  data = _data('summarize', template='plain', prompt_format='{prompt}\nTL;DR:')
  ids, mask = t2t.encode(t2t.render({'prompt': doc, 'target': 'short.'}, data), tok, 64, 40)
  ctx = [i for i, m in zip(ids, mask) if not m]
  assert (
    len(ctx) == 40
    and tok.decode(ctx).startswith('word0 word1')
    and tok.decode(ctx).endswith('\nTL;DR:')
  )
  assert tok.decode([i for i, m in zip(ids, mask) if m]) == ' short.'
  long_chat = {
    'messages': [{'role': 'user', 'content': doc}, {'role': 'assistant', 'content': 'ok ' * 80}]
  }
  ids, mask = t2t.encode(t2t.render(long_chat, _data()), tok, 64, 40)
  assert len(ids) == 65 and mask.index(1) == 40 and tok.decode(ids[:40]).endswith('\nAssistant:')


def test_packed_loss_equals_the_per_example_loss(tok):
  """Packed rows (segment ids, positions from 0) score each example exactly as it scores alone:
  here against a numpy log-softmax over one unpacked, unmasked example at a time."""
  cfg = M.ModelConfig(
    vocab_size=640, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, max_len=64,
    type_vocab_size=0, pre_ln=True, dropout_rate=0.0, attention_dropout_rate=0.0,
  )  # fmt: skip
  model = M.Decoder(cfg)
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 8), np.int32))['params']
  params = jax.tree.map(
    lambda x: x.unbox() if hasattr(x, 'unbox') else x, params, is_leaf=lambda x: hasattr(x, 'unbox')
  )
  data = _data(template='chat', seq_len=64, max_prompt_len=32)
  examples = [
    {'prompt': f'Question {i} about lists?', 'target': 'Answer ' * (i + 1)} for i in range(9)
  ]
  rows = t2t.featurize(examples, tok, data)
  assert len(rows['input_ids']) < len(examples)  # several examples share a row
  enc = [t2t.encode(t2t.render(e, data), tok, 64, 32) for e in examples]
  padded = np.zeros((len(enc), 64), np.int32)  # causal: what follows an example cannot matter
  for r, (ids, _) in enumerate(enc):
    padded[r, : len(ids) - 1] = ids[:-1]
  logits = np.asarray(jax.jit(model.apply)({'params': params}, padded), np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  nll, count = 0.0, 0.0
  for r, (ids, mask) in enumerate(enc):
    w = np.asarray(mask[1:], np.float64)
    nll += -(logp[r, np.arange(len(ids) - 1), ids[1:]] * w).sum()
    count += w.sum()
  mesh = sharding.make_mesh((-1, 1, 1))
  sh = jax.tree.map(
    lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), params
  )
  step = sft.make_eval_step(model, sh, mesh)
  got = sft.response_loss(step, jax.device_put(params, sh), rows, 8, mesh)
  assert got['loss'] == pytest.approx(nll / count, rel=1e-5)


def test_jsonl_prompt_response_and_chat(tmp_path):
  path = tmp_path / 'train.jsonl'
  lines = [{'prompt': f'p{i}', 'response': f'r{i}'} for i in range(40)] + [CHAT]
  path.write_text('\n'.join(json.dumps(x) for x in lines))
  got = t2t.load_splits('sft', _data(source='files', files=str(path)))
  everything = [e for split in got.values() for e in split]
  assert len(everything) == 41 and {'messages': CHAT['messages']} in everything
  assert {'prompt': 'p0', 'target': 'r0'} in everything
  bad = tmp_path / 'bad.jsonl'
  bad.write_text(json.dumps({'messages': CHAT['messages'][:2]}))
  with pytest.raises(ValueError, match='last message must be an assistant turn'):
    t2t.load_splits('sft', _data(source='files', files=str(bad)))
  bad.write_text(json.dumps({'question': 'q', 'answer': 'a'}))
  with pytest.raises(ValueError, match='target_key'):
    t2t.load_splits('sft', _data(source='files', files=str(bad)))


@pytest.mark.slow  # imports TensorFlow (tfds): ~10 s the fast tier does not pay
@pytest.mark.parametrize(
  'name,keys', [('cnn_dailymail', ('article', 'highlights')), ('xsum', ('document', 'summary'))]
)
def test_tfds_summarization_by_name(tmp_path, name, keys):
  """The feature keys of each known dataset, its own validation and test splits."""
  import tensorflow_datasets as tfds

  data = _data('summarize', source='tfds', tfds_name=name, data_dir=str(tmp_path))
  assert t2t._keys(data, 'summarize') == keys  # pylint: disable=protected-access
  with tfds.testing.mock_data(num_examples=6, data_dir=str(tmp_path)):
    got = t2t.load_splits('summarize', data)
    raw = list(tfds.as_numpy(tfds.load(name, split='test', data_dir=str(tmp_path))))
  assert {k: len(v) for k, v in got.items()} == {'train': 6, 'validation': 6, 'test': 6}
  assert got['test'][0] == {'prompt': raw[0][keys[0]].decode(), 'target': raw[0][keys[1]].decode()}


def test_generate_texts_passes_the_decoding_constraints(tok, tmp_path):
  """config.generate's repetition penalty, no-repeat n-gram and min-new-tokens reach lm.generate
  (summarization's default decoding uses all three): generate_texts equals lm.generate called
  with them on the same prompt (one compile: the same shapes and settings)."""
  from lm import generate as gen
  from lm import pretrained

  tiny_gpt2_dir(tok, tmp_path)
  pre = pretrained.load(str(tmp_path))
  c = defaults.text_to_text('summarize')
  c.data.update(template='plain', seq_len=64, max_prompt_len=32)
  c.generate.update(strategy='greedy', max_new_tokens=10, repetition_penalty=0.5)
  c.generate.update(no_repeat_ngram_size=2, min_new_tokens=10)
  c.eval_batch_size = 8  # one row per device
  examples = [{'prompt': 'The list is sorted in place.', 'target': 'Sort.'}] * 8
  got = sft.generate_texts(pre.model, pre.params, tok, examples, c)
  ids = t2t.encode(t2t.render(examples[0], c.data), tok, 64, 32, generation=True)[0]
  want = gen.generate(
    pre.model,
    pre.params,
    [ids] * 8,
    max_new_tokens=10,
    eos_id=tok.eos_id,
    pad_id=tok.pad_id or 0,
    prompt_len=32,
    repetition_penalty=0.5,
    no_repeat_ngram_size=2,
    min_new_tokens=10,
  )[0][0]
  assert got == [tok.decode(want).strip()] * 8 and len(want) == 10
  bigrams = list(zip(want, want[1:]))
  assert len(set(bigrams)) == len(bigrams)  # no bigram twice


@pytest.mark.slow
def test_resume_does_not_read_init_checkpoint(tok, tmp_path, capsys):
  """Once the workdir holds a checkpoint, sft.run resumes from it with the run's own model and
  tokenizer: the init checkpoint may be gone, and the resumed run ends on the same params as an
  uninterrupted one (batches and dropout keys are functions of the step)."""
  init = tmp_path / 'init'
  tiny_gpt2_dir(tok, init)
  path = tmp_path / 'sum.jsonl'
  path.write_text(
    '\n'.join(
      json.dumps({'document': f'Item {i} has {i % 7} parts and a manual.', 'summary': f'Item {i}.'})
      for i in range(40)
    )
  )
  c = defaults.text_to_text('summarize')
  c.init_checkpoint = str(init)
  c.data.update(source='files', files=str(path), template='plain', seq_len=64, max_prompt_len=32)
  c.data.eval_fraction = 0.0  # no validation: no eval step to compile
  c.train.update(steps=4, warmup_steps=1, batch_size=8)
  c.update(log_every=2, eval_every=4, checkpoint_every=2, keep_checkpoints=1)
  sft.run(c, str(tmp_path / 'straight'))
  c.train.steps = 2
  sft.run(c, str(tmp_path / 'resumed'))
  os.rename(init, tmp_path / 'gone')
  c.train.steps = 4
  capsys.readouterr()
  sft.run(c, str(tmp_path / 'resumed'))
  assert 'resumed from step 2' in capsys.readouterr().out
  a, b = (pretrained.load(str(tmp_path / w), which='latest') for w in ('straight', 'resumed'))
  assert a.step == b.step == 4
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


def _evals(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8')]
  return {r['step']: r for r in rows if 'eval/loss' in r}


@pytest.mark.slow
def test_sft_lowers_held_out_response_loss_and_loads_everywhere(pretrained_gpt, tmp_path):
  """Chat SFT from the fixture: validation response loss falls below the pretrained model's
  (step 0), eval.py reports test loss below the initial model's and ROUGE/BLEU of greedy
  generations, generate.py samples from the workdir and train.py continues from it."""
  wd = tmp_path / 'sft'
  run_script(
    'sft.py',
    '--config=configs/sft.py',
    f'--workdir={wd}',
    f'--config.init_checkpoint={pretrained_gpt}',
    '--config.train.steps=40',
    '--config.train.warmup_steps=4',
    '--config.eval_every=40',
    '--config.log_every=20',
  )
  ev = _evals(wd)
  assert ev[40]['eval/loss'] < ev[0]['eval/loss'] - 0.2, ev  # measured 6.33 -> 5.94
  run_script('eval.py', f'--checkpoint={wd}', '--max_examples=16')
  res = json.loads((wd / 'eval_results.json').read_text())
  assert res['split'] == 'test' and res['examples'] == 16
  assert res['loss'] < res['init_loss'] - 0.2
  preds = [json.loads(l) for l in (wd / 'eval_predictions.jsonl').read_text().splitlines()]
  assert res['rouge1'] == pytest.approx(
    metrics.rouge([p['prediction'] for p in preds], [p['reference'] for p in preds])['rouge1']
  )
  out = run_script(
    'generate.py',
    f'--checkpoint={wd}',
    '--prompt=User: What does the function os.getcwd do?\nAssistant:',
    '--max_new_tokens=8',
  ).stdout
  assert out.startswith('--- 0\nUser:')


@pytest.mark.slow
def test_qlora_sft_lowers_held_out_response_loss(pretrained_gpt, tmp_path):
  """QLoRA (rank 8 adapters on an NF4 base) on the offline SFT default from the fixture: the
  validation response loss falls (measured 6.338 -> 6.117 at lr 3e-3), eval.py's test loss is
  below the initial model's, and generate.py samples from the workdir."""
  wd = tmp_path / 'qlora'
  run_script(
    'sft.py',
    '--config=configs/sft.py',
    f'--workdir={wd}',
    f'--config.init_checkpoint={pretrained_gpt}',
    '--config.lora.rank=8',
    '--config.lora.quant=nf4',
    '--config.train.lr=3e-3',
    '--config.train.steps=40',
    '--config.train.warmup_steps=4',
    '--config.eval_every=40',
    '--config.log_every=20',
  )
  ev = _evals(wd)
  assert ev[40]['eval/loss'] < ev[0]['eval/loss'] - 0.12, ev
  run_script('eval.py', f'--checkpoint={wd}', '--max_examples=16')
  res = json.loads((wd / 'eval_results.json').read_text())
  assert res['loss'] < res['init_loss'] - 0.1, res
  out = run_script(
    'generate.py', f'--checkpoint={wd}', '--prompt=User: Hi\nAssistant:', '--max_new_tokens=4'
  )
  assert out.stdout.startswith('--- 0\nUser:')


@pytest.mark.slow
def test_summarization_from_jsonl_reports_the_lead_baseline(pretrained_gpt, tmp_path):
  """Local JSONL documents -> summaries with the plain template: the held-out summary loss falls,
  and eval.py's lead baseline is rouge-score on each document's first sentence."""
  docs = [
    (
      f'The item number {i} is ready. It ships with {i} parts and a manual. Nothing else is inside.',
      f'Item {i} is ready.',
    )
    for i in range(60)
  ]
  path = tmp_path / 'sum.jsonl'
  path.write_text('\n'.join(json.dumps({'document': d, 'summary': s}) for d, s in docs))
  wd = tmp_path / 'sum'
  run_script(
    'sft.py',
    '--config=configs/summarize.py',
    f'--workdir={wd}',
    f'--config.init_checkpoint={pretrained_gpt}',
    '--config.data.source=files',
    f'--config.data.files={path}',
    '--config.train.steps=30',
    '--config.train.warmup_steps=3',
    '--config.eval_every=30',
    '--config.generate.strategy=greedy',
  )
  run_script('eval.py', f'--checkpoint={wd}')
  res = json.loads((wd / 'eval_results.json').read_text())
  test = t2t.load_splits('summarize', _data('summarize', source='files', files=str(path)))['test']
  lead = metrics.rouge(
    [d['prompt'].split(' It ships')[0] for d in test], [d['target'] for d in test]
  )
  assert res['examples'] == len(test) and res['lead']['rougeL'] == pytest.approx(lead['rougeL'])
  assert res['loss'] < res['init_loss']  # the summaries' loss falls on held-out documents


# ------------------------------------------------------------------ T5 (encoder-decoder)


def _tiny_t5(tok, directory):
  """A random tiny HF T5 v1.1 over `tok`'s ids, saved with `tok`, and the torch model.
  initializer_factor 3: greedy decoding does not repeat one token (as tests/test_t5.py)."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  torch.manual_seed(0)
  config = transformers.T5Config(
    vocab_size=tok.vocab_size,
    d_model=16,
    d_kv=8,
    d_ff=32,
    num_layers=2,
    num_heads=2,
    feed_forward_proj='gated-gelu',
    tie_word_embeddings=False,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
    dropout_rate=0.0,
    decoder_start_token_id=0,
    initializer_factor=3.0,
  )
  model = transformers.T5ForConditionalGeneration(config).eval()
  model.save_pretrained(str(directory))
  tok.save(str(directory))
  return model


DOCS = [
  {'prompt': 'The list is sorted in place and the old order is lost.', 'target': 'Sort a list.'},
  {'prompt': ' '.join(['Read the file and return its lines.'] * 12), 'target': 'Read lines.'},
  {'prompt': 'Close it.', 'target': 'Close the stream now, flushing every buffer it holds first.'},
]


@pytest.mark.slow  # 15 s: an HF model saved and imported
def test_seq2seq_rows_and_loss_equal_hf(tok, tmp_path):
  """T5 rows: the prefixed document ending in eos as the encoder input (a long one cut at its
  end), the summary and eos as targets (a long one cut), shifted right behind id 0 as decoder
  inputs; the loss on them equals HF T5's mean cross-entropy given the attention mask and labels
  (-100 on padding)."""
  import torch

  from lm import objectives
  from lm import pretrained

  hf_model = _tiny_t5(tok, tmp_path)
  data = _data('summarize', template='plain', prompt_format='summarize: {prompt}')
  data.update(seq_len=32, max_prompt_len=24)  # encoder 24 tokens, decoder 8
  rows = t2t.featurize_seq2seq(DOCS, tok, data)
  eos = tok.eos_id
  for r, e in enumerate(DOCS):
    want_in = (tok.encode('summarize: ') + tok.encode(e['prompt']))[:23] + [eos]
    want_out = (tok.encode(' ' + e['target']) + [eos])[:8]
    n, m = len(want_in), len(want_out)
    assert rows['input_ids'][r].tolist() == want_in + [0] * (24 - n)
    assert rows['attention_mask'][r].tolist() == [1] * n + [0] * (24 - n)
    assert rows['targets'][r].tolist() == want_out + [0] * (8 - m)
    assert rows['weights'][r].tolist() == [1] * m + [0] * (8 - m)
    assert rows['decoder_input_ids'][r].tolist() == [0] + want_out[:-1] + [0] * (8 - m)
  assert rows['attention_mask'][1].all() and rows['weights'][2].all()  # cut to fit
  pre = pretrained.load(str(tmp_path))
  assert pre.kind == 'encoder-decoder'
  sums = objectives.loss_sums('seq2seq', pre.model, pre.params, rows, None, True)
  ours = objectives.total_loss(sums, objectives.normalizers('clm', rows))
  t = lambda x: torch.from_numpy(np.asarray(x, np.int64))
  labels = np.where(rows['weights'] > 0, rows['targets'], -100)
  with torch.no_grad():
    ref = hf_model(
      input_ids=t(rows['input_ids']), attention_mask=t(rows['attention_mask']), labels=t(labels)
    ).loss
  np.testing.assert_allclose(float(ours), float(ref), rtol=1e-5)


@pytest.mark.slow
def test_seq2seq_generations_equal_hf_generate(tok, tmp_path):
  """generate_texts on a T5 (the encoder reads each example's input; batches left-padded to
  data.max_prompt_len) decodes the same text as HF `generate` on each input alone, greedy and
  beam."""
  import torch

  from lm import pretrained

  hf_model = _tiny_t5(tok, tmp_path)
  pre = pretrained.load(str(tmp_path))
  c = defaults.text_to_text('summarize')
  c.data.update(
    template='plain', prompt_format='summarize: {prompt}', seq_len=32, max_prompt_len=24
  )
  c.eval_batch_size = 2  # two batches, the second with a filler row
  for strategy in ('greedy', 'beam'):
    c.generate.update(strategy=strategy, num_beams=3, max_new_tokens=6)
    got = sft.generate_texts(pre.model, pre.params, tok, DOCS, c)
    want = []
    for e in DOCS:
      ids = t2t.encode_seq2seq(t2t.render(e, c.data), tok, 24, 8)[0]
      with torch.no_grad():
        out = hf_model.generate(
          torch.tensor([ids]),
          max_new_tokens=6,
          num_beams=3 if strategy == 'beam' else 1,
          do_sample=False,
          eos_token_id=tok.eos_id,
        )[0].tolist()
      want.append(tok.decode(out[1:]).strip())  # after the start token 0
    assert got == want and all(got), strategy


@pytest.mark.slow
def test_t5_translation_from_span_pretraining_end_to_end(tmp_path):
  """train.py (span corruption, tiny) -> sft.py configs/t5_finetune.py:translate on JSONL pairs
  (the target is the source's words reversed) -> eval.py -> generate.py: the held-out target
  loss falls from the pretrained model's, eval.py's BLEU is sacrebleu's on its predictions and
  generate.py continues from the fine-tuned T5."""
  from test_train import TINY_T5

  pre = tmp_path / 't5'
  run_script(
    'train.py',
    '--config=configs/t5.py',
    f'--workdir={pre}',
    *TINY_T5,
    '--config.train.steps=20',
    '--config.eval_every=20',
    '--config.checkpoint_every=20',
  )
  words = 'red green blue cat dog bird runs sits eats big small old'.split()
  rng = np.random.default_rng(0)
  pairs = [list(rng.choice(words, 4)) for _ in range(120)]
  path = tmp_path / 'pairs.jsonl'
  path.write_text(
    '\n'.join(json.dumps({'en': ' '.join(p), 'xx': ' '.join(p[::-1])}) for p in pairs)
  )
  wd = tmp_path / 'translate'
  run_script(
    'sft.py',
    '--config=configs/t5_finetune.py:translate',
    f'--workdir={wd}',
    f'--config.init_checkpoint={pre}',
    '--config.data.source=files',
    f'--config.data.files={path}',
    '--config.data.prompt_key=en',
    '--config.data.target_key=xx',
    '--config.data.seq_len=32',
    '--config.data.max_prompt_len=16',
    '--config.train.steps=40',
    '--config.train.warmup_steps=4',
    '--config.eval_every=40',
    '--config.log_every=20',
    '--config.generate.max_new_tokens=8',
    '--config.generate.strategy=greedy',  # eval.py's decoding: one compile, not beam's
  )
  ev = _evals(wd)
  assert ev[40]['eval/loss'] < ev[0]['eval/loss'] - 1.0, ev
  run_script('eval.py', f'--checkpoint={wd}')
  res = json.loads((wd / 'eval_results.json').read_text())
  assert res['task'] == 'translate' and res['loss'] < res['init_loss'] - 1.0
  preds = [json.loads(l) for l in (wd / 'eval_predictions.jsonl').read_text().splitlines()]
  assert res['examples'] == len(preds) > 10
  assert res['bleu'] == pytest.approx(
    metrics.bleu([p['prediction'] for p in preds], [p['reference'] for p in preds])
  )
  out = run_script(
    'generate.py',
    f'--checkpoint={wd}',
    '--prompt=translate: big cat eats bird',
    '--max_new_tokens=6',
  ).stdout
  assert out.startswith('--- 0\n') and len(out.split('\n', 1)[1].strip()) > 0


@pytest.mark.slow  # compiles lm.generate's decode and the engine's programs for two slot counts
def test_greedy_generations_through_the_engine_equal_the_static_batches():
  """config.generate.backend='engine': `sft.continuations` gives the static lm.generate batches'
  greedy tokens for every prompt, with a full engine (slots = batch) and with fewer slots than
  prompts (queued requests reuse freed slots); what the engine cannot do is refused."""
  import flax.linen as nn
  import jax.numpy as jnp
  import ml_collections

  cfg = M.ModelConfig(
    vocab_size=96, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=32,
    type_vocab_size=0, pre_ln=True, dropout_rate=0.0, attention_dropout_rate=0.0,
    initializer_range=0.3,
  )  # fmt: skip
  model = M.Decoder(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32)))['params']
  rng = np.random.default_rng(0)
  prompts = [rng.integers(4, 96, n).tolist() for n in (1, 12, 5, 9, 3, 7)]
  g = ml_collections.ConfigDict(defaults.text_to_text('sft').generate)
  g.update(strategy='greedy', max_new_tokens=10)
  args = (model, params, prompts, g, 3, 0, 12, 3)  # eos 3, pad 0, prompt_len 12, batches of 3
  static = sft.continuations(*args)
  assert len({tuple(s) for s in static}) == len(prompts)
  g.backend = 'engine'
  assert sft.continuations(*args) == static  # two full batches of 3 = slots
  g.slots = 2
  assert sft.continuations(*args) == static
  g.strategy = 'beam'
  with pytest.raises(ValueError, match='backend=engine decodes greedily'):
    sft.continuations(*args)
