"""Training curves from `metrics.jsonl`: losses, eval metrics and the learning rate over steps, one
line per workdir, so runs compare on one picture (pretrained vs random init, LoRA vs full).

  python -m lm.plot WORKDIR [WORKDIR...] [--out=FILE.png] [--metrics=train/loss,eval/loss]
      [--labels=pretrained,random]

One panel per metric group (`panel_of`): train losses, eval losses, other eval metrics, learning
rate. matplotlib (the `plot` extra) is imported only when a picture is drawn: training never
needs it.
"""

import json
import os
import sys
from typing import Optional, Sequence

# Logged but left out of the default picture: restatements of the loss, counts, settings, speed.
NOT_DRAWN = ('perplexity', 'count', 'kl_budget', 'grad_norm', 'param_norm', '_per_sec')
PANELS = ('train loss', 'eval loss', 'eval metrics', 'learning rate')  # their order, left to right


def read(workdir: str) -> dict:
  """{key: (steps, values)} of WORKDIR/metrics.jsonl, steps ascending. A step logged twice (a run
  resumed from an earlier checkpoint logs its steps again) keeps its last value."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found: pass the --workdir of a training run.')
  by_key = {}
  with open(path, encoding='utf-8') as f:
    for line in f:
      row = json.loads(line)
      for k, v in row.items():
        if k not in ('step', 'time'):
          by_key.setdefault(k, {})[row['step']] = v
  return {k: (sorted(s), [s[i] for i in sorted(s)]) for k, s in by_key.items()}


def panel_of(key: str) -> str:
  """The panel a metric is drawn in: its prefix's losses, its prefix's other metrics, or the
  learning rate (keys are `prefix/name`, as lm.report writes them)."""
  prefix, _, name = key.rpartition('/')
  if name == 'learning_rate':
    return 'learning rate'
  return f'{prefix or "train"} {"loss" if name.endswith("loss") else "metrics"}'


def default_metrics(keys) -> list:
  """The train losses, eval metrics and learning rate among `keys`; a final test/ figure is a
  single point, and NOT_DRAWN is noise next to the loss."""
  return sorted(k for k in keys if panel_of(k) in PANELS and not any(s in k for s in NOT_DRAWN))


def _figure_class():
  try:
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError("lm.plot needs matplotlib: pip install -e '.[plot]'.") from e
  return Figure  # a Figure without pyplot: no GUI backend, saved by Agg


def plot(
  workdirs: Sequence[str],
  metrics: Optional[Sequence[str]] = None,
  labels: Optional[Sequence[str]] = None,
):
  """A matplotlib Figure of `metrics` (default: `default_metrics`) over steps, one panel per
  `panel_of` group, one colour per workdir (labelled by `labels`, else its basename) and one line
  style per metric in a panel."""
  if not workdirs:
    raise ValueError('pass one or more workdirs.')
  labels = list(labels or [os.path.basename(os.path.normpath(w)) for w in workdirs])
  if len(labels) != len(workdirs):
    raise ValueError(f'--labels names {len(labels)} runs for {len(workdirs)} workdirs.')
  runs = [read(w) for w in workdirs]
  logged = sorted(set().union(*runs))
  keys = list(metrics) if metrics else default_metrics(logged)
  missing = [k for k in keys if k not in logged]
  if missing or not keys:
    what = f'--metrics={",".join(missing)}: not' if missing else 'no loss, eval metric or rate'
    raise ValueError(f'{what} in {" ".join(map(str, workdirs))}; they log {", ".join(logged)}.')
  panels = {}
  for k in keys:
    panels.setdefault(panel_of(k), []).append(k)
  order = sorted(panels, key=lambda p: (PANELS.index(p) if p in PANELS else len(PANELS), p))
  cols = min(len(order), 2)
  rows = -(-len(order) // cols)
  fig = _figure_class()(figsize=(6.4 * cols, 4.0 * rows), layout='constrained')
  last = max(1, *(run[k][0][-1] for run in runs for k in keys if k in run))  # one step axis
  for i, name in enumerate(order):
    ax = fig.add_subplot(rows, cols, i + 1)
    for r, (run, label) in enumerate(zip(runs, labels)):
      for j, k in enumerate(panels[name]):
        if k in run:
          steps, values = run[k]
          shown = label if len(panels[name]) == 1 else f'{label} {k.rpartition("/")[2]}'
          style = ('-', '--', ':', '-.')[j % 4]
          marker = 'o' if len(steps) <= 20 else None  # sparse eval points stay visible
          ax.plot(steps, values, style, color=f'C{r}', marker=marker, markersize=3, label=shown)
    ax.set_xlim(0, last * 1.02)
    ax.set_title(name)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
  return fig


def main(argv):
  """python -m lm.plot WORKDIR [WORKDIR...]: writes the picture (default WORKDIR/metrics.png)."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  f = flags.FLAGS
  workdirs = argv[1:]
  fig = plot(workdirs, f.metrics, f.labels)
  out = f.out or os.path.join(workdirs[0], 'metrics.png')
  fig.savefig(out, dpi=110)
  print(f'wrote {out}')


if __name__ == '__main__':
  from absl import flags

  from lm import cli

  flags.DEFINE_string('out', None, 'The PNG written (default: the first WORKDIR/metrics.png).')
  flags.DEFINE_list('metrics', None, 'Keys of metrics.jsonl to draw (default: default_metrics).')
  flags.DEFINE_list('labels', None, 'One legend label per WORKDIR (default: their basenames).')
  sys.argv[0] = 'lm.plot'  # errors read 'lm.plot: error: ...'
  cli.run(main)
