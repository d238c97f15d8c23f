"""One config schema: the base configs share their blocks, and every old data-source spelling
fails at once with one line naming the new one."""

import dataclasses

import ml_collections
import pytest

from lm import defaults
from lm.data import corpus
from lm.data import prepare
from lm.data import sources
from lm.models import ModelConfig
from lm.models import lora
from lm.data import preference
from lm.tasks import data as task_data

SHARED_TRAIN = (
  'batch_size',
  'steps',
  'lr',
  'warmup_steps',
  'schedule',
  'end_lr_fraction',
  'weight_decay',
  'b1',
  'b2',
  'eps',
  'clip_norm',
  'grad_accum_steps',
)
PERIODIC = ('log_every', 'eval_every', 'checkpoint_every', 'keep_checkpoints', 'async_checkpoints')


def base_configs():
  return {
    'pretraining': defaults.pretraining(),
    'finetuning': defaults.finetuning('qa'),
    'preference': defaults.preference(),
  }


def test_base_configs_share_the_train_and_periodic_blocks():
  for name, c in base_configs().items():
    assert set(SHARED_TRAIN) <= set(c.train), name
    assert c.train.eps == 1e-6 and c.train.grad_accum_steps == 1, name
    assert all(k in c for k in PERIODIC), name
  assert set(defaults.pretraining().train) - set(SHARED_TRAIN) == {'loss_chunk'}
  assert set(defaults.finetuning('tokens').train) - set(SHARED_TRAIN) == {'body_lr_scale'}
  assert set(defaults.preference().train) == set(SHARED_TRAIN)


def test_every_job_speaks_one_data_vocabulary():
  for name, c in base_configs().items():
    assert c.data.source == 'python_docs', name
    assert {'source', 'files', 'tfds_name', 'data_dir', 'split'} <= set(c.data), name
    sources.check(c.data)
  held_out = {'eval_files', 'eval_split', 'test_files', 'test_split', 'eval_fraction'}
  assert held_out | {'test_fraction'} <= set(defaults.finetuning('classification').data)
  assert held_out | {'test_fraction'} <= set(defaults.preference().data)


def test_model_defaults_are_model_config():
  """c.model is ModelConfig's defaults less what the tokenizer and c.lora set; c.lora's are
  ModelConfig's lora fields."""
  want = dataclasses.asdict(ModelConfig())
  lora_fields = {k: want.pop(f) for k, f in lora.FIELDS.items()}
  del want['vocab_size']
  assert defaults.pretraining().model.to_dict() == want
  for name, c in base_configs().items():
    assert c.lora.to_dict() == lora_fields, name
  # every tuning job takes ModelConfig overrides, param_dtype unset (lora.configure's rule)
  tuning = {
    'finetuning': defaults.finetuning('qa'),
    'text_to_text': defaults.text_to_text('summarize'),
    'preference': defaults.preference(),
    'rl': defaults.rl(),
  }
  for name, c in tuning.items():
    assert set(c.model_overrides) <= set(want) and c.model_overrides.param_dtype is None, name
  for name in ('finetuning', 'text_to_text'):  # dropout as fine-tuning has it
    assert tuning[name].model_overrides.dropout_rate == 0.1, name


@pytest.mark.parametrize(
  'old,new',
  [
    (dict(dataset='text_files'), "data.source='files'"),
    (dict(dataset='lm1b'), "data.tfds_name='lm1b'"),
    (dict(train_file='a.tsv'), 'data.files'),
    (dict(eval_file='b.tsv'), 'data.eval_files'),
    (dict(train_split='train'), 'data.split'),
    (dict(source='text_files'), "data.source='files'"),
    (dict(source='jsonl'), "data.source='files'"),
    (dict(source='glue/sst2'), "data.source='tfds' and data.tfds_name='glue/sst2'"),
  ],
)
def test_old_spellings_name_the_new_key(old, new):
  cfg = ml_collections.ConfigDict(dict(source='python_docs', files='', eval_fraction=0.2))
  cfg.update(old)
  for load in (
    sources.check,
    corpus.load_corpus,
    prepare.spec,
    preference.load_pairs,
    lambda c: task_data.load_examples('classification', c, 'train'),
  ):
    with pytest.raises(ValueError) as e:
      load(cfg)
    assert new in str(e.value) and '\n' not in str(e.value)


def test_argv_prescan_names_the_new_key():
  argv = ['--config=configs/base.py', '--config.train.steps=3', '--config.data.dataset=lm1b']
  msg = sources.argv_error(argv)
  assert msg.startswith('--config.data.dataset=lm1b:') and "data.tfds_name='lm1b'" in msg
  assert 'data.files' in sources.argv_error(['--config.data.train_file', 'x.tsv'])
  assert 'data.split' in sources.argv_error(['--config.data.train_split=train'])
  assert "data.source='files'" in sources.argv_error(['--config.data.source=jsonl'])
  assert (
    sources.argv_error(
      [
        '--config.data.source=tfds',
        '--config.data.tfds_name=lm1b',
        '--config.data.files=a.txt',
        '--config.data.eval_files=b',
      ]
    )
    is None
  )


def test_files_source_reads_globs_and_splits_by_hash(tmp_path):
  for i in range(2):
    (tmp_path / f'part{i}.tsv').write_text(
      ''.join(f'{"pos" if j % 2 else "neg"}\tsentence {i} {j}\n' for j in range(50))
    )
  cfg = defaults.finetuning('classification').data
  cfg.update(source='files', files=str(tmp_path / 'part*.tsv'), eval_fraction=0.3)
  got = {s: task_data.load_examples('classification', cfg, s)[0] for s in task_data.SPLITS}
  texts = {s: {e['text'] for e in got[s]} for s in got}
  assert sum(map(len, texts.values())) == 100 and 10 < len(texts['validation']) < 50
  assert 5 < len(texts['test']) < 40 and not texts['train'] & texts['validation']
  assert not texts['test'] & (texts['train'] | texts['validation'])
  cfg.eval_files = str(tmp_path / 'part1.tsv')  # validation named: test still hashed off train
  held, _ = task_data.load_examples('classification', cfg, 'validation')
  test, _ = task_data.load_examples('classification', cfg, 'test')
  assert len(held) == 50 and 0 < len(test) < 50 and not {e['text'] for e in test} & texts['train']
  cfg.test_files = str(tmp_path / 'part0.tsv')
  train, _ = task_data.load_examples('classification', cfg, 'train')
  test, _ = task_data.load_examples('classification', cfg, 'test')
  assert len(train) == 100 and len(test) == 50  # both named: train is all of data.files
  cfg.files = str(tmp_path / 'nope*.tsv')
  with pytest.raises(FileNotFoundError, match='data.files'):
    task_data.load_examples('classification', cfg, 'train')


def test_a_config_saved_before_test_splits_refuses_to_report_test():
  """An old finetune.json has no data.test_fraction: its run trained on today's test examples,
  so scoring 'test' would be a contaminated figure; validation is unchanged."""
  old = defaults.finetuning('classification').data.to_dict()
  del old['test_fraction']
  old = ml_collections.ConfigDict(old)
  with pytest.raises(ValueError, match='test_fraction'):
    task_data.load_examples('classification', old, 'test')
  new = defaults.finetuning('classification').data
  assert task_data.load_examples('classification', old, 'validation') == (
    task_data.load_examples('classification', new, 'validation')
  )


def test_rollouts_and_generations_pick_their_backend_with_one_block():
  """ppo.py's rollouts and sft.py's generations choose lm.generate or the serving engine with the
  same fields and defaults; a misspelled backend fails in one line."""
  want = defaults.backend_block()
  assert want == {'backend': 'static', 'slots': 0}
  for c in (defaults.rl(), defaults.text_to_text('summarize')):
    assert {k: c.generate[k] for k in want} == want
    assert defaults.backend(c.generate) == 'static'
  assert defaults.backend(ml_collections.ConfigDict()) == 'static'  # a workdir saved before
  with pytest.raises(ValueError, match="generate.backend='vllm'"):
    defaults.backend(ml_collections.ConfigDict(dict(backend='vllm')))


def test_every_training_config_reports_through_one_block():
  """`--config.report.wandb_project=P` works for train.py, finetune.py, sft.py, dpo.py and ppo.py:
  every base config carries defaults.report_block(), W&B off, and the shipped configs keep it."""
  import importlib  # noqa: PLC0415

  want = {'wandb_project': '', 'wandb_entity': '', 'wandb_run_name': ''}
  bases = [
    defaults.pretraining(),
    defaults.finetuning('classification'),
    defaults.preference(),
    defaults.text_to_text('sft'),
    defaults.rl(),
  ]
  shipped = [
    importlib.import_module(f'configs.{name}').get_config()
    for name in ('base', 'gpt_base', 'finetune_cls', 'sft', 'reward', 'dpo', 'ppo')
  ]
  for c in bases + shipped:
    assert c.report.to_dict() == want
