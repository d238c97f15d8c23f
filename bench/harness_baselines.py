"""Baselines of the shipped lm-eval tasks (configs/harness/), to read a model's scores against.

pydoc_mc: chance (the mean of 1 / number of choices) and the majority answer position (always
picking the most common gold index). pydoc_gen: exact match of always answering the most common
module. pydoc_ppl: a unigram model over a workdir's tokenizer, its counts from the text that
workdir pretrained on (Python's docs, pretraining side; add-one smoothing), scored as lm-eval scores
loglikelihood_rolling (word_perplexity, byte_perplexity, bits_per_byte over whole texts).

  python bench/harness_baselines.py --checkpoint=/tmp/lm_gpt
"""

import collections
import json
import math
import os
import re

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_string('checkpoint', None, 'The workdir whose tokenizer the unigram uses.')
flags.DEFINE_string('include', os.path.join(ROOT, 'configs', 'harness'), 'The tasks directory.')
FLAGS = flags.FLAGS


def _docs(name):
  with open(os.path.join(FLAGS.include, f'{name}.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def unigram_scores(tok, train_texts, texts) -> dict:
  """lm-eval's loglikelihood_rolling metrics of an add-one unigram over `tok`'s ids."""
  counts = collections.Counter(t for text in train_texts for t in tok.encode(text))
  total, v = sum(counts.values()), tok.vocab_size
  ll = sum(math.log((counts[t] + 1) / (total + v)) for text in texts for t in tok.encode(text))
  words = sum(len(re.split(r'\s+', text)) for text in texts)  # lm-eval's count_words
  nbytes = sum(len(text.encode('utf-8')) for text in texts)
  return {
    'word_perplexity': math.exp(-ll / words),
    'byte_perplexity': math.exp(-ll / nbytes),
    'bits_per_byte': -ll / nbytes / math.log(2),
  }


def main(argv):
  del argv
  mc = _docs('pydoc_mc')
  chance = sum(1 / len(d['choices']) for d in mc) / len(mc)
  top = collections.Counter(d['label'] for d in mc).most_common(1)[0]
  print(f'pydoc_mc ({len(mc)} docs): chance acc {chance:.4f}; majority position (index '
        f'{top[0]}) acc {top[1] / len(mc):.4f}')  # fmt: skip
  gen = _docs('pydoc_gen')
  top = collections.Counter(d['module'] for d in gen).most_common(1)[0]
  print(f'pydoc_gen ({len(gen)} docs): most common answer {top[0]!r}: exact_match '
        f'{top[1] / len(gen):.4f}')  # fmt: skip
  if FLAGS.checkpoint:
    from lm import pretrained  # pylint: disable=g-import-not-at-top
    from lm.data import corpus  # pylint: disable=g-import-not-at-top

    tok = pretrained.load(FLAGS.checkpoint).tokenizer
    texts = [d['text'] for d in _docs('pydoc_ppl')]
    scores = unigram_scores(tok, corpus.python_docs_corpus(), texts)
    print(f'pydoc_ppl ({len(texts)} docs), unigram over {FLAGS.checkpoint}\'s tokenizer: '
          + ', '.join(f'{k} {v:.4f}' for k, v in scores.items()))  # fmt: skip


if __name__ == '__main__':
  app.run(main)
