r"""How much a text-to-text model reads its input: held-out response loss with each example's own
input, and with the input of the next example (targets unchanged).

  python bench/input_ablation.py --workdir=/tmp/lm_t5_sum [--split=validation]

WORKDIR is an sft.py run (decoder or T5). A model that ignores its input scores the same on both;
the gap is what the input is worth, in nats per target token.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from lm.jobs import sft  # noqa: E402
from lm import pretrained  # noqa: E402
from lm import sharding  # noqa: E402
from lm.data import text_to_text as t2t  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--workdir', required=True, help='sft.py workdir')
  p.add_argument('--split', default='validation', choices=['validation', 'test'])
  args = p.parse_args()
  mesh = sharding.make_mesh((-1, 1, 1))
  got = pretrained.load(args.workdir, mesh)
  config = got.config
  examples = t2t.load_splits(config.task, config.data)[args.split]
  if not all('prompt' in e for e in examples):
    raise ValueError('prompt/target examples only (a chat has no single input to swap).')
  swapped = [
    dict(e, prompt=examples[(i + 1) % len(examples)]['prompt']) for i, e in enumerate(examples)
  ]
  step = sft.make_eval_step(got.model, jax.tree.map(lambda x: x.sharding, got.params), mesh)
  for name, exs in (('own input', examples), ('next example input', swapped)):
    rows = sft.featurize(got.model, exs, got.tokenizer, config.data)
    loss = sft.response_loss(step, got.params, rows, int(config.eval_batch_size), mesh)['loss']
    print(f'{args.split} {len(exs)} examples, {name}: response loss {float(loss):.4f}')


if __name__ == '__main__':
  main()
