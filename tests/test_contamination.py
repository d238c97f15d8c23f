"""No offline evaluation text is pretraining text.

Every held-out set built from Python's docs (classification, QA and token-tagging validation and
test, preference validation and test pairs, the few-shot test examples) is compared with the
documents train.py trains on for configs/base.py and configs/gpt_base.py (the python_docs source
streamed by lm.data.corpus, less prepare's held-out documents): no paragraph may occur in both,
and no 13-word sequence (the span GPT-3's contamination analysis matched on, Brown et al. 2020).
The overlap check is written here, independently of lm/data/python_docs.py's own filter, and is
shown to fire on injected and on real contamination."""

import os
import re

import pytest

from lm.data import split as split_lib
from lm import defaults
from lm.data import preference
from lm.data import corpus
from lm.data import harness_tasks
from lm.data import python_docs
from lm.data import text_to_text as t2t
from lm.tasks import data as task_data

N = 13
MIN_PARAGRAPH_WORDS = 2  # one-word "paragraphs" ('Usage:', 'Example:') are headings, not text


def _words(text):
  return re.findall(r'\w+', text.lower())


def _paragraphs(text):
  """Blank-line separated paragraphs, whitespace normalised (tasks join a paragraph's lines)."""
  out = set()
  for p in re.split(r'\n\s*\n', text):
    p = ' '.join(p.split())
    if len(p.split()) >= MIN_PARAGRAPH_WORDS:
      out.add(p)
  return out


def _grams(text):
  w = _words(text)
  return {tuple(w[i : i + N]) for i in range(len(w) - N + 1)}


class Index:
  """Paragraphs and 13-grams of a corpus."""

  def __init__(self, docs):
    self.paragraphs, self.grams = set(), set()
    for d in docs:
      self.paragraphs |= _paragraphs(d)
      self.grams |= _grams(d)

  def overlap(self, texts):
    """(texts sharing a paragraph, texts sharing a 13-gram) with this corpus."""
    para = [t for t in texts if _paragraphs(t) & self.paragraphs]
    gram = [t for t in texts if _grams(t) & self.grams]
    return para, gram


def _train_documents(config_module):
  data = config_module.get_config().data
  return [
    d
    for d in corpus.iter_documents(data)
    if not split_lib.doc_held_out(split_lib.doc_hash(d), float(data.eval_fraction))
  ]


@pytest.fixture(scope='module')
def pretraining():
  import configs.base  # pylint: disable=g-import-not-at-top
  import configs.gpt_base  # pylint: disable=g-import-not-at-top

  docs = _train_documents(configs.base)
  assert docs == _train_documents(configs.gpt_base)  # one source: one check covers both
  assert len(docs) > 500 and sum(map(len, docs)) > 400_000
  return Index(docs)


def _task_texts(task, split, data_cfg=None):
  cfg = data_cfg or defaults.finetuning(task).data
  examples, _ = task_data.load_examples(task, cfg, split)
  if task == 'classification':
    return [t for e in examples for t in (e['text'], e.get('text_b')) if t]
  if task == 'qa':
    return [t for e in examples for t in (e['context'], e['question'])] + [
      a['text'] for e in examples for a in e['answers']
    ]
  return [' '.join(e['tokens']) for e in examples]


@pytest.fixture(scope='module')
def eval_sets():
  """Set name -> its texts; every held-out set the offline defaults build."""
  import configs.fewshot  # pylint: disable=g-import-not-at-top

  sets = {}
  for task in ('classification', 'qa', 'tokens'):
    for split in ('validation', 'test'):
      sets[f'{task}/{split}'] = _task_texts(task, split)
  pairs = preference.load_splits(defaults.preference().data)
  for split in ('validation', 'test'):
    sets[f'preference/{split}'] = [p[f] for p in pairs[split] for f in preference.FIELDS]
  sets['fewshot/test'] = _task_texts('classification', 'test', configs.fewshot.get_config().data)
  for task in t2t.OFFLINE_TASKS:
    got = t2t.load_splits(task, defaults.text_to_text(task).data)
    for split in ('validation', 'test'):
      texts = [t for e in got[split] for t in (t2t.source_text(e), t2t.reference(e))]
      sets[f'{task}/{split}'] = texts
  harness_dir = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs', 'harness')
  sets['harness/configs'] = harness_tasks.texts(harness_dir)  # the shipped lm-eval tasks
  for name, texts in sets.items():
    assert len(texts) > 40, name
  return sets


def test_no_eval_set_overlaps_the_pretraining_corpus(pretraining, eval_sets):
  found = {}
  for name, texts in eval_sets.items():
    para, gram = pretraining.overlap(texts)
    if para or gram:
      found[name] = (len(para), len(gram), (para + gram)[0][:200])
  assert not found, f'eval text in the pretraining corpus (paragraphs, 13-grams, example): {found}'


def test_the_check_finds_injected_pretraining_text(pretraining, eval_sets):
  docs = python_docs.pretraining_documents()
  paragraph = max(_paragraphs(docs[len(docs) // 2]), key=len)
  texts = list(eval_sets['classification/test']) + [paragraph]
  para, gram = pretraining.overlap(texts)
  assert para == [paragraph] and gram == [paragraph]
  # 13 words of it inside unrelated text: no shared paragraph, one shared 13-gram.
  run = ' '.join(_words(paragraph)[:N])
  para, gram = pretraining.overlap([f'Nothing to see. {run} and more words after it.'])
  assert not para and len(gram) == 1
  para, gram = pretraining.overlap([' '.join(_words(paragraph)[: N - 1])])
  assert not para and not gram  # 12 words: below the threshold


def test_the_check_finds_the_contamination_an_unsplit_corpus_had(eval_sets):
  """Before the split, python_docs pretraining read every pydoc topic and every module's
  docstrings; against that corpus every eval set overlaps (all 140 classification validation
  paragraphs did)."""
  unsplit = Index(python_docs.downstream_documents() + python_docs.pretraining_documents())
  for name, texts in eval_sets.items():
    para, gram = unsplit.overlap(texts)
    assert para or gram, name
  para, _ = unsplit.overlap(eval_sets['classification/validation'])
  assert len(para) == len(eval_sets['classification/validation'])


def test_text_to_text_defaults_are_real_and_split():
  """The offline SFT and summarization sets: three disjoint splits of real examples (a docstring
  body and its one-line summary; a question on a stdlib callable and its docstring)."""
  for task in t2t.OFFLINE_TASKS:
    got = t2t.load_splits(task, defaults.text_to_text(task).data)
    assert min(len(v) for v in got.values()) > 80, task
    inputs = [{t2t.source_text(e) for e in got[s]} for s in t2t.SPLITS]
    assert not (inputs[0] & inputs[1] or inputs[0] & inputs[2] or inputs[1] & inputs[2]), task
  ex = t2t.load_splits('summarize', defaults.text_to_text('summarize').data)['test'][0]
  assert ex['target'].endswith('.') and '\n' not in ex['target']
  assert len(ex['prompt'].split()) >= 15
