r"""Evaluates a checkpoint and writes a JSON result file plus a printed table.

  # a fine-tuned workdir (finetune.py): task metrics on the test split of its data (or --config's);
  # --split=validation scores the split best/ was chosen on
  python eval.py --checkpoint=/tmp/ft_cls [--config=configs/finetune_cls.py] [--which=latest]
  # a dpo.py workdir (reward model or DPO policy): its held-out preference metrics; a ppo.py
  # workdir: held-out reward-model score and KL of its policy beside the starting policy's
  python eval.py --checkpoint=/tmp/lm_dpo
  # an sft.py workdir (SFT, summarization, translation; decoder or T5): response loss (and the
  # initial model's), ROUGE-1/2/L and BLEU of generations (its config's `generate`), the lead
  # baseline for summarization
  python eval.py --checkpoint=/tmp/lm_sum [--config=configs/summarize.py --config.generate...]
  # a pretraining workdir (train.py) or an HF directory: perplexity, MLM/NSP (or LM) accuracy
  python eval.py --checkpoint=/tmp/lm_base [--config=configs/base.py] [--eval_batches=20]
  # a decoder (train.py / DPO workdir, HF GPT-2 dir) on a text file: HF's sliding-window
  # perplexity, windows of --window tokens (default the model's max_len) --stride apart
  python eval.py --checkpoint=/tmp/lm_gpt --text_file=book.txt --stride=512 [--window=1024]
  # a decoder or T5 on lm-evaluation-harness tasks (lm.harness; docs/harness.md): the offline tasks
  # of configs/harness/ or any lm-eval task; lm-eval's results JSON and table
  python eval.py --checkpoint=/tmp/lm_gpt --harness_tasks=pydoc_mc,pydoc_ppl,pydoc_gen \
    --harness_include=configs/harness [--harness_num_fewshot=K] [--harness_limit=N] \
    [--harness_batch_size=B]

Classification: accuracy, macro precision/recall/F1; QA: SQuAD v1.1 exact match and F1;
tokens: word accuracy and macro P/R/F1 over non-O tags. --output defaults to
CHECKPOINT/eval_results.json; predictions go beside it (eval_predictions.jsonl).
"""

import json
import os

from absl import flags
import jax
from ml_collections import config_flags

from lm import cli
from lm import distributed
from lm import jobs
from lm import metrics
from lm import perplexity
from lm import pretrained

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Optional config: the data to evaluate on.', lock_config=True
)
flags.DEFINE_string(
  'checkpoint', None, 'finetune.py, sft.py, dpo.py or train.py workdir, or an HF model dir.'
)
flags.DEFINE_string('output', None, 'JSON result file (default CHECKPOINT/eval_results.json).')
flags.DEFINE_enum('which', 'best', ['best', 'latest'], 'Fine-tuned, sft.py: best or latest params.')
flags.DEFINE_integer('eval_batches', None, 'Pretraining: batches to evaluate (default config).')
flags.DEFINE_integer('max_examples', 0, 'Fine-tuned: evaluate only the first N (0 = all).')
flags.DEFINE_enum(
  'split',
  'test',
  ['test', 'validation'],
  'Fine-tuned, dpo.py and few-shot: the split scored. test: never used to select anything; validation: '
  'what best/ and early stopping were chosen on.',
)
flags.DEFINE_string('text_file', None, 'Decoder: sliding-window perplexity on this text file.')
flags.DEFINE_integer(
  'stride', None, '--text_file: tokens between window starts (default window/2).'
)
flags.DEFINE_integer(
  'window', None, "--text_file: tokens per window (default the model's max_len)."
)
flags.DEFINE_list('harness_tasks', None, 'lm-evaluation-harness tasks to run (lm.harness).')
flags.DEFINE_string('harness_include', None, '--harness_tasks: a directory of task YAMLs.')
flags.DEFINE_integer('harness_num_fewshot', None, '--harness_tasks: few-shot examples.')
flags.DEFINE_float('harness_limit', None, '--harness_tasks: first N examples per task.')
flags.DEFINE_integer('harness_batch_size', 8, '--harness_tasks: requests per batch.')
flags.mark_flags_as_required(['checkpoint'])


def main(argv):
  del argv
  distributed.initialize()  # every process evaluates its own rows; process 0 writes
  path = FLAGS.checkpoint
  if FLAGS.config is not None and FLAGS.config.get('mode') == 'fewshot':  # configs/fewshot.py
    from lm import icl  # pylint: disable=g-import-not-at-top

    result = icl.evaluate(FLAGS.config, path, FLAGS.output, FLAGS.split)  # writes the JSON
    if jax.process_index():
      return
    print(icl.format_table(result))
    print(f'wrote {result["output"]}')
    return
  if FLAGS.harness_tasks:
    from lm import harness  # pylint: disable=g-import-not-at-top

    result = harness.evaluate(
      path,
      FLAGS.harness_tasks,
      FLAGS.harness_include,
      FLAGS.harness_num_fewshot,
      FLAGS.harness_limit,
      FLAGS.harness_batch_size,
      FLAGS.output,
    )
    if jax.process_index():
      return
    print(harness.format_table(result))
    print(f'wrote {result["output"]}')
    return
  output = FLAGS.output or os.path.join(path, 'eval_results.json')
  preds = None
  if FLAGS.text_file:
    results = perplexity.evaluate_text(path, FLAGS.text_file, FLAGS.stride, FLAGS.window)
  elif FLAGS.stride or FLAGS.window:
    raise ValueError('--stride and --window go with --text_file (sliding-window perplexity).')
  else:  # the job that wrote the workdir evaluates it (an HF directory: as pretraining)
    job = pretrained.job_of(path) or 'pretrain'
    results, preds = jobs.get(job).evaluate(
      path,
      FLAGS.config,
      split=FLAGS.split,
      which=FLAGS.which,
      max_examples=FLAGS.max_examples,
      num_batches=FLAGS.eval_batches,
    )
  if jax.process_index():
    return
  if preds is not None:
    with open(
      os.path.splitext(output)[0].replace('eval_results', 'eval_predictions') + '.jsonl',
      'w',
      encoding='utf-8',
    ) as f:
      for p in preds:
        f.write(json.dumps(p) + '\n')
  results = {'checkpoint': os.path.abspath(path), **results}
  metrics.write_json(output, results)
  split = f' on the {results["split"]} split' if 'split' in results else ''
  print(metrics.format_table(results, f'evaluation of {path}{split}'))
  print(f'wrote {output}')


if __name__ == '__main__':
  cli.run(main)
