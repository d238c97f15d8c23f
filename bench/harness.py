"""lm-evaluation-harness scoring time: our backend (`lm.harness.HarnessLM`, jitted JAX) vs lm-eval's
own `hf` backend (HFLM, PyTorch) on the same HF directory and the same requests, in one process.

The requests are built once by lm-eval from the tasks (configs/harness/ by default) and handed to
both backends by request type (loglikelihood, loglikelihood_rolling, generate_until). Each backend
runs them twice: the first pass includes our jit compiles (and torch's warm-up), the second is the
steady state. Prints seconds per request type and pass, HF / ours, and the per-request
log-likelihood agreement (max |ours - HF|; the tests hold it under 1e-4) and generations equal.

  # a workdir: export it first (both backends read one HF directory)
  python export.py --checkpoint=/tmp/lm_gpt --output=/tmp/lm_gpt_hf
  python bench/harness.py --checkpoint=/tmp/lm_gpt_hf [--limit=50] [--batch_size=8]
"""

import os
import time

from absl import app
from absl import flags
import numpy as np

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_string('checkpoint', None, 'An HF decoder (or T5) directory.', required=True)
flags.DEFINE_list('tasks', ['pydoc_mc', 'pydoc_ppl', 'pydoc_gen'], 'lm-eval tasks.')
flags.DEFINE_string('include', os.path.join(ROOT, 'configs', 'harness'), 'Task YAML directory.')
flags.DEFINE_integer('limit', None, 'First N documents per task (default all).')
flags.DEFINE_integer('batch_size', 8, 'Requests per batch, both backends.')
flags.DEFINE_integer('torch_threads', 0, 'torch.set_num_threads (0: torch default).')
FLAGS = flags.FLAGS
KINDS = ('loglikelihood', 'loglikelihood_rolling', 'generate_until')


def _requests():
  """{request type: [Instance]} of the tasks' first --limit documents, as lm-eval builds them."""
  from lm_eval.tasks import TaskManager, get_task_dict  # pylint: disable=g-import-not-at-top

  include = os.path.abspath(FLAGS.include)
  cwd = os.getcwd()
  os.chdir(include)  # the YAMLs' data_files are relative to their directory
  try:
    tasks = get_task_dict(FLAGS.tasks, TaskManager(include_path=include))
    out = {k: [] for k in KINDS}
    for task in tasks.values():
      task.build_all_requests(limit=FLAGS.limit, rank=0, world_size=1)
      for inst in task.instances:
        out[inst.request_type].append(inst)
  finally:
    os.chdir(cwd)
  return out


def _run(model, requests):
  """{(kind, pass): seconds}, and the second pass's results per kind."""
  times, results = {}, {}
  for p in (1, 2):
    for kind, reqs in requests.items():
      if reqs:
        start = time.perf_counter()
        results[kind] = getattr(model, kind)(reqs, disable_tqdm=True)
        times[kind, p] = time.perf_counter() - start
  return times, results


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top
  from lm_eval.models.huggingface import HFLM  # pylint: disable=g-import-not-at-top

  from lm import harness  # pylint: disable=g-import-not-at-top

  if FLAGS.torch_threads:
    torch.set_num_threads(FLAGS.torch_threads)
  requests = _requests()
  print(f'checkpoint {FLAGS.checkpoint}; tasks {",".join(FLAGS.tasks)}; limit {FLAGS.limit}; '
        f'batch {FLAGS.batch_size}; torch threads {torch.get_num_threads()}')  # fmt: skip
  print('requests: ' + ', '.join(f'{k} {len(v)}' for k, v in requests.items()))
  ours = harness.HarnessLM(FLAGS.checkpoint, batch_size=FLAGS.batch_size)
  hf = HFLM(pretrained=FLAGS.checkpoint, batch_size=FLAGS.batch_size, device='cpu')
  if hf.max_length != ours.max_length:  # T5: HF has no position limit to read
    ours = harness.HarnessLM(
      FLAGS.checkpoint, batch_size=FLAGS.batch_size, max_length=hf.max_length
    )
  t_ours, r_ours = _run(ours, requests)
  t_hf, r_hf = _run(hf, requests)
  print(f'\n| request type | n | pass | ours s | HF s | HF / ours |\n|{"---|" * 6}')
  for kind in KINDS:
    for p in (1, 2):
      if (kind, p) in t_ours:
        a, b = t_ours[kind, p], t_hf[kind, p]
        print(f'| {kind} | {len(requests[kind])} | {p} | {a:.2f} | {b:.2f} | {b / a:.2f} |')
  total = {p: (sum(t_ours[k] for k in t_ours if k[1] == p),
               sum(t_hf[k] for k in t_hf if k[1] == p)) for p in (1, 2)}  # fmt: skip
  for p, (a, b) in total.items():
    print(f'| all | {sum(map(len, requests.values()))} | {p} | {a:.2f} | {b:.2f} | {b / a:.2f} |')
  print()
  if requests['loglikelihood']:
    got, want = (np.array([x[0] for x in r['loglikelihood']]) for r in (r_ours, r_hf))
    flags_equal = [x[1] for x in r_ours['loglikelihood']] == [x[1] for x in r_hf['loglikelihood']]
    print(f'loglikelihood: max |ours - HF| {np.max(np.abs(got - want)):.2e}; '
          f'is-greedy flags equal: {flags_equal}')  # fmt: skip
  if requests['loglikelihood_rolling']:
    got, want = (np.array(r['loglikelihood_rolling']) for r in (r_ours, r_hf))
    print(f'loglikelihood_rolling: max |ours - HF| {np.max(np.abs(got - want)):.2e}, '
          f'max relative {np.max(np.abs(got - want) / np.abs(want)):.2e}')  # fmt: skip
  if requests['generate_until']:
    same = sum(a == b for a, b in zip(r_ours['generate_until'], r_hf['generate_until']))
    print(f'generate_until: {same} / {len(requests["generate_until"])} generations equal')


if __name__ == '__main__':
  app.run(main)
