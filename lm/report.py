"""Where metrics go: TensorBoard, `metrics.jsonl` in the workdir, a line on the terminal and, with
`config.report.wandb_project` set, Weights & Biases (the same scalars and steps, the config, the
text samples)."""

import json
import os
import secrets
import time

import jax

from lm import progress


def _summary_writer():
  """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch when it can,
  only to accept torch tensors, and that costs every run ~1 s and ~0.3 GB of RSS (the `hf` extra
  installs torch). We write floats and text. A torch imported before stays as it was."""
  import sys  # pylint: disable=g-import-not-at-top

  hidden = 'torch' not in sys.modules
  if hidden:
    sys.modules['torch'] = None  # `import torch` raises ImportError: tensorboardX's fallback
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    if hidden:
      del sys.modules['torch']
  return SummaryWriter


def _wandb_settings(config):
  """config.report when it turns W&B on, else None (off, or a config without the block)."""
  block = config.get('report') if config is not None else None
  return block if block is not None and block.get('wandb_project') else None


def _import_wandb():
  try:
    import wandb  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(
      "report.wandb_project is set but wandb is not installed: pip install -e '.[wandb]'."
    ) from e
  return wandb


def check(config):
  """Fails at start-up, before any work, when config asks for W&B and wandb is missing."""
  if _wandb_settings(config):
    _import_wandb()


def _wandb_run(workdir: str, config):
  """A W&B run for config.report (None when off). Its id is kept in WORKDIR/wandb_run_id, so a
  resumed run goes on logging into the same W&B run; its files go under WORKDIR/wandb."""
  settings = _wandb_settings(config)
  if not settings:
    return None
  wandb = _import_wandb()
  id_file = os.path.join(workdir, 'wandb_run_id')
  if not os.path.exists(id_file):
    with open(id_file, 'w', encoding='utf-8') as f:
      f.write(secrets.token_hex(6))  # W&B's id alphabet
  with open(id_file, encoding='utf-8') as f:
    run_id = f.read().strip()
  return wandb.init(
    project=settings.get('wandb_project'),
    entity=settings.get('wandb_entity') or None,
    name=settings.get('wandb_run_name') or os.path.basename(os.path.normpath(workdir)),
    config=config.to_dict(),
    dir=workdir,
    id=run_id,
    resume='allow',
  )


class Writer:
  """Process 0 writes; every other process stays quiet. `config` (a job's): its `report` block
  turns W&B on."""

  def __init__(self, workdir: str, total_steps: int, config=None):
    self.enabled = jax.process_index() == 0
    self.total = total_steps
    self._tb = None
    self._jsonl = None
    self._wandb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._tb = _summary_writer()(os.path.join(workdir, 'tensorboard'))
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')
      self._wandb = _wandb_run(workdir, config)

  def write(self, step: int, metrics: dict, prefix: str = 'train'):
    if not self.enabled:
      return
    scalars = {f'{prefix}/{k}': float(v) for k, v in metrics.items()}
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps({'step': step, 'time': time.time(), **scalars}) + '\n')
    self._jsonl.flush()
    if self._wandb is not None:
      self._wandb.log(scalars, step=step)
    shown = ' '.join(f'{k}={_fmt(v)}' for k, v in metrics.items())
    progress.echo(f'[{prefix} {step:>{len(str(self.total))}}/{self.total}] {shown}')

  def text(self, step: int, tag: str, text: str):
    if self.enabled:
      self._tb.add_text(tag, text, step)
      if self._wandb is not None:  # a table: W&B's text view, each sample a row with its step
        table = _import_wandb().Table(columns=['step', 'text'], data=[[step, text]])
        self._wandb.log({tag: table}, step=step)
      progress.echo(f'[{tag} {step}] {text}')

  def close(self):
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
      if self._wandb is not None:
        self._wandb.finish()


def _fmt(v) -> str:
  v = float(v)
  if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
    return f'{v:.3e}'
  return f'{v:.4f}'
