r"""Pretraining data path on real text: prepare once, then train / read batches from shards.

  python bench/data_pipeline.py --log=bench/logs/data_2026-11-25/data_pipeline.log  # full, ~15 min
  python bench/data_pipeline.py --quick    # 3 MB and 30 MB only, ~2 min on a 2-core CPU

Needs `pip install -e '.[bench]'` (array_record, grain and psutil, for section 4 and RSS polling).

The corpus is the `.py` files of this venv's site-packages (~330 MB of real, messy text),
copied in sorted path order into temporary directories until each byte budget is reached.
What it measures, and why:
  1. `python -m lm.data.prepare` (fresh subprocess per run, configs/gpt_base.py, byte-level
     BPE 8192): wall s, MB/s of text, and the PEAK RSS (and PSS) summed over the process tree
     (main + spawned tokenizer workers, polled every --poll_s), per corpus size: does
     preparation stay bounded in memory as the corpus grows? Then scaling with
     `data.prepare_workers` on one size (speedup vs 1 worker), and that the shards are
     byte-identical whatever the worker count (sha256 of every file under shards/). Then the
     same with small shards (--stress_shard_mb) and more workers than cores (--stress_workers,
     twice): shard boundaries must not depend on timing.
  2. `train.py` (2 steps, new workdir) on the smallest and largest prepared data: wall s and
     peak RSS of the process tree; host memory must not grow with the corpus (target <= 1.5 GB
     and the largest/smallest RSS ratio <= 1.15), and the run must not tokenize again (no
     'prepare:' line in its output; manifest and tokenizer mtimes unchanged).
  3. The loader alone: `CLMBatcher.get_batch` tokens/s on the largest preparation (seq 1024,
     batch 16; process 0 of 1, and 1 of 8 to show a host builds only its own rows), against
     2 x the fastest train step we measured (GPT-2 small, one H100: 423,258 tokens/s), and
     `MLMBatcher` (MLM+NSP, wordpiece preparation of --mlm_mb, seq 128 and 512).
  4. Why memmapped shards rather than array_record: the same train tokens written as
     array_record records of --record_tokens tokens (group_size:1, zstd and uncompressed),
     random 1025-token windows (the 2 records a window spans) vs a memmap slice and our
     `TokenizedCorpus.window`, same offsets, same process, page cache warm for both; and the
     same windows through a grain MapDataset.
Numbers are on a shared 2-core machine (the load average is printed per section): compare
ratios within one run.
"""

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
SITE = os.path.join(
  REPO, '.venv', 'lib', f'python{sys.version_info.major}.{sys.version_info.minor}', 'site-packages'
)
H100_TOKENS_PER_SEC = 423_258  # fastest train step measured: GPT-2 small, bf16, one H100
MB = 1e6


def parse_args(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    '--quick',
    action='store_true',
    help='~2 min: sizes 3,10, scaling and wordpiece on 3 MB, fewer batches and windows',
  )
  p.add_argument('--sizes_mb', default=None, help='corpus sizes, MB of .py text (default 3,30,300)')
  p.add_argument('--scaling_mb', type=float, default=None, help='size for the worker scaling (30)')
  p.add_argument('--workers', default='0,1,2', help='data.prepare_workers values to compare')
  p.add_argument(
    '--stress_workers',
    type=int,
    default=6,
    help='workers for the shard-boundary determinism check (0: skip)',
  )
  p.add_argument(
    '--stress_shard_mb', type=float, default=None, help='data.shard_mb for that check (1.5)'
  )
  p.add_argument(
    '--mlm_mb', type=float, default=None, help='size of the wordpiece preparation (30)'
  )
  p.add_argument('--source', default=SITE, help='directory whose .py files are the corpus')
  p.add_argument('--batches', type=int, default=200, help='timed loader batches')
  p.add_argument('--windows', type=int, default=20000, help='random windows for section 4')
  p.add_argument('--record_tokens', type=int, default=1024, help='tokens per array_record record')
  p.add_argument(
    '--prepare_timeout_s', type=float, default=1200, help='kill a preparation after this'
  )
  p.add_argument('--poll_s', type=float, default=0.1, help='RSS polling interval')
  p.add_argument('--sections', default='1,2,3,4')
  p.add_argument('--tmp', default=None, help='scratch root (default: a new temp dir, removed)')
  p.add_argument('--keep', action='store_true', help='keep the scratch directory')
  p.add_argument('--log', default=None, help='also write the output to this file')
  a = p.parse_args(argv)
  full = {'sizes_mb': '3,30,300', 'scaling_mb': 30, 'mlm_mb': 30, 'stress_shard_mb': 1.5}
  quick = {'sizes_mb': '3,10', 'scaling_mb': 3, 'mlm_mb': 3, 'stress_shard_mb': 0.25}
  for k, v in (quick if a.quick else full).items():
    if getattr(a, k) is None:
      setattr(a, k, v)
  if a.quick:
    a.batches, a.windows = min(a.batches, 50), min(a.windows, 5000)
  a.sizes = sorted(float(s) for s in a.sizes_mb.split(','))
  a.worker_list = [int(w) for w in a.workers.split(',') if w != '']
  a.section_set = {int(s) for s in a.sections.split(',') if s}
  return a


class Log:
  """print() to stdout and the log file, flushed line by line (partial runs keep their output)."""

  def __init__(self, path):
    self.f = None
    if path:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      self.f = open(path, 'w', encoding='utf-8')

  def __call__(self, *args):
    line = ' '.join(str(a) for a in args)
    print(line, flush=True)
    if self.f:
      self.f.write(line + '\n')
      self.f.flush()


def table(log, header, rows):
  cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  for j, r in enumerate(cells):
    log(
      '  ' + '  '.join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    )
    if j == 0:
      log('  ' + '  '.join('-' * w for w in widths))


def load_avg():
  return '/'.join(f'{x:.2f}' for x in os.getloadavg())


def gb(n):
  return f'{n / 2**30:.2f}'


def machine(log, args):
  model = next(
    (l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), '?'
  )
  from importlib import metadata

  vers = {}
  for name in ('numpy', 'tokenizers', 'array_record', 'grain', 'jax', 'psutil'):
    try:
      vers[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      vers[name] = 'absent'
  log('command:', shlex.join([sys.executable] + sys.argv))
  log(
    f'machine: {os.cpu_count()} cpus, {model}, {gb(psutil.virtual_memory().total)} GiB RAM, '
    f'python {platform.python_version()}, {platform.platform()}'
  )
  log('versions:', ', '.join(f'{k} {v}' for k, v in vers.items()))
  log(f'load average (1/5/15 min) at start: {load_avg()}  (others run tests on this machine)')
  log(f'corpus: .py files under {args.source}')


# ---------------------------------------------------------------- corpus subsets


def py_files(source):
  """(relative path, bytes) of every .py file, sorted; dot-dirs skipped (glob '**' skips them too)."""
  out = []
  for root, dirs, files in os.walk(source):
    dirs[:] = [d for d in dirs if not d.startswith('.')]
    for f in files:
      if f.endswith('.py') and not f.startswith('.'):
        path = os.path.join(root, f)
        out.append((os.path.relpath(path, source), os.path.getsize(path)))
  return sorted(out)


def make_subset(source, files, dest, budget):
  """Copies files in sorted order until ``budget`` bytes; returns (files, bytes)."""
  total, n = 0, 0
  for rel, size in files:
    if total >= budget:
      break
    target = os.path.join(dest, rel)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(os.path.join(source, rel), target)
    total, n = total + size, n + 1
  return n, total


# ---------------------------------------------------------------- measured subprocesses


def kill_tree(pid):
  """Kills a process we started and its descendants, by pid."""
  try:
    root = psutil.Process(pid)
    procs = root.children(recursive=True) + [root]
  except psutil.NoSuchProcess:
    return
  for p in procs:
    try:
      p.kill()
    except psutil.NoSuchProcess:
      pass


def run_measured(cmd, env, poll_s, timeout=None):
  """Runs cmd; returns (rc, wall s, [(s, output line)], peaks: tree RSS, tree PSS, main RSS, procs).

  rc is 'timeout' (the tree killed) past ``timeout`` s."""
  t0 = time.perf_counter()
  proc = subprocess.Popen(
    cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  lines = []  # (seconds since start, line)

  def read():
    for line in proc.stdout:
      lines.append((time.perf_counter() - t0, line))

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  root = psutil.Process(proc.pid)
  peak = {'rss': 0, 'pss': 0, 'main': 0, 'procs': 0}
  stopped = None
  while proc.poll() is None:
    if timeout and time.perf_counter() - t0 > timeout:
      stopped = 'timeout'
      kill_tree(proc.pid)
      break
    try:
      procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
      break
    rss = pss = 0
    for i, p in enumerate(procs):
      try:
        m = p.memory_full_info()
      except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        continue
      rss, pss = rss + m.rss, pss + getattr(m, 'pss', m.rss)
      if i == 0:
        peak['main'] = max(peak['main'], m.rss)
    peak.update(
      rss=max(peak['rss'], rss), pss=max(peak['pss'], pss), procs=max(peak['procs'], len(procs))
    )
    time.sleep(poll_s)
  rc = proc.wait()
  wall = time.perf_counter() - t0
  reader.join(timeout=5)
  return stopped or rc, wall, lines, peak


def sub_env(cache):
  env = dict(os.environ, LM_DATA_CACHE=cache, PYTHONUNBUFFERED='1', JAX_PLATFORMS='cpu')
  env.pop('TOKENIZERS_PARALLELISM', None)
  return env


def prepare_cmd(config, files, out, workers=None, extra=()):
  cmd = [
    sys.executable,
    '-m',
    'lm.data.prepare',
    f'--config={config}',
    '--config.data.source=files',
    f'--config.data.files={files}',
    f'--config.data.prepared_dir={out}',
  ]
  if workers is not None:
    cmd.append(f'--config.data.prepare_workers={workers}')
  return cmd + [f'--config.data.{k}={v}' for k, v in extra]


def prepare(log, args, env, config, files, out, workers=None, extra=()):
  """One measured `python -m lm.data.prepare` into a new ``out``; raises if it fails or times out."""
  shutil.rmtree(out, ignore_errors=True)
  cmd = prepare_cmd(config, files, out, workers, extra)
  rc, wall, output, peak = run_measured(cmd, env, args.poll_s, args.prepare_timeout_s)
  if rc:
    log(''.join(l for _, l in output)[-4000:])
    raise RuntimeError(f'prepare {rc} ({wall:.0f} s): {shlex.join(cmd)}')
  with open(os.path.join(out, 'manifest.json')) as f:
    manifest = json.load(f)
  return {'wall': wall, 'peak': peak, 'manifest': manifest, 'output': output}


def prep_row(name, r):
  m, p = r['manifest'], r['peak']
  chars, tok_s = m['chars'], m['tokenizer'].get('seconds', 0.0)
  tokens = m['splits']['train']['tokens'] + m['splits']['eval']['tokens']
  phase = max(m['seconds'] - tok_s, 1e-9)
  return [
    name,
    f'{chars / MB:.1f}',
    f'{tokens / 1e6:.1f}',
    m['workers'],
    f'{r["wall"]:.1f}',
    f'{tok_s:.1f}',
    f'{phase:.1f}',
    f'{chars / MB / r["wall"]:.2f}',
    f'{chars / MB / phase:.2f}',
    gb(p['rss']),
    gb(p['pss']),
    gb(p['main']),
    p['procs'],
  ]


PREP_HEADER = [
  'run',
  'M chars',
  'M tokens',
  'workers',
  'wall s',
  'tok-train s',
  'tokenize s',
  'MB/s wall',
  'MB/s tokenize',
  'peak RSS GiB',
  'peak PSS GiB',
  'main RSS GiB',
  'procs',
]


def shard_digests(directory):
  out = {}
  for sub in ('shards', ''):
    d = os.path.join(directory, sub)
    for name in sorted(os.listdir(d)):
      path = os.path.join(d, name)
      if os.path.isfile(path) and (sub or name == 'tokenizer.json'):
        with open(path, 'rb') as f:
          out[os.path.join(sub, name)] = hashlib.sha256(f.read()).hexdigest()
  return out


# ---------------------------------------------------------------- sections


def section_prepare(log, args, env, subsets, root):
  log(
    f'\n== 1. Preparation: python -m lm.data.prepare, configs/gpt_base.py (bpe 8192), '
    f'default workers (-1) == load {load_avg()}'
  )
  prepared, rows = {}, []
  for mb in args.sizes:
    out = os.path.join(root, f'prep_bpe_{mb:g}')
    r = prepare(log, args, env, 'configs/gpt_base.py', subsets[mb], out)
    prepared[mb] = out
    rows.append(prep_row(f'{mb:g} MB', r))
  table(log, PREP_HEADER, rows)
  log(
    '  tok-train s: tokenizer training (sample <= data.tokenizer.sample_mb=64 MiB, from the manifest);'
    ' tokenize s: the rest of prepare (read, tokenize, write shards); wall: process start to exit.'
  )

  mb = args.scaling_mb
  if mb not in subsets:
    return prepared
  log(f'\n   worker scaling on {mb:g} MB ({subsets[mb]}) == load {load_avg()}')
  rows, runs = [], {}
  for w in args.worker_list:
    out = os.path.join(root, f'prep_bpe_{mb:g}_w{w}')
    runs[w] = prepare(log, args, env, 'configs/gpt_base.py', subsets[mb], out, w)
    runs[w]['dir'] = out
    rows.append(prep_row(f'workers={w}', runs[w]))
  base = runs.get(1)
  header = PREP_HEADER + ['speedup wall', 'speedup tokenize']
  for row, w in zip(rows, args.worker_list):
    if base:
      m, bm = runs[w]['manifest'], base['manifest']
      ph = lambda x: x['seconds'] - x['tokenizer'].get('seconds', 0.0)
      row += [f'{base["wall"] / runs[w]["wall"]:.2f}x', f'{ph(bm) / ph(m):.2f}x']
    else:
      row += ['-', '-']
  table(log, header, rows)
  digests = {w: shard_digests(r['dir']) for w, r in runs.items()}
  ref_w = args.worker_list[0]
  same = all(d == digests[ref_w] for d in digests.values())
  log(
    f'  shards byte-identical across workers {args.worker_list}: {same} '
    f'({len(digests[ref_w])} files compared by sha256: shards/* and tokenizer.json)'
  )
  if not same:
    for w, d in digests.items():
      diff = sorted(k for k in set(d) | set(digests[ref_w]) if d.get(k) != digests[ref_w].get(k))
      if diff:
        log(f'    workers={w} differs from workers={ref_w} in: {diff[:6]}')
  for r in runs.values():
    shutil.rmtree(r['dir'], ignore_errors=True)

  # Shard boundaries: the runs above fit one 64 MiB shard. Small shards and more workers than
  # cores (results arriving together) test that boundaries do not depend on timing.
  w, extra = args.stress_workers, (('shard_mb', args.stress_shard_mb), ('tokenizer.sample_mb', 4))
  if w:
    log(
      f'\n   shard boundaries vs workers on {mb:g} MB, shard_mb={args.stress_shard_mb:g}, '
      f'tokenizer.sample_mb=4: workers=0, then workers={w} twice == load {load_avg()}'
    )
    rows, ref = [], None
    for i, workers in enumerate((0, w, w)):
      out = os.path.join(root, f'prep_stress_{i}')
      r = prepare(log, args, env, 'configs/gpt_base.py', subsets[mb], out, workers, extra)
      m = r['manifest']
      docs = [e['docs_read'] for e in m['shards']]
      ref = ref or (docs, shard_digests(out))
      rows.append(
        [
          f'workers={workers}',
          f'{r["wall"]:.1f}',
          len(docs),
          m['corpus_sha256'][:12],
          docs == ref[0],
          shard_digests(out) == ref[1],
          ' '.join(map(str, docs[:8])) + (' ...' if len(docs) > 8 else ''),
        ]
      )
      shutil.rmtree(out, ignore_errors=True)
    table(
      log,
      [
        'run',
        'wall s',
        'shards',
        'corpus_sha256',
        'same boundaries',
        'byte-identical',
        'docs per shard',
      ],
      rows,
    )
  return prepared


def section_train(log, args, env, subsets, prepared, root):
  sizes = [args.sizes[0], args.sizes[-1]]
  log(
    f'\n== 2. train.py after preparation: configs/gpt_base.py, 2 steps, new workdir each '
    f'== load {load_avg()}'
  )
  rows, rss, failed = [], {}, []
  for mb in sizes:
    out = prepared[mb]
    manifest_path, tok_path = (
      os.path.join(out, 'manifest.json'),
      os.path.join(out, 'tokenizer.json'),
    )
    before = (
      os.stat(manifest_path).st_mtime_ns,
      os.stat(tok_path).st_mtime_ns,
      sorted(os.listdir(os.path.join(out, 'shards'))),
    )
    workdir = tempfile.mkdtemp(prefix=f'wd_{mb:g}_', dir=root)
    cmd = [
      sys.executable,
      'train.py',
      '--config=configs/gpt_base.py',
      f'--workdir={workdir}',
      '--config.data.source=files',
      f'--config.data.files={subsets[mb]}',
      f'--config.data.prepared_dir={out}',
      '--config.train.steps=2',
      '--config.log_every=1',
      '--config.eval_every=2',
      '--config.checkpoint_every=2',
    ]
    if mb == sizes[0]:
      log('  command:', shlex.join(cmd).replace(root, '$TMP'))
    rc, wall, output, peak = run_measured(cmd, env, args.poll_s, timeout=900)
    after = (
      os.stat(manifest_path).st_mtime_ns,
      os.stat(tok_path).st_mtime_ns,
      sorted(os.listdir(os.path.join(out, 'shards'))),
    )
    prep_lines = [l.strip() for _, l in output if l.startswith(('prepare:', 'text_files:'))]
    no_retok = not prep_lines and before == after
    if rc:
      failed.append(mb)
      log(''.join(l for _, l in output)[-3000:])
    # Data opened + model initialised: train.py prints '{objective}: N params, ...' then.
    ready = next((t for t, l in output if ' params, mesh ' in l), float('nan'))
    rss[mb] = peak['rss']
    m = json.load(open(manifest_path))
    rows.append(
      [
        f'{mb:g} MB',
        f'{m["splits"]["train"]["tokens"] / 1e6:.1f}',
        rc,
        f'{ready:.1f}',
        f'{wall:.1f}',
        gb(peak['rss']),
        gb(peak['pss']),
        peak['procs'],
        'yes' if no_retok else f'NO: {prep_lines[:2]} mtimes/listing same={before == after}',
      ]
    )
    shutil.rmtree(workdir, ignore_errors=True)
  table(
    log,
    [
      'prepared',
      'train M tokens',
      'rc',
      'ready s',
      'wall s',
      'peak RSS GiB',
      'peak PSS GiB',
      'procs',
      'no re-tokenize',
    ],
    rows,
  )
  log(
    "  ready s: start to train.py's 'N params' line (imports, prepare.ensure, open shards, model init);"
    ' wall: start to exit (compile, 2 steps, eval, checkpoint, sample).'
  )
  ratio = rss[sizes[-1]] / rss[sizes[0]]
  ok = (
    rss[sizes[-1]] <= 1.5 * 2**30 and ratio <= 1.15 and not failed
  )  # a crashed run proves nothing
  log(
    f'  peak RSS {sizes[-1]:g} MB / {sizes[0]:g} MB = {ratio:.3f} (target <= 1.15, and <= 1.5 GiB): '
    f'{"PASS" if ok else "FAIL"}'
  )


def timed_batches(batcher, n, process_index=0, process_count=1, warmup=10):
  for s in range(warmup):
    batcher.get_batch(10_000 + s, process_index, process_count)
  t0 = time.perf_counter()
  for s in range(n):
    b = batcher.get_batch(s, process_index, process_count)
  return time.perf_counter() - t0, b


def section_loader(log, args, env, subsets, prepared, root):
  from lm.data import prepare as prepare_lib
  from lm.data import pretrain
  from lm.data import shards

  mb = args.sizes[-1]
  manifest, tok = prepare_lib.load(prepared[mb])
  corpus = shards.open_split(prepared[mb], 'train', manifest)
  log(
    f'\n== 3. Loader alone (this process, page cache warm), {mb:g} MB bpe preparation: '
    f'{corpus.num_tokens:,} train tokens in {len(corpus.shards)} shard(s), {corpus.num_docs:,} docs '
    f'== load {load_avg()}'
  )
  target = 2 * H100_TOKENS_PER_SEC
  seq, batch, rows = 1024, 16, []
  clm = pretrain.CLMBatcher(corpus, tok, seq, batch, seed=0)
  for pi, pc in ((0, 1), (1, 8)):
    secs, _ = timed_batches(clm, args.batches, pi, pc)
    tps = args.batches * batch // pc * seq / secs
    rows.append(
      [
        f'CLM seq {seq}, process {pi} of {pc}',
        batch // pc,
        f'{1e3 * secs / args.batches:.2f}',
        f'{tps:,.0f}',
        f'{tps / target:.1f}x',
        f'{tps * pc:,.0f}',
      ]
    )
  full, part = clm.get_batch(7), clm.get_batch(7, 1, 8)
  same = all(np.array_equal(full[k][2:4], part[k]) for k in full)
  rss_before = psutil.Process().memory_info().rss

  mlm_mb = args.mlm_mb if args.mlm_mb in subsets else args.sizes[-1]
  out = os.path.join(root, f'prep_wp_{mlm_mb:g}')
  r = prepare(log, args, env, 'configs/base.py', subsets[mlm_mb], out)
  wp_manifest, wp_tok = prepare_lib.load(out)
  wp_corpus = shards.open_split(out, 'train', wp_manifest)
  fill = {}
  for seq in (128, 512):
    mlm = pretrain.MLMBatcher(wp_corpus, wp_tok, seq, batch, seed=0, nsp=True)
    secs, b = timed_batches(mlm, args.batches)
    tps = args.batches * batch * seq / secs
    fill[seq] = float(np.mean(b['attention_mask']))
    rows.append(
      [
        f'MLM+NSP seq {seq} ({mlm_mb:g} MB wordpiece)',
        batch,
        f'{1e3 * secs / args.batches:.2f}',
        f'{tps:,.0f}',
        f'{tps / target:.1f}x',
        '-',
      ]
    )
  table(
    log,
    [
      'batcher',
      'rows/call',
      'ms/call',
      'tokens/s (this host)',
      'vs 2x H100 step',
      'global-equiv tokens/s',
    ],
    rows,
  )
  log(
    f'  2x H100 step = 2 x {H100_TOKENS_PER_SEC:,} = {target:,} tokens/s (GPT-2 small, bf16); '
    f'{args.batches} timed batches after 10 warm-up, single thread.'
  )
  log(
    f'  process 1 of 8 builds 2 rows, equal to rows 2:4 of the global batch: {same}; '
    'global-equiv = tokens/s x process_count.'
  )
  log(
    f'  MLM rows are one span of a document + [SEP] + a span (real or random): non-pad fraction '
    f'{fill[128]:.2f} at seq 128, {fill[512]:.2f} at seq 512 on this corpus '
    f'({wp_corpus.num_tokens / wp_corpus.num_docs:.0f} tokens/doc mean).'
  )
  log('  wordpiece preparation of that corpus:')
  table(log, PREP_HEADER, [prep_row(f'{mlm_mb:g} MB wordpiece', r)])
  log(f'  this process RSS after loader runs: {gb(rss_before)} GiB')
  shutil.rmtree(out, ignore_errors=True)


def section_array_record(log, args, prepared, root):
  from array_record.python import array_record_data_source
  from array_record.python import array_record_module
  from lm.data import prepare as prepare_lib
  from lm.data import shards

  mb, L, R = args.sizes[-1], 1025, args.record_tokens
  manifest, _ = prepare_lib.load(prepared[mb])
  corpus = shards.open_split(prepared[mb], 'train', manifest)
  dtype = np.dtype(manifest['dtype'])
  log(
    f'\n== 4. memmap shards vs array_record, {mb:g} MB bpe train tokens ({corpus.num_tokens:,}, '
    f'{dtype}), {args.windows} random {L}-token windows == load {load_avg()}'
  )

  variants, write_rows = {}, []
  for name, options in (('zstd', 'group_size:1'), ('uncompressed', 'group_size:1,uncompressed')):
    paths, t0 = [], time.perf_counter()
    for i, part in enumerate(corpus.shards):
      path = os.path.join(root, f'ar_{name}_{i:05d}.array_record')
      w = array_record_module.ArrayRecordWriter(path, options)
      toks = np.asarray(part.tokens)
      for s in range(0, len(toks), R):
        w.write(toks[s : s + R].tobytes())
      w.close()
      paths.append(path)
    secs = time.perf_counter() - t0
    size = sum(os.path.getsize(p) for p in paths)
    variants[name] = paths
    write_rows.append([name, options, f'{secs:.1f}', f'{size / MB:.1f}'])
  mm_size = sum(
    os.path.getsize(os.path.join(prepared[mb], 'shards', f'{e["name"]}.train.bin'))
    for e in manifest['shards']
  )
  write_rows.append(['memmap .bin (ours)', '-', '-', f'{mm_size / MB:.1f}'])
  table(log, ['format', 'writer options', 'write s', 'MB on disk'], write_rows)

  # Same offsets for every reader: (shard, local token position) with the window inside the shard.
  rng = np.random.default_rng(0)
  sizes = np.array([p.num_tokens for p in corpus.shards])
  probs = np.maximum(sizes - L, 0) / np.maximum(sizes - L, 0).sum()
  shard_of = rng.choice(len(sizes), args.windows, p=probs)
  local = (rng.random(args.windows) * (sizes[shard_of] - L + 1)).astype(np.int64)
  rec_base = np.concatenate([[0], np.cumsum((sizes + R - 1) // R)])[:-1]
  for paths in variants.values():  # warm the page cache for every file, like the memmap's
    for p in paths:
      with open(p, 'rb') as f:
        while f.read(1 << 24):
          pass
  for part in corpus.shards:
    np.asarray(part.tokens).sum()

  def memmap_slice():
    for s, o in zip(shard_of, local):
      np.array(corpus.shards[s].tokens[o : o + L])

  def tokenized_window():
    for s, o in zip(shard_of, local):
      corpus.shards[s].window(int(o), L)

  def ar_source(paths, batched=True):
    src = array_record_data_source.ArrayRecordDataSource(paths)

    def read():
      for s, o in zip(shard_of, local):
        k = int(rec_base[s] + o // R)
        recs = src.__getitems__([k, k + 1]) if batched else (src[k], src[k + 1])
        w = np.frombuffer(b''.join(recs), dtype)[o % R : o % R + L]
        assert len(w) == L

    return read

  def ar_reader(paths):
    readers = [
      array_record_module.ArrayRecordReader(
        p, 'readahead_buffer_size:0', file_reader_buffer_size=32768
      )
      for p in paths
    ]

    def read():
      for s, o in zip(shard_of, local):
        k = int(o // R)
        recs = readers[s].read([k, k + 1])
        w = np.frombuffer(b''.join(recs), dtype)[o % R : o % R + L]
        assert len(w) == L

    return read

  # Correctness: array_record windows equal the memmap slices.
  src = array_record_data_source.ArrayRecordDataSource(variants['zstd'])
  for s, o in list(zip(shard_of, local))[:50]:
    k = int(rec_base[s] + o // R)
    w = np.frombuffer(b''.join(src.__getitems__([k, k + 1])), dtype)[o % R : o % R + L]
    assert np.array_equal(w, corpus.shards[s].tokens[o : o + L]), (s, o)

  cases = [
    ('memmap slice (tokens[o:o+1025])', memmap_slice),
    ('TokenizedCorpus.window (ours: + eos/doc bookkeeping)', tokenized_window),
  ]
  for name, paths in variants.items():
    cases.append((f'array_record {name}: ArrayRecordDataSource.__getitems__', ar_source(paths)))
    cases.append((f'array_record {name}: ArrayRecordDataSource[k], [k+1]', ar_source(paths, False)))
    cases.append((f'array_record {name}: ArrayRecordReader.read', ar_reader(paths)))

  try:
    import grain

    class Windows:  # a grain RandomAccessDataSource over our memmap windows
      def __len__(self):
        return args.windows

      def __getitem__(self, i):
        return corpus.shards[shard_of[i]].window(int(local[i]), L)[0]

    def via_grain():
      for _ in grain.MapDataset.source(Windows()).batch(16):
        pass

    cases.append(('grain MapDataset.source(our windows).batch(16)', via_grain))
    grain_note = 'grain: MapDataset over our window source (same offsets), batch 16, in-process.'
  except Exception as e:  # pylint: disable=broad-except
    grain_note = f'grain: not run ({type(e).__name__}: {e})'

  results = {}
  for rep in range(2):  # interleaved repeats; best of 2 reported
    for name, fn in cases:
      t0 = time.perf_counter()
      fn()
      results.setdefault(name, []).append(args.windows / (time.perf_counter() - t0))
  ref = max(results[cases[1][0]])
  rows = [
    [name, f'{max(v):,.0f}', f'{1e6 / max(v):.1f}', f'{max(v) / ref:.2f}']
    for name, v in results.items()
  ]
  table(log, ['reader', 'windows/s', 'us/window', 'vs TokenizedCorpus.window'], rows)
  log(
    f'  records of {R} tokens ({R * dtype.itemsize} B); a {L}-token window always spans 2 records. '
    'Best of 2 interleaved passes; page cache warm for all files.'
  )
  log(f'  {grain_note}')
  for paths in variants.values():
    for p in paths:
      os.remove(p)


def main(argv=None):
  args = parse_args(argv)
  log = Log(args.log)
  machine(log, args)
  t_start = time.time()
  root = args.tmp or tempfile.mkdtemp(prefix='bench_data_')
  os.makedirs(root, exist_ok=True)
  env = sub_env(os.path.join(root, 'lm_data_cache'))
  try:
    files = py_files(args.source)
    log(f'source: {len(files):,} .py files, {sum(s for _, s in files) / MB:.1f} MB; scratch {root}')
    subsets, rows = {}, []
    need = set(args.sizes) | ({args.scaling_mb} if 1 in args.section_set else set())
    need |= {args.mlm_mb} if 3 in args.section_set and args.mlm_mb <= args.sizes[-1] else set()
    for mb in sorted(need):
      dest = os.path.join(root, f'corpus_{mb:g}MB')
      t0 = time.perf_counter()
      n, size = make_subset(args.source, files, dest, mb * MB)
      subsets[mb] = dest
      rows.append([f'{mb:g} MB', n, f'{size / MB:.1f}', f'{time.perf_counter() - t0:.1f}'])
    table(log, ['subset', 'files', 'MB', 'copy s'], rows)

    prepared = {}
    if 1 in args.section_set:
      prepared = section_prepare(log, args, env, subsets, root)
    else:
      for mb in args.sizes:
        out = os.path.join(root, f'prep_bpe_{mb:g}')
        prepare(log, args, env, 'configs/gpt_base.py', subsets[mb], out)
        prepared[mb] = out
    if 2 in args.section_set:
      section_train(log, args, env, subsets, prepared, root)
    if 3 in args.section_set:
      section_loader(log, args, env, subsets, prepared, root)
    if 4 in args.section_set:
      section_array_record(log, args, prepared, root)
  finally:
    if not args.keep and not args.tmp:
      shutil.rmtree(root, ignore_errors=True)
  log(f'\ntotal {time.time() - t_start:.0f} s; load average at end: {load_avg()}')


if __name__ == '__main__':
  main()
