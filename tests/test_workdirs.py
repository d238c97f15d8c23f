"""One loader for every workdir: `lm.pretrained.load` builds the model of any job's workdir from
its saved record (no job imported), restores the same arrays orbax itself reads from the
checkpoint, and still loads workdirs written before records existed (tests/fixtures/
workdirs_3213da9, made by its make.sh with the code at 3213da9); eval.py and generate.py take
the job from the record."""

import os
import shutil

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, run_script
from lm import checkpoint
from lm import defaults
from lm import models
from lm import optim
from lm import pretrained
from lm import sharding
from lm import trainer
from lm.jobs import dpo
from lm.jobs import finetune
from lm.jobs import ppo
from lm.jobs import pretrain
from lm.jobs import sft

LEGACY = os.path.join(ROOT, 'tests', 'fixtures', 'workdirs_3213da9')
# workdir -> (job, kind, head) the loader must find
LEGACY_JOBS = {
  'gpt': ('pretrain', 'decoder', None),
  'finetune': ('finetune', 'decoder', 'task'),
  'sft': ('sft', 'decoder', None),
  'reward': ('dpo', 'decoder', 'reward'),
  'dpo': ('dpo', 'decoder', None),
  'ppo': ('ppo', 'decoder', None),  # the policy: the actor-critic's value head is dropped
}


def _orbax_params(workdir: str, which: str = 'best'):
  """The params as orbax alone reads them (no target, no lm code): best/ when present."""
  best = os.path.join(workdir, 'best')
  sub = 'best' if which == 'best' and os.path.isdir(best) else 'checkpoints'
  step = max(int(s) for s in os.listdir(os.path.join(workdir, sub)) if s.isdigit())
  raw = ocp.StandardCheckpointer().restore(os.path.join(workdir, sub, str(step), 'state'))
  return raw if sub == 'best' else raw['params']


def _assert_same(got, want):
  got = jax.tree_util.tree_flatten_with_path(jax.tree.map(np.asarray, got))[0]
  want = jax.tree_util.tree_flatten_with_path(jax.tree.map(np.asarray, want))[0]
  assert [p for p, _ in got] == [p for p, _ in want]
  for (p, a), (_, b) in zip(got, want):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(p))


def _apply(pre):
  """The rebuilt model runs on its restored params: finite outputs of the expected shape."""
  ids = np.full((2, 8), 5, np.int32)
  if pre.head == 'task':
    out = pre.model.apply({'params': pre.params}, ids, np.zeros_like(ids), np.ones_like(ids))
  elif pre.kind == 'encoder-decoder':
    out = pre.model.apply({'params': pre.params}, ids, ids)
  else:
    out = pre.model.apply({'params': pre.params}, ids)
  leaves = jax.tree.leaves(out)
  assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)
  return out


@pytest.mark.parametrize('name', sorted(LEGACY_JOBS))
def test_workdirs_written_before_records_still_load(name):
  path = os.path.join(LEGACY, name)
  pre = pretrained.load(path)
  assert (pre.job, pre.kind, pre.head) == LEGACY_JOBS[name]
  assert pretrained.job_of(path) == LEGACY_JOBS[name][0]
  want = _orbax_params(path)
  _assert_same(pre.params, want['decoder'] if name == 'ppo' else want)
  out = _apply(pre)
  if name == 'finetune':
    assert out.shape == (2, len(finetune.finetune_info(path)['labels']))
  if name == 'reward':
    assert out.shape == (2,)
  if name == 'dpo':  # the old `pretrained` key reads as init_checkpoint
    assert pre.config.init_checkpoint.endswith('/gpt') and 'pretrained' not in pre.config


def _spy_on_orbax_reads(monkeypatch) -> list:
  """The names ('params.embed...', 'opt_state.1.0.mu...') of every array orbax deserializes."""
  seen = []
  handlers = ocp.type_handlers
  for cls in {handlers.ArrayHandler, handlers.NumpyHandler, handlers.ScalarHandler}:

    async def spy(self, infos, args=None, _orig=cls.deserialize):
      seen.extend(i.name for i in infos)
      return await _orig(self, infos, args)

    monkeypatch.setattr(cls, 'deserialize', spy)
  return seen


@pytest.mark.parametrize('name', ['gpt', 'ppo'])
def test_loading_a_workdir_reads_params_only(name, monkeypatch):
  """`pretrained.load` on a workdir reads its params and never its optimizer state (generation
  and evaluation need no Adam moments): every array orbax deserializes is a param, while a full
  restore of the same checkpoint (the old way) also reads the moments, so the spy sees them."""
  path = os.path.join(LEGACY, name)
  seen = _spy_on_orbax_reads(monkeypatch)
  pre = pretrained.load(path)
  assert seen and all(n.startswith('params.') for n in seen), sorted(seen)
  raw = _orbax_params(path)
  _assert_same(pre.params, raw['decoder'] if name == 'ppo' else raw)

  seen.clear()  # the spy works: the whole train state's restore reads the optimizer state
  job, rec, config = pretrained.read_record(path)
  model = models.build(rec)
  target = trainer.abstract_state(
    model, optim.make(config.train), sharding.make_mesh((-1, 1, 1)), models.init_inputs(rec)
  )
  checkpoint.Checkpointer(os.path.join(path, 'checkpoints'), read_only=True).restore(target)
  assert any(n.startswith('opt_state.') for n in seen), sorted(seen)


def test_generation_and_job_start_refuse_a_head_in_one_line():
  pre = pretrained.load(os.path.join(LEGACY, 'reward'))
  with pytest.raises(ValueError, match=r'reward model \(dpo job\): evaluate it with eval.py'):
    pre.body(os.path.join(LEGACY, 'reward'), 'generate.py')


@pytest.mark.slow
def test_eval_and_generate_take_the_job_from_the_record(tmp_path):
  """eval.py on a legacy fine-tuned workdir runs the fine-tuning evaluation (task metrics), on a
  legacy SFT workdir the text-to-text one; generate.py continues text from the SFT workdir."""
  for name in ('finetune', 'sft'):
    shutil.copytree(os.path.join(LEGACY, name), tmp_path / name)
  out = tmp_path / 'ft.json'
  run_script(
    'eval.py', f'--checkpoint={tmp_path / "finetune"}', f'--output={out}', '--max_examples=8'
  )
  text = out.read_text()
  assert '"task": "classification"' in text and '"accuracy"' in text
  out = tmp_path / 'sft.json'
  run_script('eval.py', f'--checkpoint={tmp_path / "sft"}', f'--output={out}', '--max_examples=4')
  assert '"rouge1"' in out.read_text().lower() or '"rougeL"' in out.read_text()
  proc = run_script(
    'generate.py', f'--checkpoint={tmp_path / "sft"}', '--prompt=def', '--max_new_tokens=4'
  )
  assert proc.stdout.startswith('--- 0\ndef')


# ------------------------------------------------------------------ every job, written today

TINY = dict(hidden_size=32, num_layers=1, num_heads=2, mlp_dim=64, max_len=64)
SHORT = dict(log_every=1, eval_every=2, checkpoint_every=2, keep_checkpoints=1)


def _config(module: str, variant: str = ''):
  import importlib.util  # noqa: PLC0415

  spec = importlib.util.spec_from_file_location(module, os.path.join(ROOT, 'configs', module))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(variant) if variant else mod.get_config()


def _pretrain(path, config_file, **model):
  c = _config(config_file)
  c.update(SHORT, eval_batches=1, sample_tokens=4)
  c.model.update({**TINY, **model})
  c.data.update(seq_len=32)
  c.data.tokenizer.vocab_size = 300
  c.train.update(steps=2, batch_size=8, warmup_steps=1)
  pretrain.run(c, str(path))
  return path


@pytest.fixture(scope='module')
def workdirs(tmp_path_factory):
  """A tiny workdir of every job: BERT, GPT, Llama and T5 pretraining; fine-tuning, SFT (GPT and
  T5), reward model, DPO and PPO from them, each of those with LoRA (`LORA`), and continued
  pretraining of the GPT with LoRA."""
  root = tmp_path_factory.mktemp('jobs')
  w = {
    'bert': _pretrain(root / 'bert', 'base.py'),
    'gpt': _pretrain(root / 'gpt', 'gpt_base.py'),
    'llama': _pretrain(root / 'llama', 'llama.py', num_kv_heads=1),
    't5': _pretrain(root / 't5', 't5.py', d_kv=16),
  }
  c = _config('gpt_base.py')  # continued pretraining with LoRA
  c.update(SHORT, eval_batches=1, sample_tokens=4, init_checkpoint=str(w['gpt']))
  c.data.update(seq_len=32)
  c.train.update(steps=2, batch_size=8, warmup_steps=1)
  c.lora.update(LORA['gpt_lora'])
  pretrain.run(c, str(root / 'gpt_lora'))
  w['gpt_lora'] = root / 'gpt_lora'
  c = defaults.finetuning('classification')
  c.update(SHORT, init_checkpoint=str(w['bert']), num_devices=1, eval_batch_size=8)
  c.data.update(max_len=32, max_train_examples=16)
  c.train.update(steps=2, batch_size=8, warmup_steps=1)
  c.lora.update(LORA['finetune'])
  finetune.run(c, str(root / 'finetune'))
  w['finetune'] = root / 'finetune'
  for name, config_file, init in (('sft', 'sft.py', 'gpt'), ('sft_t5', 't5_finetune.py', 't5')):
    c = _config(config_file)
    c.update(SHORT, init_checkpoint=str(w[init]), eval_batch_size=8)
    c.data.update(seq_len=32, max_prompt_len=16)
    c.generate.max_new_tokens = 4
    c.train.update(steps=2, batch_size=8, warmup_steps=1)
    c.lora.update(LORA[name])
    sft.run(c, str(root / name))
    w[name] = root / name
  for name in ('reward', 'dpo'):
    c = _config(f'{name}.py')
    c.update(SHORT, init_checkpoint=str(w['llama']), eval_batch_size=8)
    c.data.update(seq_len=32, max_prompt_len=16)
    c.train.update(steps=2, batch_size=8, warmup_steps=1)
    c.lora.update(LORA[name])
    dpo.run(c, str(root / name))
    w[name] = root / name
  c = _config('ppo.py')
  c.update(SHORT, init_checkpoint=str(w['llama']), reward_model=str(w['reward']))
  c.update(eval_batch_size=8, max_new_tokens=8)
  c.data.max_prompt_len = 16
  c.train.update(steps=2, batch_size=8)
  c.lora.update(LORA['ppo'])
  ppo.run(c, str(root / 'ppo'))
  w['ppo'] = root / 'ppo'
  return w


# the jobs run with LoRA in `workdirs` (QLoRA for two) and the checkpoint each starts from
LORA = {
  'gpt_lora': dict(rank=2),
  'finetune': dict(rank=2, targets='q,v'),
  'sft': dict(rank=2, quant='nf4'),
  'sft_t5': dict(rank=2, quant='int8', dropout=0.1),
  'reward': dict(rank=2, targets='q,k,v,o'),
  'dpo': dict(rank=2),
  'ppo': dict(rank=2, targets='mlp_in,mlp_out'),
}
LORA_INIT = dict(
  gpt_lora='gpt', finetune='bert', sft='gpt', sft_t5='t5', reward='llama', dpo='llama', ppo='llama'
)

JOBS = {
  'bert': ('pretrain', 'encoder', None),
  'gpt': ('pretrain', 'decoder', None),
  'gpt_lora': ('pretrain', 'decoder', None),
  'llama': ('pretrain', 'decoder', None),
  't5': ('pretrain', 'encoder-decoder', None),
  'finetune': ('finetune', 'encoder', 'task'),
  'sft': ('sft', 'decoder', None),
  'sft_t5': ('sft', 'encoder-decoder', None),
  'reward': ('dpo', 'decoder', 'reward'),
  'dpo': ('dpo', 'decoder', None),
  'ppo': ('ppo', 'decoder', None),
}


@pytest.mark.slow
def test_every_job_writes_a_record_the_loader_builds_from(workdirs):
  for name, want in JOBS.items():
    path = str(workdirs[name])
    pre = pretrained.load(path)
    assert (pre.job, pre.kind, pre.head) == want, name
    assert pretrained.job_of(path) == want[0], name
    raw = _orbax_params(path)
    _assert_same(pre.params, raw['decoder'] if name == 'ppo' else raw)
    _apply(pre)
  assert pretrained.load(str(workdirs['llama'])).cfg.num_kv_heads == 1
  latest = pretrained.load(str(workdirs['sft']), which='latest')
  _assert_same(latest.params, _orbax_params(str(workdirs['sft']), 'latest'))


@pytest.mark.slow
def test_every_training_job_trains_lora_adapters_on_a_frozen_base(workdirs):
  """Each job run with LoRA saved its lora config in the record; the base it started from is
  bit-identical in the result (quantized bases: their codes are the quantized init), adapters
  and job-added heads moved, and the merged body (`Pretrained.body`) of a LoRA workdir equals
  base + (alpha / r) A B."""
  from lm.models import lora

  for name, block in LORA.items():
    pre = pretrained.load(str(workdirs[name]), which='latest')
    assert pre.cfg.lora_rank == 2 and pre.cfg.quant == block.get('quant', 'none'), name
    init = pretrained.load(str(workdirs[LORA_INIT[name]])).params
    flat = flax.traverse_util.flatten_dict(pre.params)
    body = {k[1:]: v for k, v in flat.items() if k[0] == 'body'} if pre.head == 'task' else flat
    if pre.head == 'reward':
      body = {k[1:]: v for k, v in flat.items() if k[0] == 'decoder'}
    base = flax.traverse_util.flatten_dict(init)
    adapters = [k for k in body if k[-1] == 'lora_b']
    assert adapters and all(np.abs(np.asarray(body[k])).max() > 0 for k in adapters), name
    for k, v in body.items():
      if k in base and v.dtype == base[k].dtype:  # not an adapter, scale or quantized kernel
        np.testing.assert_array_equal(np.asarray(v), np.asarray(base[k]), err_msg=f'{name} {k}')
    frozen = [k for k in body if k in base and body[k].dtype == base[k].dtype]
    assert any(k[-1] == 'embedding' for k in frozen) and any('ln' in k[-2] for k in frozen), name
    if pre.cfg.quant == 'none':
      assert any(k[-1] == 'kernel' and k[-2] == 'query' for k in frozen), name
    targets = set(lora.targets_of(pre.cfg))
    assert ('mlp_in' in targets) == any('wi' in k for k in adapters), name
    _apply(pre)
  pre = pretrained.load(str(workdirs['dpo']), which='latest')
  merged = pre.body('dpo', 'test')
  k = ('stack', 'layers_0', 'attention', 'query')
  p = flax.traverse_util.flatten_dict(pre.params)
  want = p[k + ('kernel',)] + 8.0 * p[k + ('lora_a',)] @ p[k + ('lora_b',)]  # alpha 16 / rank 2
  got = flax.traverse_util.flatten_dict(merged.params)[k + ('kernel',)]
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
  assert merged.cfg.lora_rank == 0 and lora.ADAPTERS[0] not in str(merged.params)
  # evaluation against the frozen base as reference (DPO: implicit rewards; PPO: KL, start)
  got, _ = dpo.evaluate(str(workdirs['dpo']), split='validation')
  floats = [v for v in got.values() if isinstance(v, float)]
  assert floats and np.isfinite(floats).all() and any('accuracy' in k for k in got), got
  got, _ = ppo.evaluate(str(workdirs['ppo']), split='validation')
  assert np.isfinite(got['kl']) and np.isfinite(got['start_score']), got
