"""Where metrics go: TensorBoard, `metrics.jsonl` in the workdir, and a line on the terminal."""

import json
import os
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


class Writer:
  """Process 0 writes; every other process stays quiet."""

  def __init__(self, workdir: str, total_steps: int):
    self.enabled = jax.process_index() == 0
    self.total = total_steps
    self._tb = None
    self._jsonl = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._tb = _summary_writer()(os.path.join(workdir, 'tensorboard'))
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')

  def write(self, step: int, metrics: dict, prefix: str = 'train'):
    if not self.enabled:
      return
    scalars = {f'{prefix}/{k}': float(v) for k, v in metrics.items()}
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps({'step': step, 'time': time.time(), **scalars}) + '\n')
    self._jsonl.flush()
    shown = ' '.join(f'{k}={_fmt(v)}' for k, v in metrics.items())
    progress.echo(f'[{prefix} {step:>{len(str(self.total))}}/{self.total}] {shown}')

  def text(self, step: int, tag: str, text: str):
    if self.enabled:
      self._tb.add_text(tag, text, step)
      progress.echo(f'[{tag} {step}] {text}')

  def close(self):
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def _fmt(v) -> str:
  v = float(v)
  if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
    return f'{v:.3e}'
  return f'{v:.4f}'
