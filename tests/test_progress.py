"""Progress bars (lm.progress): train.py, `python -m lm.data.prepare` and eval.py under a
pseudo-terminal draw a bar with a time-left estimate; with a pipe instead (CI, a log file) their
output is the plain lines, bar-free; LM_PROGRESS=0 turns the bars off on a terminal too."""

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

import conftest
from conftest import ROOT

TINY = [
  '--config=configs/gpt_base.py',
  *conftest.TINY,
  '--config.sample_tokens=4',
  '--config.train.steps=30',
  '--config.train.warmup_steps=3',
  '--config.log_every=10',
  '--config.eval_every=30',
  '--config.eval_batches=4',
  '--config.checkpoint_every=30',
]
BAR = r'(?P<desc>[\w ]+): +100%\|.*\| *(?P<n>[\d.]+\w?)/(?P<total>[\d.]+\w?) \[[\d:]+ elapsed, 00:00 left'
TIME_LEFT = r'\d\d:\d\d left'


def _env(**extra):
  return dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', **extra)


def in_terminal(args, timeout=300, **env) -> str:
  """A command's output, run with a pseudo-terminal for its stdout and stderr (what a user at a
  terminal sees, carriage returns included). Bounded: killed after `timeout` seconds."""
  main, child = pty.openpty()
  fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack('HHHH', 40, 160, 0, 0))  # 40 x 160 chars
  proc = subprocess.Popen(
    [sys.executable, *args], cwd=ROOT, env=_env(**env), stdout=child, stderr=child
  )
  os.close(child)
  out, deadline = b'', time.time() + timeout
  try:
    while time.time() < deadline:
      if select.select([main], [], [], 1.0)[0]:
        try:
          data = os.read(main, 1 << 16)
        except OSError:  # the child closed the terminal
          break
        if not data:
          break
        out += data
      elif proc.poll() is not None:
        break
  finally:
    os.close(main)
    if proc.poll() is None:
      proc.kill()
    proc.wait(timeout=30)
  text = out.decode('utf-8', 'replace')
  assert proc.returncode == 0, f'{args} exited {proc.returncode}:\n{text[-3000:]}'
  return text


def piped(args, **env) -> str:
  proc = subprocess.run(
    [sys.executable, *args], cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout + proc.stderr


def _final_bars(text: str) -> dict:
  """{desc: (n, total)} of the bars drawn at 100% with 00:00 left."""
  return {m['desc'].strip(): (m['n'], m['total']) for m in re.finditer(BAR, text)}


@pytest.mark.slow
def test_train_prepare_and_eval_show_progress_with_time_left_on_a_terminal(tmp_path):
  corpus = tmp_path / 'corpus'
  corpus.mkdir()
  text = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()
  words = [w for w in text.split() if w.isascii()]  # one byte per character
  for i in range(4):  # ~0.6 MB of text in 4 files, blank-line separated documents
    with open(corpus / f'part{i}.txt', 'w', encoding='utf-8') as f:
      for d in range(200):
        f.write(' '.join(words[(d * 37 + i) % 500 :][:120]) + '\n\n')
  size = sum(os.path.getsize(p) for p in corpus.iterdir())
  data = [
    '--config.data.source=files',
    f'--config.data.files={corpus}',
    '--config.data.eval_fraction=0.2',
  ]

  prep = in_terminal(
    ['-m', 'lm.data.prepare', *TINY, *data, f'--config.data.prepared_dir={tmp_path / "prep"}']
  )
  bars = _final_bars(prep)
  assert 'prepare' in bars, prep[-2000:]
  # The bar counts the characters read against the files' bytes (ASCII text: equal at the end).
  assert bars['prepare'][0] == bars['prepare'][1] == f'{size / 1024:.0f}k', (bars, size)
  assert re.search(r'prepare:.*\d[\d,]* docs', prep), prep[-2000:]

  workdir = tmp_path / 'run'
  args = ['train.py', *TINY, *data, f'--config.data.prepared_dir={tmp_path / "prep"}']
  train = in_terminal([*args, f'--workdir={workdir}'])
  assert _final_bars(train).get('train') == ('30', '30'), train[-2000:]
  assert re.search(r'train: +\d+%.*' + TIME_LEFT + r'.*loss=\d+\.\d+ tokens/s=[\d,]+', train)
  assert re.search(r'\[train 30/30\] ', train)  # the log lines print above the bar

  evaluated = in_terminal(['eval.py', f'--checkpoint={workdir}', '--output=' + str(tmp_path / 'e')])
  assert _final_bars(evaluated).get('eval') == ('4', '4'), evaluated[-2000:]

  # Not a terminal (CI, a file): the plain lines and no bar (the other tests read train.py's and
  # eval.py's plain lines). LM_PROGRESS=0: the same on a terminal.
  prepare = ['-m', 'lm.data.prepare', *TINY, *data]
  for out in (
    piped([*prepare, f'--config.data.prepared_dir={tmp_path / "plain"}']),
    in_terminal([*prepare, f'--config.data.prepared_dir={tmp_path / "off"}'], LM_PROGRESS='0'),
  ):
    assert ' left' not in out and '%|' not in out and '\x1b' not in out, out[-2000:]
    assert re.search(r'prepare: 800 documents, .* 1 shard\(s\)', out), out[-2000:]
