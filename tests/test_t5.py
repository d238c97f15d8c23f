"""T5 (`lm.models.t5`): encoder outputs and logits match HF PyTorch on padded batches for a v1.0-style
(ReLU, tied output layer with the d_model**-0.5 rescale) and a v1.1-style (gated-GELU, untied
lm_head) tiny random config; greedy and beam search through `lm.generate` match HF `generate`
token for token; exports load in `transformers`. The tiny configs use 8 buckets up to distance
20, so sequences of 30 reach the logarithmic buckets, and d_kv * heads != d_model."""

import dataclasses
import functools

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
from test_hf import _assert_logits_match, _assert_trees_equal, _perturb  # noqa: E402

from lm import generate as G  # noqa: E402
from lm import hf  # noqa: E402
from lm import losses  # noqa: E402
from lm import models as M  # noqa: E402
from lm.models import t5  # noqa: E402

SLOW = pytest.mark.slow
TINY = dict(
  vocab_size=64,
  d_model=16,
  d_kv=6,
  d_ff=24,
  num_heads=3,
  relative_attention_num_buckets=8,
  relative_attention_max_distance=20,
  dropout_rate=0.0,
  decoder_start_token_id=0,
)
# HF's cache sizes itself by num_layers: its generate fails when the decoder is deeper (the export
# test has one).
VERSIONS = {
  'v1_0': dict(feed_forward_proj='relu', num_layers=3, num_decoder_layers=2),
  'v1_1': dict(feed_forward_proj='gated-gelu', tie_word_embeddings=False, num_layers=3,
               num_decoder_layers=2),
}  # fmt: skip


@functools.cache
def _hf_model(version, generation=False):
  """Parity: HF's init plus noise on every tensor (the RMSNorm scales start at 1). Generation:
  initializer_factor 3 without the noise, where greedy decoding does not repeat one token (with
  either, the logits reach ~100 and agree to 1e-4 only)."""
  torch.manual_seed(0)
  config = transformers.T5Config(
    **TINY, **VERSIONS[version], initializer_factor=3.0 if generation else 1.0
  )
  model = transformers.T5ForConditionalGeneration(config).eval()
  return model if generation else _perturb(model)


@functools.cache
def _ours(version, generation=False):
  hf_model = _hf_model(version, generation)
  kind, cfg = hf.config_from_hf(hf_model.config)
  assert kind == 't5'
  return t5.T5(cfg), jax.tree.map(np.asarray, hf.from_hf(kind, hf_model.state_dict(), cfg))


def _batch():
  """Right-padded source rows and decoder rows of different lengths."""
  rng = np.random.default_rng(0)
  ids, dec = rng.integers(2, 64, (3, 30)), rng.integers(2, 64, (3, 25))
  mask, dec_mask = np.ones_like(ids), np.ones_like(dec)
  mask[1, 20:] = mask[2, 9:] = dec_mask[2, 10:] = 0
  return ids, mask, dec, dec_mask


def _hf_forward(model, ids, mask, dec, dec_mask):
  t = lambda x: torch.from_numpy(np.asarray(x, np.int64))
  with torch.no_grad():
    out = model(
      input_ids=t(ids),
      attention_mask=t(mask),
      decoder_input_ids=t(dec),
      decoder_attention_mask=t(dec_mask),
    )
  return out.encoder_last_hidden_state.numpy(), out.logits.numpy()


def test_relative_buckets_match_hf():
  from transformers.models.t5.modeling_t5 import T5Attention

  rel = np.arange(-300, 301)[None, :] - np.arange(0, 50)[:, None]
  for bidirectional in (True, False):
    for buckets, dist in ((32, 128), (8, 20)):
      ref = T5Attention._relative_position_bucket(
        torch.from_numpy(rel), bidirectional, buckets, dist
      ).numpy()
      ours = t5.relative_bucket(rel.astype(np.int32), bidirectional, buckets, dist)
      np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize('version', ['v1_1', pytest.param('v1_0', marks=SLOW)])
def test_encoder_and_logits_match_hf_and_round_trip(version):
  model, params = _ours(version)
  cfg = model.cfg
  assert (cfg.mlp, cfg.activation, cfg.tie_embeddings) == {
    'v1_0': ('dense', 'relu', True),
    'v1_1': ('gated', 'gelu_tanh', False),
  }[version]
  ids, mask, dec, dec_mask = _batch()
  enc_ref, logits_ref = _hf_forward(_hf_model(version), ids, mask, dec, dec_mask)
  enc = model.apply({'params': params}, ids, mask, method=model.encode)
  logits = model.apply({'params': params}, ids, dec, mask, dec_mask)
  _assert_logits_match({'encoder': enc}, {'encoder': enc_ref}, mask)
  _assert_logits_match({'logits': logits}, {'logits': logits_ref}, dec_mask)
  sd = {k: v.numpy() for k, v in _hf_model(version).state_dict().items()}
  back = hf.to_hf('t5', params, cfg)
  assert set(back) == set(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


PROMPTS = [[5, 17, 42, 8, 3, 9, 30, 12, 40], [11, 60]]
N = 10


def _hf_generate(version, **kwargs):
  ids, mask = G.left_pad(PROMPTS, 0)
  out = _hf_model(version, generation=True).generate(
    torch.tensor(ids, dtype=torch.long),
    attention_mask=torch.tensor(mask),
    do_sample=False,
    eos_token_id=None,
    **{'max_new_tokens': N, **kwargs},
  )
  return out[:, 1:].numpy().tolist()  # HF returns the decoder start token first


@pytest.mark.parametrize('version', ['v1_1', pytest.param('v1_0', marks=SLOW)])
def test_greedy_matches_hf_generate(version):
  model, params = _ours(version, generation=True)
  greedy = G.generate(model, params, PROMPTS, max_new_tokens=N)
  assert [r[0] for r in greedy] == _hf_generate(version)
  assert any(len(set(r[0])) > 3 for r in greedy), greedy  # not only degenerate repetitions
  # An encoder-decoder's max_length counts the decoder's start token, not the prompt (HF's).
  # (N + 1 gives the N tokens above, so the compiled loop is reused.)
  assert G.generate(model, params, PROMPTS, max_length=N + 1) == greedy
  assert _hf_generate(version, max_new_tokens=None, max_length=N + 1) == [r[0] for r in greedy]


@pytest.mark.parametrize('version', sorted(VERSIONS))
@SLOW
def test_beam_matches_hf_generate(version):
  model, params = _ours(version, generation=True)
  beam = G.generate(
    model, params, PROMPTS, max_new_tokens=N, strategy='beam', num_beams=3, num_return_sequences=2
  )
  ref = _hf_generate(version, num_beams=3, num_return_sequences=2, length_penalty=0.7)
  assert [s for r in beam for s in r] == ref


def _variant(version, generation=False, **changes):
  """(model, params) of `_ours` with config `changes`; a scanned one imports the same HF model
  (params stacked per stack: encoder and decoder of different depths)."""
  model, params = _ours(version, generation)
  cfg = dataclasses.replace(model.cfg, **changes)
  if cfg.scan_layers:
    params = hf.from_hf('t5', _hf_model(version, generation).state_dict(), cfg)
  return t5.T5(cfg), params


@pytest.mark.parametrize(
  'changes',
  [dict(attention_impl='xla'), dict(scan_layers=True, remat='dots')],
  ids=['xla', 'scan_remat'],
)
def test_scan_remat_and_xla_attention_match_hf(changes):
  """T5 scanned (params stacked per stack, encoder and decoder of different depths) and
  rematerialised, or through jax.nn.dot_product_attention ('xla': T5's relative bias and scale=1
  passed to it), computes HF's logits; a scanned T5 exports back to the HF state dict."""
  model, params = _variant('v1_1', **changes)
  ids, mask, dec, dec_mask = _batch()
  logits = jax.jit(model.apply)({'params': params}, ids, dec, mask, dec_mask)
  _, ref = _hf_forward(_hf_model('v1_1'), ids, mask, dec, dec_mask)
  _assert_logits_match({'logits': logits}, {'logits': ref}, dec_mask)
  if model.cfg.scan_layers:
    assert params['decoder']['layers']['attention']['query']['kernel'].shape[0] == 2
    sd = {k: v.numpy() for k, v in _hf_model('v1_1').state_dict().items()}
    _assert_trees_equal(hf.to_hf('t5', params, model.cfg), sd)


def _loss_and_grads(model, params):
  """The span loss on `_batch` (its decoder rows as targets) and its gradient as an HF state
  dict, so scanned and unrolled stacks compare leaf by leaf."""
  ids, mask, dec, dec_mask = _batch()

  def loss(p):
    logits = model.apply({'params': p}, ids, t5.shift_right(dec), mask, dec_mask)
    return losses.cross_entropy_sums(logits, dec, dec_mask.astype(np.float32))[0]

  # XLA's cheap CPU pipeline: compiles in a third of the time (these tiny graphs run in ms)
  fast = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
  value, grads = jax.jit(jax.value_and_grad(loss), compiler_options=fast)(params)
  return float(value), hf.to_hf('t5', grads, model.cfg)


@SLOW  # three compiled backward passes: ~8 s
def test_remat_gives_the_plain_gradient():
  """remat='full' (unrolled) and 'dots' (scanned, with the 'xla' kernel): the plain stack's loss
  and gradient."""
  ref_loss, ref = _loss_and_grads(*_ours('v1_1'))
  for changes in (dict(remat='full'), dict(remat='dots', scan_layers=True, attention_impl='xla')):
    loss, grads = _loss_and_grads(*_variant('v1_1', **changes))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert set(grads) == set(ref)
    for k, g in ref.items():
      np.testing.assert_allclose(grads[k], g, rtol=1e-4, atol=1e-4 * np.abs(g).max(), err_msg=k)


def test_greedy_scanned_rematerialised_with_xla_attention_matches_hf_generate():
  """Decoding under scan (the self- and cross-attention caches stacked per layer), remat and the
  'xla' kernel (causality from the cache's mask, not is_causal) gives HF's greedy tokens."""
  changes = dict(scan_layers=True, remat='full', attention_impl='xla')
  model, params = _variant('v1_1', generation=True, **changes)
  greedy = G.generate(model, params, PROMPTS, max_new_tokens=N)
  assert [r[0] for r in greedy] == _hf_generate('v1_1')


OURS = dict(
  vocab_size=64,
  hidden_size=16,
  d_kv=6,
  mlp_dim=24,
  num_heads=3,
  num_layers=2,
  relative_buckets=8,
  relative_max_distance=20,
  dropout_rate=0.0,
)
EXPORT = {
  'v1_0': dict(),
  'v1_1': dict(mlp='gated', activation='gelu_tanh', num_decoder_layers=3, tie_embeddings=False),
}


@pytest.mark.parametrize('version', ['v1_1', pytest.param('v1_0', marks=SLOW)])
def test_export_loads_in_transformers(version, tmp_path):
  cfg = t5.T5Config(**OURS, **EXPORT[version])
  ids, mask, dec, dec_mask = _batch()
  params = nn.unbox(t5.T5(cfg).init(jax.random.PRNGKey(0), ids[:, :4]))['params']
  hf.export_pretrained('t5', cfg, params, tmp_path)
  model, info = transformers.AutoModelForSeq2SeqLM.from_pretrained(
    tmp_path, output_loading_info=True
  )
  assert type(model).__name__ == 'T5ForConditionalGeneration'
  assert not any(info.values()), info
  logits = t5.T5(cfg).apply({'params': params}, ids, dec, mask, dec_mask)
  _, ref = _hf_forward(model.eval(), ids, mask, dec, dec_mask)
  _assert_logits_match({'logits': logits}, {'logits': ref}, dec_mask)
  got_kind, got_cfg, got = hf.import_pretrained(tmp_path)
  assert (got_kind, got_cfg) == ('t5', cfg)
  _assert_trees_equal(got, jax.tree.map(np.asarray, params))
  from lm import pretrained

  assert pretrained.load(str(tmp_path)).kind == 'encoder-decoder'


def test_config_refusals():
  d = transformers.T5Config(**TINY, **VERSIONS['v1_0']).to_dict()
  with pytest.raises(ValueError, match='feed_forward_proj'):
    hf.config_from_hf({**d, 'feed_forward_proj': 'gated-swish'})
  with pytest.raises(ValueError, match='num_kv_heads'):
    t5.T5Config(num_kv_heads=2)
  with pytest.raises(ValueError, match='position'):
    hf.config_to_hf('t5', M.ModelConfig())


SAMPLES = [
  'Hello world, the assert statement',
  '  two  spaces\n\tand a tab, 12345 digits',
  'unicode é ü ﬁ ½ 日本 falls back',
]


def test_sentencepiece_unigram_model_and_tokenizer_json_load(tmp_path):
  """A sentencepiece unigram model trained here like T5's spiece.model (NFKC normalisation, pad 0,
  EOS 1, UNK 2, no BOS): ours encodes and decodes as sentencepiece does, and the tokenizer.json
  transformers' T5Tokenizer writes from it (with T5's 100 <extra_id_k>) loads with HF's ids."""
  import argparse
  import inspect

  spm = pytest.importorskip('sentencepiece')
  from lm.data import tokenizer

  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(inspect.getsource(argparse).splitlines()),
    model_prefix=str(tmp_path / 'spiece'),
    vocab_size=600,
    model_type='unigram',
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    minloglevel=2,
  )
  sp = spm.SentencePieceProcessor(model_file=str(tmp_path / 'spiece.model'))
  ours = tokenizer.from_hf_files(str(tmp_path))  # a directory with T5's file name
  assert (ours.vocab_size, ours.eos_id, ours.unk_id) == (600, 1, 2)
  for text in SAMPLES:
    ids = sp.encode(text)
    assert ours.encode(text) == ids, text
    if sp.unk_id() not in ids:  # sentencepiece decodes UNK as ' ⁇ ', ours skips it as special
      assert ours.decode(ids) == sp.decode(ids), text
  assert sum(sp.unk_id() not in sp.encode(t) for t in SAMPLES) >= 1

  hf_tok = transformers.T5Tokenizer(vocab_file=str(tmp_path / 'spiece.model'))
  hf_tok.save_pretrained(tmp_path / 'hf')
  loaded = tokenizer.from_hf_files(str(tmp_path / 'hf'))
  assert loaded.eos_id == hf_tok.eos_token_id == 1
  for text in SAMPLES + ['a span <extra_id_0> and <extra_id_99>']:
    assert loaded.encode(text) == hf_tok.encode(text, add_special_tokens=False), text


@SLOW  # the fast tier's 3-minute budget; test_span.py keeps the span batches fast
def test_span_loss_equals_hf_labels_loss():
  """objective='span' on a span-corrupted batch: our loss (decoder inputs = targets shifted right
  behind id 0, as SpanBatcher builds them) equals HF T5's mean cross-entropy given `labels`."""
  from lm import objectives
  from lm.data import span

  model, params = _ours('v1_1')
  rows = []
  for seed in range(2):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, 50, 37)
    noise = span.random_spans_noise_mask(37, 0.15, 3.0, rng)
    rows.append(span.corrupt(tokens, noise, first_sentinel=50, eos_id=1))
  ids, targets = (np.stack([r[i] for r in rows]) for i in (0, 1))
  batch = dict(
    input_ids=ids, decoder_input_ids=np.asarray(t5.shift_right(targets)), targets=targets
  )
  sums = objectives.loss_sums('span', model, params, batch, None, True)
  norms = objectives.normalizers('span', batch)
  with torch.no_grad():
    t = lambda x: torch.from_numpy(x.astype(np.int64))
    ref = _hf_model('v1_1')(input_ids=t(ids), labels=t(targets)).loss
  np.testing.assert_allclose(float(objectives.total_loss(sums, norms)), float(ref), rtol=1e-5)
