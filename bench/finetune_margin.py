r"""Pretrained vs random-init fine-tuning on the offline classification default.

  python bench/finetune_margin.py --body=WORKDIR '[{"steps":150,"lr":3e-4,"seed":0}]'

WORKDIR is a train.py run of configs/base.py (600 steps: the README's main job). Each setting
fine-tunes configs/finetune_cls.py (mean pooling, max_len 64, batch 32) twice from the same
seed, from that body and from a fresh one, and prints validation accuracy / macro-F1 of each.
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lm.jobs import finetune  # noqa: E402
import configs.finetune_cls as C  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--body', required=True, help='train.py workdir of configs/base.py')
  p.add_argument('settings', help='JSON list of {"steps", "lr", "seed"}')
  args = p.parse_args()
  for s in json.loads(args.settings):
    got = {}
    for init in ('pretrained', 'random'):
      c = C.get_config()
      c.init_checkpoint, c.init, c.num_devices, c.seed = args.body, init, 1, s.get('seed', 0)
      c.data.max_len = 64
      c.train.update(steps=s['steps'], warmup_steps=s['steps'] // 10, lr=s['lr'])
      c.update(eval_every=s['steps'], log_every=1000, checkpoint_every=1000)
      c.update(async_checkpoints=False)
      c.early_stopping.patience = 0
      with tempfile.TemporaryDirectory() as d:
        got[init] = finetune.run(c, d)['final']
    shown = {k: (round(v['accuracy'], 3), round(v['f1'], 3)) for k, v in got.items()}
    print('RESULT', s, shown, flush=True)


if __name__ == '__main__':
  main()
