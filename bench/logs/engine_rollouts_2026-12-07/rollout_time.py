"""Time per GRPO rollout (sample + score, ppo.make_sampler) of a policy against a reward model,
config.generate.backend 'static' vs 'engine' (slots = the batch: full), interleaved A B A B in
one process; checks both give the same responses for the same seeds.

  python bench/logs/engine_rollouts_2026-12-07/rollout_time.py POLICY_DIR RM_DIR [ROLLOUTS]
"""

import statistics
import sys
import time

import jax
import numpy as np

from configs import ppo as ppo_config
from lm import models as M
from lm import optim
from lm import pretrained
from lm import sharding
from lm import trainer
from lm.data import preference
from lm.jobs import ppo
from lm.models import lora

policy_dir, rm_dir = sys.argv[1:3]
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 5
config = ppo_config.get_config()
config.update(dict(init_checkpoint=policy_dir, reward_model=rm_dir, algorithm='grpo', group_size=4))
mesh = sharding.make_mesh(config.mesh_shape)
pre = pretrained.load(policy_dir, mesh).body(policy_dir, 'ppo.py')
tok, p_len, b = pre.tokenizer, int(config.data.max_prompt_len), int(config.train.batch_size)
rm_model, rm_params = ppo.load_reward_model(rm_dir, tok, mesh)
prompts = ppo.prompt_arrays(preference.load_splits(config.data)['train'], tok, p_len)
model = M.ActorCritic(lora.for_job(pre.cfg, config))
state, _ = trainer.create_state_from(
  model, optim.make(config.train), mesh, 0, M.policy_init_inputs(p_len + config.max_new_tokens),
  pre.params, 'decoder',
)  # fmt: skip
params, ref = state.params, pre.params
s = ppo.settings(config, tok)
samplers = {}
for backend in ('static', 'engine'):
  config.generate.backend = backend
  engine = ppo.make_engine(config, model, s, p_len, b, params['decoder'])
  samplers[backend] = ppo.make_sampler(model, rm_model, s, mesh, engine)
print(
  f'policy {policy_dir}: {trainer.param_count(pre.params):,} params; batch {b} '
  f'(8 prompts x 4), prompt {p_len}, max_new_tokens {s.max_new_tokens}; '
  f'devices {jax.devices()}'
)
rows = {k: v[: b // 4].repeat(4, axis=0) for k, v in prompts.items()}
ids, mask = rows['prompt_ids'], rows['prompt_mask']
times = {k: [] for k in samplers}
for i in range(repeats + 1):  # the first round compiles
  got = {}
  for k in samplers if i % 2 == 0 else list(samplers)[::-1]:
    t = time.perf_counter()
    got[k] = jax.device_get(samplers[k](params, ref, rm_params, ids, mask, jax.random.PRNGKey(i)))
    if i:
      times[k].append(time.perf_counter() - t)
    else:
      print(f'{k}: first rollout (compiles) {time.perf_counter() - t:.2f} s')
  same = all(np.array_equal(got['static'][f], got['engine'][f]) for f in got['static'])
  tokens = int(got['static']['resp_mask'].sum())
  print(f'rollout {i}: {tokens} response tokens, engine == static (every field): {same}')
for k, v in times.items():
  med = statistics.median(v)
  print(f'{k:>6}: median {med:.3f} s per rollout of {b} ({b / med:.1f} responses/s); all {v}')
print(
  f'engine / static time: {statistics.median(times["engine"]) / statistics.median(times["static"]):.2f}'
)
