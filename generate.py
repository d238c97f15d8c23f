"""Continue a text prompt with a trained decoder, or answer it with a T5 (the prompt is the
encoder's input).

  python generate.py --checkpoint=DIR --prompt="Once upon a time" --max_new_tokens=40 \
      --strategy=beam --num_beams=4 --num_return_sequences=2 \
      [--max_length=64] [--repetition_penalty=1.2] [--no_repeat_ngram_size=3] [--min_new_tokens=10]

DIR is a train.py workdir (causal LM, span corruption), an sft.py, dpo.py or ppo.py workdir (SFT,
DPO, PPO policy) or a HuggingFace GPT-2 / Llama / T5 directory (config.json + weights); the tokenizer is `--tokenizer`, else the one in DIR.
"""

from absl import flags

from lm import cli
from lm import generate as gen
from lm import pretrained

FLAGS = flags.FLAGS
flags.DEFINE_string(
  'checkpoint',
  None,
  'train.py workdir (clm, span) or HF decoder / T5 directory.',
  required=True,
)
flags.DEFINE_string('prompt', '', 'Text to continue.')
flags.DEFINE_string(
  'tokenizer', None, 'tokenizer.json or HF vocab files (default: the one in --checkpoint).'
)
flags.DEFINE_integer(
  'max_new_tokens', None, 'Tokens to generate per sequence (50 when --max_length is not given).'
)
flags.DEFINE_integer(
  'max_length', None, "Total length, prompt included (HF's max_length); not with --max_new_tokens."
)
flags.DEFINE_enum('strategy', 'greedy', ['greedy', 'sample', 'beam'], 'Decoding strategy.')
flags.DEFINE_float('temperature', 1.0, 'Sampling temperature.')
flags.DEFINE_integer('top_k', 0, 'Sample from the k most likely tokens (0: all).')
flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling mass (1: off).')
flags.DEFINE_integer('num_beams', 4, 'Beams for --strategy=beam.')
flags.DEFINE_float('length_penalty', 1.0, 'Beam score = logprob / length ** length_penalty.')
flags.DEFINE_integer('num_return_sequences', 1, 'Sequences to print.')
flags.DEFINE_float(
  'repetition_penalty', 1.0, 'Divide (multiply if negative) the logits of seen tokens (1: off).'
)
flags.DEFINE_integer('no_repeat_ngram_size', 0, 'No n-gram of this size twice (0: off).')
flags.DEFINE_integer('min_new_tokens', 0, 'No end of text before this many new tokens.')
flags.DEFINE_integer(
  'eos_id',
  None,
  "Stop token (default: the tokenizer's end of text, or "
  'config.json eos_token_id for an HF directory).',
)
flags.DEFINE_integer('seed', 0, 'Sampling seed.')


def load_for_generation(path: str):
  return pretrained.for_generation(path, 'generate.py', FLAGS.tokenizer)


def main(argv):
  del argv
  pre, tok, eos = load_for_generation(FLAGS.checkpoint)
  if FLAGS.eos_id is not None:
    eos = FLAGS.eos_id
  prompt = tok.encode(FLAGS.prompt)
  seq2seq = pre.kind == 'encoder-decoder'
  if seq2seq and eos is not None:  # T5's encoder input ends in EOS
    prompt = prompt + [eos]
  elif tok.bos_id is not None and tok.bos_id != tok.eos_id:  # Llama-style: text starts with BOS
    prompt = [tok.bos_id] + prompt
  if not prompt:  # GPT-2 conditions on <|endoftext|> when there is no text
    prompt = [eos if eos is not None else 0]
  if FLAGS.max_new_tokens is not None and FLAGS.max_length is not None:
    raise ValueError('pass one of --max_new_tokens and --max_length, not both.')
  if FLAGS.max_length is None:  # keep the prompt's end when prompt + new tokens overflow
    length = dict(max_new_tokens=50 if FLAGS.max_new_tokens is None else FLAGS.max_new_tokens)
    prompt = prompt[-(pre.cfg.max_len - length['max_new_tokens']) :]
  else:
    length = dict(max_length=FLAGS.max_length)
  out = gen.generate(
    pre.model,
    pre.params,
    [prompt],
    **length,
    strategy=FLAGS.strategy,
    temperature=FLAGS.temperature,
    top_k=FLAGS.top_k,
    top_p=FLAGS.top_p,
    num_beams=FLAGS.num_beams,
    length_penalty=FLAGS.length_penalty,
    num_return_sequences=FLAGS.num_return_sequences,
    eos_id=eos,
    pad_id=0 if seq2seq else tok.pad_id or 0,  # T5's decoder starts from id 0
    repetition_penalty=FLAGS.repetition_penalty,
    no_repeat_ngram_size=FLAGS.no_repeat_ngram_size,
    min_new_tokens=FLAGS.min_new_tokens,
    seed=FLAGS.seed,
  )
  for i, seq in enumerate(out[0]):
    seq = [t for t in seq if t < tok.vocab_size]  # span corruption's sentinels are not text
    print(f'--- {i}\n{"" if seq2seq else FLAGS.prompt}{tok.decode(seq)}')


if __name__ == '__main__':
  cli.run(main)
