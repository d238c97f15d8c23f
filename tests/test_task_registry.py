"""Tasks are chosen by name: a module written outside lm/tasks becomes a task with no change to
lm (one module + `config.task = '<module>'`), and an unknown name is one clear error."""

import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import defaults
from lm.jobs import finetune
from lm import hf
from lm import models as M
from lm import tasks
from lm.data import tokenizer as tokenizer_lib
from lm.tasks import data as data_lib

# Parity of the number of 'x' words in a short text: its own offline data, labels, features,
# loss and metric, written only against the interface lm/tasks/__init__.py documents.
PARITY = textwrap.dedent('''
    """Is the number of 'x' words even or odd?"""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lm import tasks
    from lm.tasks import data

    HEAD = 'pooled'
    LABELS = ('even', 'odd')


    def offline_examples(split='train', eval_fraction=0.2, test_fraction=0.2):
      rng = np.random.default_rng(0)
      examples = []
      for i in range(120):
        words = rng.choice(['x', 'y', 'z'], size=int(rng.integers(3, 12))).tolist()
        examples.append({'id': str(i), 'text': ' '.join(words),
                         'label': LABELS[words.count('x') % 2]})
      return data.hash_split(examples, lambda e: e['id'], split, eval_fraction, test_fraction)


    def label_names(examples, given=None):
      return list(given or LABELS)


    def featurize(examples, tok, labels, data_cfg):
      sp, n = tasks.Specials(tok), int(data_cfg.max_len)
      ids = [sp.frame(a[:n - sp.overhead(False)])[0]
             for a in tok.encode_batch([e['text'] for e in examples])]
      return {'input_ids': tasks.pad_rows(ids, n, sp.pad),
              'token_type_ids': np.zeros((len(ids), n), np.int32),
              'attention_mask': tasks.pad_rows([[1] * len(i) for i in ids], n, 0),
              'label': np.asarray([labels.index(e['label']) for e in examples], np.int32),
              'weight': np.ones(len(ids), np.float32)}, None


    def loss_sums(logits, batch):
      logp = jax.nn.log_softmax(logits.astype(jnp.float32))
      nll = -jnp.take_along_axis(logp, batch['label'][:, None], axis=-1)[:, 0]
      hit = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
      return jnp.sum(nll * batch['weight']), jnp.sum(batch['weight']), jnp.sum(hit * batch['weight'])


    def score(logits, features, aux, examples, labels, data_cfg):
      pred = np.argmax(np.asarray(logits), -1)
      return ({'accuracy': float(np.mean(pred == features['label']))},
              [{'text': e['text'], 'prediction': labels[int(p)]} for e, p in zip(examples, pred)])
''')


@pytest.fixture
def parity(tmp_path, monkeypatch):
  """The module name of a task that exists only in tmp_path."""
  (tmp_path / 'parity_task.py').write_text(PARITY)
  monkeypatch.syspath_prepend(str(tmp_path))
  return 'parity_task'


@pytest.fixture(scope='module')
def tok():
  docs = [' '.join(['x y z'] * 20)] * 10 + ['the quick brown fox jumps over the lazy dog'] * 10
  return tokenizer_lib.train_tokenizer(docs, 'wordpiece', 120)


def test_module_name_is_a_task_with_its_own_data(parity):
  m = tasks.get(parity)
  assert m.__name__ == parity and m.HEAD == 'pooled'
  cfg = defaults.finetuning(parity).data
  train, names = data_lib.load_examples(parity, cfg, 'train')
  held, _ = data_lib.load_examples(parity, cfg, 'validation')
  assert names is None and train == m.offline_examples('train') and len(train) > 60
  assert len(held) > 10 and not {e['id'] for e in train} & {e['id'] for e in held}
  cfg.update(source='files', files=__file__)
  with pytest.raises(ValueError, match='has no read_file'):
    data_lib.load_examples(parity, cfg, 'train')


def test_featurize_loss_score_on_a_new_task(parity, tok):
  m = tasks.get(parity)
  cfg = defaults.finetuning(parity).data
  cfg.max_len = 16
  ex, _ = data_lib.load_examples(parity, cfg, 'validation')
  labels = m.label_names(ex)
  features, aux = m.featurize(ex, tok, labels, cfg)
  assert features['input_ids'].shape == (len(ex), 16)
  logits = np.zeros((len(ex), 2), np.float32)
  logits[np.arange(len(ex)), features['label']] = 5.0  # a perfect predictor
  batch = {k: jnp.asarray(v) for k, v in features.items()}
  nll, w, correct = jax.jit(m.loss_sums)(jnp.asarray(logits), batch)
  assert float(w) == len(ex) == float(correct) and 0 < float(nll) / len(ex) < 0.01
  metrics, preds = m.score(logits, features, aux, ex, labels, cfg)
  assert metrics['accuracy'] == 1.0 and [p['prediction'] for p in preds] == [e['label'] for e in ex]


@pytest.mark.slow
def test_finetune_run_with_a_config_line(parity, tok, tmp_path):
  """finetune.run and evaluate_finetuned on `task='parity_task'`, from a tiny random BERT in
  HF layout (no pretraining run needed: the plumbing is under test, not the accuracy)."""
  body = tmp_path / 'body'
  cfg = M.ModelConfig(
    vocab_size=tok.vocab_size, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32, max_len=32
  )
  shapes = jax.eval_shape(
    hf.module('bert', cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32)
  )  # no compiles: numpy values below
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda s: rng.normal(0, 0.02, s.shape).astype(s.dtype), nn.unbox(shapes)['params']
  )
  hf.export_pretrained('bert', cfg, params, body)
  tok.save(str(body))

  c = defaults.finetuning('classification')
  c.task = parity  # the one config line a new task needs
  c.init_checkpoint = str(body)
  c.num_devices = 1
  c.data.max_len = 16
  c.train.update(batch_size=8, steps=2, warmup_steps=1)
  c.update(
    eval_batch_size=8, eval_every=2, log_every=2, checkpoint_every=2, async_checkpoints=False
  )
  wd = str(tmp_path / 'ft')
  finetune.run(c, wd)
  again, preds = finetune.evaluate(wd)  # the test split: nothing chose on it
  assert again['task'] == parity and again['split'] == 'test'
  test = data_lib.load_examples(parity, c.data, 'test')[0]
  assert [p['text'] for p in preds] == [e['text'] for e in test]
  hits = [p['prediction'] == e['label'] for p, e in zip(preds, test)]
  assert again['accuracy'] == pytest.approx(sum(hits) / len(hits))


@pytest.mark.parametrize('name', ['no_such_task', 'lm.tasks.no_such_task', ''])
def test_unknown_name_is_one_clear_error(name):
  with pytest.raises(
    ValueError,
    match='not a built-in task .classification, qa, tokens. nor an '
    'importable module; a dotted module path .* works too',
  ):
    tasks.get(name)


def test_module_without_the_interface_is_refused():
  with pytest.raises(ValueError, match='lacks HEAD, label_names, featurize, loss_sums, score'):
    tasks.get('json')


def test_builtin_short_names_keep_working():
  assert tasks.get('classification').HEAD == 'pooled'
  assert tasks.get('qa').HEAD == 'span'
  assert tasks.get('tokens') is tasks.get('lm.tasks.token_classification')
