"""An lm-evaluation-harness backend (`lm_eval --model lm`, `eval.py --harness_tasks`) for any
decoder workdir or HF decoder directory, and T5 through the encoder-decoder path (HFLM's seq2seq:
the context encoded, the continuation scored as the decoder's labels), scored on a mesh.

Tokenization is lm-eval's `hf` backend's (HFLM), so the two score the same tokens: the context /
continuation split of `TemplateLM._encode_pair` (the context's trailing spaces move to the
continuation; the continuation is the whole text's tokens past the context's), the empty-context
prefix token, the tokenizer's own special tokens unless `add_bos_token` says otherwise, contexts
cut from the left to the model's length, lm-eval's rolling windows, and generation contexts cut
to max_length - max_gen_toks.

Scores are bit-identical at every batch size and on every mesh: a request is one right-padded
row with positions from 0 under causal attention (padding and neighbours never reach its
tokens), padded to a width of its own (batches never mix widths) and computed alone, the params
whole on every device (`_row_by_row`); its log-probs are float32. Rows are sorted by length
(HFLM's order); each process puts only its own rows. Greedy generation is batched (lm.generate).
"""

import collections
import functools
import json
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lm import generate as generate_lib
from lm import losses
from lm import progress
from lm import pretrained as pretrained_lib
from lm import sharding
from lm.models import t5 as t5_lib

try:
  from lm_eval.api.model import TemplateLM
  from lm_eval.api.registry import register_model
  from lm_eval import utils as lm_eval_utils
except ImportError as e:  # pragma: no cover: the extra is missing
  raise ImportError("lm.harness needs lm-evaluation-harness: pip install -e '.[harness]'") from e

DEFAULT_MAX_GEN_TOKS = 256  # HFLM's
_WIDTH = 16  # padded widths are multiples of this: few compiled shapes
T5_START_ID = 0  # T5's decoder_start_token_id (its pad id), also lm.jobs.sft's


def _bucket(n: int, cap: int) -> int:
  return min(-(-n // _WIDTH) * _WIDTH, cap)


def _sum_and_greedy(logits, targets, weights):
  """Per row: the summed float32 log-prob of its targets and whether each is the argmax."""
  tok = losses.gather_logps(logits, targets)
  real = weights > 0
  greedy = jnp.all((jnp.argmax(logits, axis=-1) == targets) | ~real, axis=-1)
  return jnp.sum(jnp.where(real, tok, 0.0), axis=-1), greedy


def _row_by_row(score_row, model, params, mesh, *rows):
  """`score_row(model, params, *one row)` for every row, each row computed alone: params whole on
  every device (shard_map), each device mapping over its own rows. XLA:CPU picks its kernels,
  and so their summation order, by shape (a row in a batch of 7, or on a tensor-parallel mesh,
  differs from itself alone in the last bits); alone, at a shape of its own, it is the same
  computation at every batch size and on every mesh."""

  def local(params, *rows):
    one = lambda r: jax.tree.map(lambda y: y[0], score_row(model, params, *(x[None] for x in r)))
    return jax.lax.map(one, rows)

  rows_spec = jax.sharding.PartitionSpec(('data', 'fsdp'))
  return jax.shard_map(
    local,
    mesh=mesh,
    in_specs=(jax.sharding.PartitionSpec(),) + (rows_spec,) * len(rows),
    out_specs=rows_spec,
    check_vma=False,
  )(params, *rows)


def _decoder_row(model, params, ids, where, targets, weights):
  """A decoder: logits only at the `where` positions ([B, C]), so no [B, T, vocab] tensor."""

  def at(m, ids, where):
    h = m.hidden(ids)  # positions from 0; causal: right padding reaches no real token
    return m.logits(jnp.take_along_axis(h, where[..., None], axis=1))

  return _sum_and_greedy(model.apply({'params': params}, ids, where, method=at), targets, weights)


def _seq2seq_row(model, params, ids, mask, targets, weights):
  """An encoder-decoder (HFLM's seq2seq): the context encoded under its padding mask, the
  continuation as the decoder's labels (inputs: T5's start id 0, then the labels shifted)."""

  def at(m, ids, mask, dec):
    return m.logits(m.hidden(dec, m.encode(ids, mask), mask))

  dec = t5_lib.shift_right(targets, T5_START_ID)
  logits = model.apply({'params': params}, ids, mask, dec, method=at)
  return _sum_and_greedy(logits, targets, weights)


_scores = jax.jit(_row_by_row, static_argnames=('score_row', 'model', 'mesh'))


def _mesh(shape) -> Optional[jax.sharding.Mesh]:
  """A mesh from '8x1x1' / '8,1,1' (model_args are strings) or a tuple, on the first devices it
  needs."""
  if shape is None or shape == '':
    return None
  if isinstance(shape, str):
    shape = [int(s) for s in shape.replace('x', ',').split(',') if s.strip()]
  n = int(np.prod(shape)) if -1 not in shape else None
  return sharding.make_mesh(tuple(shape), jax.devices()[:n] if n else None)


@register_model('lm')
class HarnessLM(TemplateLM):
  """lm-eval's model interface over `lm.pretrained.load(path)`.

  model_args (`--model_args` / `simple_evaluate(model_args=...)`): `pretrained` (or `checkpoint`)
  the workdir or HF directory, `batch_size` (lm-eval's CLI: its `--batch_size`), `max_length`
  (default the model's), `max_gen_toks`, `add_bos_token`, `mesh_shape` ('8x1x1': lm-eval's CLI
  splits model_args at commas; default: the workdir job's mesh, else all devices data-parallel),
  `param_dtype` (an HF directory's), `seed` (sampling). Other arguments lm-eval passes (device,
  max_batch_size) are ignored: JAX places the work.
  """

  def __init__(
    self,
    pretrained: Optional[str] = None,
    checkpoint: Optional[str] = None,
    batch_size=8,
    max_length: Optional[int] = None,
    max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
    add_bos_token: Optional[bool] = None,
    mesh_shape=None,
    param_dtype: Optional[str] = None,
    seed: int = 0,
    mesh=None,
    **unused,
  ):
    super().__init__()
    path = pretrained or checkpoint
    if not path:
      raise ValueError('the lm backend needs pretrained=DIR: a workdir or an HF directory.')
    self.path = path
    if mesh is None:
      mesh = _mesh(mesh_shape)
    if mesh is None and pretrained_lib.is_workdir(path):
      mesh = sharding.config_mesh(pretrained_lib.saved_config(path))
    self.mesh = mesh or sharding.make_mesh((-1, 1, 1))
    pre = pretrained_lib.load(path, self.mesh, param_dtype=param_dtype).body(path, 'the harness')
    if pre.kind not in ('decoder', 'encoder-decoder'):
      raise ValueError(
        f'{path} holds an {pre.kind}: the harness backend scores decoders (GPT-2, Llama family) '
        'and encoder-decoders (T5).'
      )
    # TemplateLM._encode_pair reads it: a seq2seq context and continuation are encoded apart
    self.backend = 'seq2seq' if pre.kind == 'encoder-decoder' else 'causal'
    if pre.tokenizer is None:
      raise ValueError(f'no tokenizer in {path}: put its tokenizer.json there.')
    self.pre, self.model, self.tok = pre, pre.model, pre.tokenizer
    self.params = sharding.placed(pre.params, self.mesh)
    self._batch_size = int(batch_size) if str(batch_size) != 'auto' else 8
    self._max_length = int(max_length or pre.cfg.max_len)
    self._max_gen_toks = int(max_gen_toks)
    self.add_bos_token = _bool(add_bos_token)
    self.seed = int(seed)

  # ------------------------------------------------------------------ what lm-eval reads

  @property
  def eot_token_id(self) -> int:
    return self.tok.eos_id

  @property
  def prefix_token_id(self) -> int:
    return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def max_gen_toks(self) -> int:
    return self._max_gen_toks

  @property
  def batch_size(self) -> int:
    return self._batch_size

  @property
  def rank(self) -> int:
    return 0  # to lm-eval each process is a world of one: it builds and scores every request

  @property
  def world_size(self) -> int:
    return 1  # (lm-eval would hand rank r of n its docs r, r + n, ...); the mesh splits rows

  @property
  def tokenizer_name(self) -> str:
    return os.path.abspath(self.path).replace('/', '__')

  def tok_encode(self, string: str, add_special_tokens=None, left_truncate_len=None, **_):
    """HFLM's tok_encode: the tokenizer's own special tokens (its post-processor: a Llama BOS,
    nothing for GPT-2) unless `add_special_tokens` or `add_bos_token` say otherwise, none when
    the text already starts with the prefix token's text."""
    add = add_special_tokens if add_special_tokens is not None else self.add_bos_token
    if add_special_tokens is None and string.startswith(
      self.tok.decode([self.prefix_token_id], skip_special_tokens=False)
    ):
      add = False
    ids = self.tok.hf.encode(string, add_special_tokens=True if add is None else add).ids
    return ids[-left_truncate_len:] if left_truncate_len else ids

  def tok_decode(self, ids, skip_special_tokens: bool = True) -> str:
    return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)

  # ------------------------------------------------------------------ scoring

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **_):
    """(sum log-prob, is-greedy) of each (key, context ids, continuation ids). As HFLM: a
    decoder's input is (context + continuation) cut to its last max_length + 1 tokens less the
    last; an encoder-decoder's is the context's last max_length tokens."""
    rows = []
    for _, ctx, cont in requests:
      if not ctx or not cont or len(cont) > self.max_length:
        raise ValueError(
          f'a request with {len(ctx)} context and {len(cont)} continuation tokens: both must be '
          f'non-empty, the continuation at most max_length={self.max_length}.'
        )
      if self.backend == 'seq2seq':
        rows.append((ctx[-self.max_length :], cont))
      else:
        rows.append(((ctx + cont)[-(self.max_length + 1) :][:-1], cont))
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i][0]) - 1, rows[i][0]))
    out = [None] * len(rows)
    with progress.bar('loglikelihood', len(rows), 'request') as bar:
      for part in self._batches(order, rows):
        for i, res in zip(part, self._score([rows[i] for i in part])):
          out[i] = res
        bar.update(len(part))
    return out

  def _batches(self, order, rows):
    """Up to batch_size rows of one padded shape each (the shape a row alone would get), so a
    row's shape, and so its bits, never depend on its neighbours."""
    part, shape = [], None
    for i in order:
      inp, cont = rows[i]
      own = (_bucket(len(inp), self.max_length), _bucket(len(cont), self.max_length))
      if part and (own != shape or len(part) == self.batch_size):
        yield part
        part = []
      part.append(i)
      shape = own
    if part:
      yield part

  def _score(self, rows: Sequence[tuple]) -> list:
    """One batch of (input ids, continuation ids) of one padded width, dummy rows up to at least
    two a data-parallel shard, each process putting its own rows."""
    shards = self.mesh.shape['data'] * self.mesh.shape['fsdp']
    n = max(2, -(-len(rows) // shards)) * shards  # XLA specializes a map over one row
    seq2seq = self.backend == 'seq2seq'
    width = _bucket(max(len(inp) for inp, _ in rows), self.max_length)
    cwidth = _bucket(max(len(c) for _, c in rows), self.max_length)
    ids = np.zeros((n, width), np.int32)
    # a decoder: the positions whose logits score the continuation; an encoder-decoder: the
    # encoder's padding mask
    where = np.zeros((n, width if seq2seq else cwidth), np.int32)
    targets = np.zeros((n, cwidth), np.int32)
    weights = np.zeros((n, cwidth), np.float32)
    for r, (inp, cont) in enumerate(rows):
      ids[r, : len(inp)] = inp
      if seq2seq:
        where[r, : len(inp)] = 1
      else:  # position t predicts t+1
        where[r, : len(cont)] = np.arange(len(inp) - len(cont), len(inp))
      targets[r, : len(cont)] = cont
      weights[r, : len(cont)] = 1.0
    mine = sharding.process_rows(n, self.mesh)
    batch = sharding.shard_batch((ids[mine], where[mine], targets[mine], weights[mine]), self.mesh)
    row = _seq2seq_row if seq2seq else _decoder_row
    with jax.set_mesh(self.mesh):
      sums, greedy = sharding.gather(_scores(row, self.model, self.params, self.mesh, *batch))
    return [(float(sums[r]), bool(greedy[r])) for r in range(len(rows))]

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list:
    """Each text's log-likelihood over lm-eval's disjoint rolling windows of max_length tokens
    (the first conditioned on the prefix token), all windows of all texts through the one
    batched scoring path."""
    windows, owner = [], []
    for k, req in enumerate(requests):
      (string,) = req.args
      for ctx, cont in map(
        lm_eval_utils.make_disjoint_window,
        lm_eval_utils.get_rolling_token_windows(
          token_list=self.tok_encode(string),
          prefix_token=self.prefix_token_id,
          max_seq_len=self.max_length,
          context_len=1,
        ),
      ):
        windows.append((None, ctx, cont))
        owner.append(k)
    totals = [0.0] * len(requests)
    for k, (logp, _) in zip(owner, self._loglikelihood_tokens(windows)):
      totals[k] += logp
    for req, total in zip(requests, totals):
      self.cache_hook.add_partial('loglikelihood_rolling', req.args, total)
    return totals

  # ------------------------------------------------------------------ generation

  def generate_until(self, requests, disable_tqdm: bool = False) -> list:
    """`lm.generate` batched over requests of equal generation settings (longest first, as
    HFLM), each context cut to its last max_length - max_gen_toks tokens (an encoder-decoder's
    to max_length: the encoder holds it whole); the text is cut at
    the first stop sequence (the EOS text among them)."""
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

    eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
    groups = collections.defaultdict(list)
    for k, req in enumerate(requests):
      groups[json.dumps(req.args[1], sort_keys=True, default=str)].append(k)
    out = [None] * len(requests)
    with progress.bar('generate_until', len(requests), 'request') as bar:
      for keys in groups.values():
        kwargs = normalize_gen_kwargs(dict(requests[keys[0]].args[1]), self.max_gen_toks)
        until = handle_stop_sequences(kwargs.pop('until', None), eos=eos)
        new = int(kwargs.pop('max_gen_toks'))
        if self.backend == 'causal' and new >= self.max_length:
          raise ValueError(
            f'max_gen_toks={new} leaves no context within max_length={self.max_length}.'
          )
        prompts = {
          k: self.tok_encode(requests[k].args[0], left_truncate_len=self._context_room(new))
          for k in keys
        }
        keys = sorted(keys, key=lambda k: (-len(prompts[k]), requests[k].args[0]))
        for s in range(0, len(keys), self.batch_size):
          part = keys[s : s + self.batch_size]
          for k, toks in zip(part, self._generate([prompts[k] for k in part], new, kwargs)):
            text = self.tok_decode(toks)
            for term in until:
              if term:
                text = text.split(term)[0]
            out[k] = text
            self.cache_hook.add_partial('generate_until', requests[k].args, text)
          bar.update(len(part))
    return out

  def _context_room(self, max_new_tokens: int) -> int:
    return self.max_length - (max_new_tokens if self.backend == 'causal' else 0)

  def _generate(self, prompts, max_new_tokens: int, kwargs: dict) -> list:
    sample = bool(kwargs.get('do_sample')) and float(kwargs.get('temperature', 0.0)) > 0
    longest = max(len(p) for p in prompts)
    res = generate_lib.generate(
      self.model,
      self.params,
      prompts,
      max_new_tokens=max_new_tokens,
      strategy='sample' if sample else 'greedy',
      temperature=float(kwargs.get('temperature', 1.0)) if sample else 1.0,
      top_k=int(kwargs.get('top_k') or 0),
      top_p=float(kwargs.get('top_p') or 1.0),
      eos_id=self.tok.eos_id,
      pad_id=T5_START_ID if self.backend == 'seq2seq' else self.tok.pad_id,  # T5's start id
      seed=self.seed,
      mesh=self.mesh,
      prompt_len=_bucket(longest, self._context_room(max_new_tokens)),
    )
    return [r[0] for r in res]


def _bool(v):
  if v is None or isinstance(v, bool):
    return v
  return str(v).lower() in ('1', 'true', 'yes')


def evaluate(
  path: str,
  tasks: Sequence[str],
  include: Optional[str] = None,
  num_fewshot: Optional[int] = None,
  limit: Optional[float] = None,
  batch_size: int = 8,
  output: Optional[str] = None,
  mesh=None,
  model=None,
) -> dict:
  """lm-eval's `simple_evaluate` of `tasks` with this backend (or `model`, any lm-eval LM); its
  results JSON goes (process 0) to `output`, default PATH/harness_results.json.

  With `include` (a directory of task YAMLs) lm-eval runs from that directory, so the local
  `data_files` its YAMLs name resolve beside them (configs/harness/)."""
  import lm_eval  # pylint: disable=g-import-not-at-top

  output = os.path.abspath(output or os.path.join(path, 'harness_results.json'))
  model = model or HarnessLM(path, batch_size=batch_size, mesh=mesh)
  cwd = os.getcwd()
  try:
    if include:
      include = os.path.abspath(include)
      os.chdir(include)
    results = lm_eval.simple_evaluate(
      model=model,
      tasks=list(tasks),
      num_fewshot=num_fewshot,
      limit=limit,
      task_manager=_task_manager(include),
      log_samples=False,
    )
  finally:
    os.chdir(cwd)
  if results is None:  # not the main process
    return {}
  results['output'] = output
  if jax.process_index() == 0:
    with open(output, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=2, default=str)
  return results


@functools.lru_cache(maxsize=4)
def _task_manager(include: Optional[str]):
  """lm-eval's task index (it reads every task YAML it ships: seconds), built once per include."""
  from lm_eval.tasks import TaskManager  # pylint: disable=g-import-not-at-top

  return TaskManager(include_path=include) if include else TaskManager()


def format_table(results: dict) -> str:
  from lm_eval.utils import make_table

  return make_table(results)
