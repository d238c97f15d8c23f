"""An HF directory of the published Qwen2-0.5B shape with random weights, for memory and time
measurements of import, generation and export on a real checkpoint size (issue 28).

    python bench/qwen_shape.py make /tmp/qwen_shape        # 494M params, bf16 safetensors, 0.92 GiB
    python bench/qwen_shape.py make /tmp/qwen_shape --shard_mb=300   # sharded, with an index
    python bench/qwen_shape.py export /tmp/qwen_shape /tmp/qwen_export
        # lm.pretrained.load (as jobs load an HF directory), then lm.hf.export_pretrained: prints
        # the times, the params' and the written tensors' dtypes, config.json's dtype and the size
        [--check]   # then transformers loads both: equal tensors and equal bf16 logits?

Shape: hidden 896, 24 layers, 14 heads, 2 kv heads, intermediate 4864, vocab 151936, tied
embeddings, q/k/v biases (Qwen2ForCausalLM). The weights are the HF random init (initializer_range
0.02), created directly in bfloat16, so nothing is downloaded. `max_position_embeddings` is 4096
(the published 32768 changes no weight). The tokenizer is a small byte-level BPE (2,000 tokens)
trained on Python's own documentation (pydoc_data): the model's vocabulary is larger than the
tokenizer's, as generate.py allows.
"""

import argparse
import json
import os
import time


def export(args):
  import jax

  import lm
  from lm import hf
  from lm import pretrained

  t0 = time.time()
  pre = pretrained.load(args.directory)
  t1 = time.time()
  hf.export_pretrained('qwen2', pre.cfg, pre.params, args.out)
  t2 = time.time()
  files = [f for f in sorted(os.listdir(args.out)) if f.endswith('.safetensors')]
  dtypes = set()
  for f in files:
    with open(os.path.join(args.out, f), 'rb') as fh:
      header = json.loads(fh.read(int.from_bytes(fh.read(8), 'little')))
    dtypes |= {t['dtype'] for k, t in header.items() if k != '__metadata__'}
  size = sum(os.path.getsize(os.path.join(args.out, f)) for f in files)
  config = json.loads(open(os.path.join(args.out, 'config.json')).read())
  info = dict(
    lm=os.path.dirname(lm.__file__),
    load_s=round(t1 - t0, 1),
    export_s=round(t2 - t1, 1),
    param_dtypes=sorted({str(x.dtype) for x in jax.tree.leaves(pre.params)}),
    safetensors_dtypes=sorted(dtypes),
    config_dtype=config.get('dtype'),
    config_torch_dtype=config.get('torch_dtype'),
    safetensors_bytes=size,
    safetensors_gib=round(size / 2**30, 3),
  )
  if args.check:  # transformers loads the export as the original: same tensors, same logits
    del pre
    import torch
    import transformers

    load = lambda d: transformers.AutoModelForCausalLM.from_pretrained(d).eval()  # noqa: E731
    a, b = load(args.directory), load(args.out)
    sa, sb = a.state_dict(), b.state_dict()
    info['transformers_dtype'] = str(b.dtype)
    info['tensors_equal'] = sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ids = torch.arange(1, 17)[None]
    with torch.no_grad():
      info['logits_equal'] = bool(torch.equal(a(ids).logits, b(ids).logits))
  print(json.dumps(info))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = ap.add_subparsers(dest='command', required=True)
  mk = sub.add_parser('make', help='write the HF directory')
  mk.add_argument('directory')
  mk.add_argument('--shard_mb', type=int, default=0, help='max shard size in MB (0: one file)')
  mk.add_argument('--seed', type=int, default=0)
  ex = sub.add_parser('export', help='load the directory with lm and export it again')
  ex.add_argument('directory')
  ex.add_argument('out')
  ex.add_argument('--check', action='store_true', help='reload both in transformers, compare')
  args = ap.parse_args()
  if args.command == 'export':
    return export(args)

  import pydoc_data.topics
  import torch
  import transformers

  from lm.data import tokenizer as tokenizer_lib

  t0 = time.time()
  tok = tokenizer_lib.train_tokenizer(pydoc_data.topics.topics.values(), 'bpe', 2000)
  config = transformers.Qwen2Config(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    use_sliding_window=False,
    bos_token_id=tok.bos_id,
    eos_token_id=tok.eos_id,
  )
  torch.manual_seed(args.seed)
  model = transformers.Qwen2ForCausalLM._from_config(config, dtype=torch.bfloat16).eval()
  n = sum(p.numel() for p in model.parameters())
  kw = dict(max_shard_size=f'{args.shard_mb}MB') if args.shard_mb else {}
  model.save_pretrained(args.directory, **kw)
  tok.save(args.directory)
  size = sum(
    os.path.getsize(os.path.join(args.directory, f))
    for f in os.listdir(args.directory)
    if f.endswith('.safetensors')
  )
  info = dict(
    directory=args.directory,
    params=n,
    safetensors_bytes=size,
    safetensors_gib=round(size / 2**30, 3),
    dtype=str(next(model.parameters()).dtype),
    tokenizer_vocab=tok.vocab_size,
    seconds=round(time.time() - t0, 1),
  )
  print(json.dumps(info))


if __name__ == '__main__':
  main()
