"""lm.plot: `python -m lm.plot A B --out=x.png` writes a PNG, and the figure's lines are the
metrics.jsonl series of each workdir (a resumed run's repeated step drawn once, with its last
value); user mistakes end in one line."""

import json
import math
import struct
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip('matplotlib')
from lm import plot  # noqa: E402


def write_run(workdir, seed: int, resumed_at=None):
  """A pretraining-like metrics.jsonl: train rows every 10 steps, eval every 30, a test row at the
  end; `resumed_at`: the rows from that step on are logged twice (a run killed after them and
  resumed from an earlier checkpoint), the second time with other values."""
  workdir.mkdir()
  rows = []
  for step in range(10, 91, 10):
    rows.append(
      {
        'step': step,
        'time': 0.0,
        'train/loss': 7.0 - math.log(step) + 0.01 * seed,
        'train/mlm_loss': 6.0 - math.log(step),
        'train/learning_rate': 1e-3 * min(1.0, step / 30),
        'train/tokens_per_sec': 1000.0 + step,
      }
    )
    if step % 30 == 0:
      rows.append({'step': step, 'time': 0.0, 'eval/loss': 6.5 - step / 100, 'eval/acc': step / 90})
  rows.append({'step': 90, 'time': 0.0, 'test/acc': 0.9})
  if resumed_at is not None:
    again = [dict(r) for r in rows if r['step'] >= resumed_at and 'test/acc' not in r]
    rows += [{k: v + 0.5 if k.endswith('loss') else v for k, v in r.items()} for r in again]
  (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  return rows


def series(rows, key):
  """The reference: (steps, values) of `key`, the last row of a step winning."""
  last = {r['step']: r[key] for r in rows if key in r}
  return sorted(last), [last[s] for s in sorted(last)]


def test_cli_writes_a_png_of_two_workdirs(tmp_path):
  write_run(tmp_path / 'pretrained', 0)
  write_run(tmp_path / 'random', 1)
  out = tmp_path / 'x.png'
  proc = subprocess.run(
    [sys.executable, '-m', 'lm.plot', str(tmp_path / 'pretrained'), str(tmp_path / 'random')]
    + [f'--out={out}'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip().endswith(f'wrote {out}')
  data = out.read_bytes()
  assert data[:8] == b'\x89PNG\r\n\x1a\n' and data[12:16] == b'IHDR'
  width, height = struct.unpack('>II', data[16:24])
  assert (width, height) == (2 * 640 * 110 // 100, 2 * 400 * 110 // 100)  # 2 x 2 panels, dpi 110
  assert len(data) > 20_000


def test_lines_are_the_metrics_jsonl_series(tmp_path):
  runs = {
    'pretrained': write_run(tmp_path / 'pretrained', 0, resumed_at=60),
    'random': write_run(tmp_path / 'random', 1),
  }
  fig = plot.plot([tmp_path / n for n in runs])
  panels = {ax.get_title(): ax for ax in fig.axes}
  assert list(panels) == ['train loss', 'eval loss', 'eval metrics', 'learning rate']
  want_keys = {
    'train loss': ['train/loss', 'train/mlm_loss'],
    'eval loss': ['eval/loss'],
    'eval metrics': ['eval/acc'],
    'learning rate': ['train/learning_rate'],
  }
  for title, keys in want_keys.items():
    lines = panels[title].get_lines()
    assert len(lines) == len(runs) * len(keys), title
    for line in lines:
      label = line.get_label()
      name, _, metric = label.partition(' ')
      (key,) = [k for k in keys if k.endswith('/' + metric)] if metric else keys
      steps, values = series(runs[name], key)
      assert list(line.get_xdata()) == steps, label
      assert list(line.get_ydata()) == pytest.approx(values, rel=1e-15), label
  # the resumed run's repeated steps are drawn once, with the values logged last
  (line,) = [l for l in panels['eval loss'].get_lines() if l.get_label() == 'pretrained']
  assert list(line.get_xdata()) == [30, 60, 90] and line.get_ydata()[1] == 6.5 - 0.6 + 0.5

  fig = plot.plot([tmp_path / 'random'], metrics=['test/acc', 'train/tokens_per_sec'], labels=['r'])
  assert [ax.get_title() for ax in fig.axes] == ['test metrics', 'train metrics']
  assert [list(l.get_ydata()) for l in fig.axes[0].get_lines()] == [[0.9]]


@pytest.mark.parametrize(
  'args,message',
  [
    (['{tmp}/nowhere'], '{tmp}/nowhere/metrics.jsonl not found'),
    (['{tmp}/run', '--metrics=eval/bleu'], '--metrics=eval/bleu: not in {tmp}/run; they log'),
    (['{tmp}/run', '--labels=a,b'], '--labels names 2 runs for 1 workdirs'),
  ],
)
def test_mistakes_end_in_one_line(tmp_path, args, message):
  write_run(tmp_path / 'run', 0)
  args = [a.format(tmp=tmp_path) for a in args]
  proc = subprocess.run(
    [sys.executable, '-m', 'lm.plot', *args], cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 2
  assert proc.stderr.startswith('lm.plot: error: ' + message.format(tmp=tmp_path)), proc.stderr
  assert proc.stderr.count('\n') == 1, proc.stderr
