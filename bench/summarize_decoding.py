r"""Choose the summarization decoding on validation ROUGE-L, then score it once on test.

  python bench/summarize_decoding.py --workdir=/tmp/lm_sum \
      '[{"strategy":"beam"},{"strategy":"beam","repetition_penalty":0.6}]'

WORKDIR is an sft.py run of configs/summarize.py. Each setting overrides `config.generate` of
the run's own config; the model is loaded once. Prints validation ROUGE-1/2/L of every setting,
then the chosen one's test figures beside the lead-sentence baseline (the same numbers eval.py
prints with that setting as --config.generate.*).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lm import pretrained  # noqa: E402
from lm import metrics  # noqa: E402
from lm.jobs import sft  # noqa: E402
from lm.data import text_to_text as t2t  # noqa: E402


def score(got, config, examples, setting):
  config.generate.update(setting)
  preds = sft.generate_texts(got.model, got.params, got.tokenizer, examples, config)
  return metrics.text_metrics(preds, [t2t.reference(e) for e in examples]), preds


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--workdir', required=True, help='sft.py workdir of configs/summarize.py')
  p.add_argument('settings', help='JSON list of config.generate overrides')
  args = p.parse_args()
  got = pretrained.load(args.workdir)
  config = got.config
  base = dict(config.generate)
  for k, v in dict(min_new_tokens=0, repetition_penalty=1.0, no_repeat_ngram_size=0).items():
    base.setdefault(k, v)  # a run from before these fields
  config.generate = type(config)(base)
  splits = t2t.load_splits(config.task, config.data)
  best = None
  for s in json.loads(args.settings):
    m, _ = score(got, config, splits['validation'], dict(base, **s))
    print('VALIDATION', json.dumps(s), {k: round(v, 2) for k, v in m.items()}, flush=True)
    if best is None or m['rougeL'] > best[1]:
      best = (s, m['rougeL'])
  test = splits['test']
  m, preds = score(got, config, test, dict(base, **best[0]))
  refs = [t2t.reference(e) for e in test]
  lead = metrics.text_metrics([metrics.lead_sentence(t2t.source_text(e)) for e in test], refs)
  print('CHOSEN', json.dumps(best[0]), 'validation ROUGE-L', round(best[1], 2))
  print('TEST', len(test), 'examples', {k: round(v, 2) for k, v in m.items()})
  print('LEAD', {k: round(v, 2) for k, v in lead.items()})
  for e, r, pr in list(zip(test, refs, preds))[:8]:
    print(json.dumps({'reference': r, 'prediction': pr}))


if __name__ == '__main__':
  main()
