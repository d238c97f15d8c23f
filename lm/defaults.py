"""Base configs of every job, built from shared blocks so a field has one spelling and one default
whichever job reads it; each file in configs/ states its own choices on top.

* :func:`pretraining`: train.py (configs/base.py, gpt_base.py, bert.py, gpt2.py)
* :func:`finetuning`: finetune.py (configs/finetune_*.py)
* :func:`preference`: dpo.py, reward models and DPO (configs/reward.py, dpo.py)
* :func:`text_to_text`: sft.py, SFT and summarization (configs/sft.py, summarize.py)
* :func:`rl`: ppo.py, PPO / GRPO / RLOO against a reward model (configs/ppo.py)
"""

import dataclasses

import ml_collections
from ml_collections import config_dict

from lm import tasks
from lm.models import ModelConfig
from lm.models import lora


def train_block(**overrides) -> ml_collections.ConfigDict:
  """`c.train`: the optimizer and step fields (lm.optim.make) every job reads, with one set of
  defaults; a job overrides its own values and may add fields of its own."""
  return ml_collections.ConfigDict(
    dict(
      dict(
        batch_size=256,
        steps=100_000,
        lr=1e-4,
        warmup_steps=10_000,
        schedule='linear',
        end_lr_fraction=0.0,
        weight_decay=0.01,
        b1=0.9,
        b2=0.999,
        eps=1e-6,
        clip_norm=1.0,
        grad_accum_steps=1,
      ),
      **overrides,
    )
  )


def lora_block() -> ml_collections.ConfigDict:
  """`c.lora`: LoRA / QLoRA (lm/models/lora.py) for any job that trains a model. rank 0 trains
  every parameter; rank > 0 freezes the body and trains adapters of that rank on `targets` (plus
  a head the job adds), scaled alpha / rank; quant 'int8' | 'nf4' stores the frozen attention
  and MLP kernels quantized (QLoRA)."""
  model = ModelConfig()
  return ml_collections.ConfigDict({k: getattr(model, f) for k, f in lora.FIELDS.items()})


def model_overrides_block(**values) -> ml_collections.ConfigDict:
  """`c.model_overrides`: ModelConfig fields a tuning job changes on its checkpoint's config
  (dropout, dtype, remat: nothing that changes the weights' shapes). `param_dtype` unset: LoRA
  keeps the checkpoint's dtype, full training float32 (`lora.configure`)."""
  return ml_collections.ConfigDict(dict(param_dtype=config_dict.placeholder(str), **values))


def periodic_block(
  log_every: int,
  eval_every: int,
  checkpoint_every: int,
  keep_checkpoints: int,
  async_checkpoints: bool = True,
) -> dict:
  """The top-level fields saying how often a training loop logs, evaluates and checkpoints."""
  return dict(
    log_every=log_every,
    eval_every=eval_every,
    checkpoint_every=checkpoint_every,
    keep_checkpoints=keep_checkpoints,
    async_checkpoints=async_checkpoints,
  )


def report_block() -> ml_collections.ConfigDict:
  """`c.report`: where a run's metrics go besides TensorBoard and metrics.jsonl (lm/report.py).
  wandb_project set: process 0 also sends the same scalars, this config and the text samples to
  Weights & Biases (`pip install -e '.[wandb]'`; WANDB_MODE=offline keeps the run on disk, under
  WORKDIR/wandb). wandb_run_name '' is the workdir's basename; a resumed run continues the
  same W&B run (its id is kept in WORKDIR)."""
  return ml_collections.ConfigDict(dict(wandb_project='', wandb_entity='', wandb_run_name=''))


def source_block(held_out: bool, **overrides) -> dict:
  """The data-source fields of `c.data` (vocabulary: lm.data.sources); `held_out` adds the
  validation and test sources (eval_files / eval_split, test_files / test_split) and their
  hash-split shares, for jobs that select on one held-out split and report the other."""
  fields = dict(
    source='python_docs',  # 'python_docs' (offline default) | 'files' | 'tfds'
    files='',  # files: comma-separated paths or globs
    tfds_name='',  # tfds: a dataset prepared under data_dir (no download)
    data_dir=config_dict.placeholder(str),  # tfds
    split='train',  # tfds
  )
  if held_out:
    fields.update(
      eval_files='',  # files: validation data ('' = hash split by eval_fraction)
      eval_split='',  # tfds: validation split ('' = hash split by eval_fraction)
      test_files='',  # files: test data ('' = hash split by test_fraction)
      test_split='',  # tfds: test split ('' = hash split by test_fraction)
      eval_fraction=0.2,  # python_docs, or no eval_files / eval_split: validation share
      test_fraction=0.2,  # python_docs, or no test_files / test_split: test share
    )
  return dict(fields, **overrides)


def pretraining() -> ml_collections.ConfigDict:
  """Defaults every pretraining config shares."""
  c = ml_collections.ConfigDict()
  c.objective = 'mlm'  # 'mlm' (Encoder: MLM + NSP) | 'clm' (Decoder: causal LM)
  # Continued pretraining: a workdir (train.py, dpo.py, sft.py) or an HF directory whose weights,
  # architecture and tokenizer a fresh run starts from, with a fresh optimizer; a workdir that
  # already holds a checkpoint resumes instead.
  c.init_checkpoint = ''
  c.seed = 0
  c.mesh_shape = (-1, 1, 1)  # (data, fsdp, tensor[, context]); -1 takes the remaining devices

  # lm.model.ModelConfig is the one source of model defaults; the tokenizer sets vocab_size.
  model = dataclasses.asdict(ModelConfig())
  for k in ('vocab_size', *lora.FIELDS.values()):  # the lora fields: set by c.lora
    del model[k]
  c.model = ml_collections.ConfigDict(model)

  c.data = ml_collections.ConfigDict(source_block(held_out=False))
  c.data.text_key = 'text'  # tfds: the text feature
  c.data.max_documents = 0  # 0 = all
  c.data.eval_fraction = 0.05  # held-out documents (by a hash of their text)
  # Prepared token shards (lm/data/prepare.py); default: $LM_DATA_CACHE or ~/.cache/lm/prepared
  # under a name derived from this data config. Point every host at one shared path.
  c.data.prepared_dir = config_dict.placeholder(str)
  c.data.prepare_workers = -1  # tokenizing processes; -1: one per core (0 for small sources)
  c.data.shard_mb = 64.0  # text per shard
  c.data.seq_len = 128
  c.data.mlm_prob = 0.15
  c.data.nsp = True
  # Trained once per prepared corpus on a deterministic sample of at most sample_mb of text,
  # unless `path` names HF tokenizer files.
  c.data.tokenizer = ml_collections.ConfigDict(
    dict(kind='wordpiece', vocab_size=8192, path='', sample_mb=64.0)
  )
  # A weighted mixture of sources (lm/data/mixture.py, docs/data.md): {name: {source fields of
  # data, weight}}, each prepared once into its own shards with data.tokenizer; empty: data's
  # own source. mixture_schedule: (step, name, weight) triples, a weight from that step on.
  c.data.mixture = ml_collections.ConfigDict()
  c.data.mixture_schedule = ()

  c.lora = lora_block()
  c.train = train_block(loss_chunk=0)
  c.update(
    periodic_block(log_every=100, eval_every=1000, checkpoint_every=1000, keep_checkpoints=3)
  )
  c.report = report_block()
  c.eval_batches = 20
  c.sample_prompt = 'The assert statement'
  c.sample_tokens = 32
  return c


def finetuning(task: str) -> ml_collections.ConfigDict:
  """Defaults every fine-tuning config shares; configs/finetune_*.py set their task's choices."""
  c = ml_collections.ConfigDict()
  c.task = task  # 'classification' | 'qa' | 'tokens'
  c.init_checkpoint = ''  # train.py workdir or HF BERT/GPT-2 directory
  c.init = 'pretrained'  # 'pretrained' | 'random' (same architecture/tokenizer, fresh body)
  c.seed = 0
  c.mesh_shape = (-1, 1, 1)
  c.pooling = 'pooler'  # classification: 'pooler' ([CLS] / last token) | 'mean'
  c.num_devices = 0  # use the first N devices (0 = all)
  c.model_overrides = model_overrides_block(dropout_rate=0.1, attention_dropout_rate=0.1)
  c.data = ml_collections.ConfigDict(source_block(held_out=True, eval_split='validation'))
  c.data.max_examples = 0  # tfds: 0 = all
  c.data.max_train_examples = 0  # >0: a seeded, label-stratified subset of the training set
  # (a low-resource run); evaluation always uses all examples
  c.data.labels = ()  # label names in id order; () = from the data
  c.data.max_len = 128
  c.data.max_query_len = 32  # qa
  c.data.doc_stride = 64  # qa: tokens between window starts
  # classification: > 0 splits a text longer than max_len into windows this many tokens apart
  # and predicts the mean of their logits (lm/tasks/classification.py); 0 truncates it
  c.data.window_stride = 0
  c.data.max_answer_len = 64  # qa: tokens
  c.data.n_best = 20  # qa
  c.lora = lora_block()
  c.train = train_block(
    batch_size=32, steps=1000, lr=5e-5, warmup_steps=100, body_lr_scale=1.0
  )  # the body's learning rate is lr * body_lr_scale; the head's is lr
  c.eval_batch_size = 64
  # metric: one the task reports (its METRICS, or 'loss' with mode 'min'); checked at start
  c.early_stopping = ml_collections.ConfigDict(
    dict(metric=tasks.primary_metric(task), mode='max', patience=0)
  )
  c.update(periodic_block(log_every=50, eval_every=200, checkpoint_every=200, keep_checkpoints=2))
  c.report = report_block()
  return c


def preference() -> ml_collections.ConfigDict:
  """Defaults configs/reward.py and configs/dpo.py share (fields documented inline)."""
  c = ml_collections.ConfigDict()
  c.objective = 'reward'  # 'reward' (a reward model) | 'dpo' (the policy: configs/dpo.py)
  c.init_checkpoint = config_dict.placeholder(str)  # train.py workdir or HF GPT-2 directory
  c.seed = 0
  c.mesh_shape = (-1, 1, 1)

  c.data = ml_collections.ConfigDict(source_block(held_out=True))
  c.data.prompt_key = 'prompt'  # files (JSON lines) / tfds: the three text fields
  c.data.chosen_key = 'chosen'
  c.data.rejected_key = 'rejected'
  c.data.update(eval_fraction=0.15, test_fraction=0.1)
  c.data.max_pairs = 0  # cap on training pairs (0 = all); held-out: always all
  c.data.rejected = 'shuffle'  # python_docs: 'shuffle' | 'other' | 'mix'
  c.data.max_prompt_words = 40
  c.data.max_response_words = 40
  c.data.seed = 0
  c.data.seq_len = 128  # prompt + response tokens, at most the model's max_len
  c.data.max_prompt_len = 64  # the prompt keeps its last max_prompt_len tokens

  c.model_overrides = model_overrides_block()
  c.lora = lora_block()
  c.train = train_block(batch_size=16, steps=300, lr=1e-4, warmup_steps=20, schedule='cosine')
  c.update(periodic_block(log_every=25, eval_every=100, checkpoint_every=100, keep_checkpoints=2))
  c.report = report_block()
  c.eval_batch_size = 32
  c.loss = 'dpo'  # dpo only: 'dpo' -log sigmoid(beta h) | 'ipo' (h - 1/(2 beta))^2
  c.beta = 0.1
  c.reference = ''  # dpo only: frozen reference model ('' = the pretrained model)
  return c


def backend_block() -> dict:
  """The generation backend fields that ppo.py's rollouts (`c.generate` of `rl`) and sft.py's
  generations (`c.generate` of `text_to_text`) share: 'static' = lm.generate (one fixed batch,
  one compiled loop) | 'engine' = lm.serving.engine (continuous batching, built once per run;
  same tokens for the same seeds, see docs/generation.md); slots: the engine's rows (0 = the
  job's batch: train.batch_size for rollouts, eval_batch_size for generations)."""
  return dict(backend='static', slots=0)


def backend(generate) -> str:
  """A job's `c.generate.backend` ('static' when absent: a workdir saved before the switch)."""
  got = generate.get('backend', 'static')
  if got not in ('static', 'engine'):
    raise ValueError(f"generate.backend={got!r}: use 'static' or 'engine'.")
  return got


def text_to_text(task: str) -> ml_collections.ConfigDict:
  """Defaults configs/sft.py and configs/summarize.py share (lm/sft.py; fields documented
  inline)."""
  c = ml_collections.ConfigDict()
  c.task = task  # 'sft' | 'summarize' | 'translate': default data keys, the lead baseline
  # a decoder or a T5: train.py / dpo.py / sft.py workdir or HF GPT-2 / Llama / T5 directory
  c.init_checkpoint = ''
  c.init = 'pretrained'  # 'pretrained' | 'random' (its architecture and tokenizer, fresh weights)
  c.seed = 0
  c.mesh_shape = (-1, 1, 1)
  c.model_overrides = model_overrides_block(dropout_rate=0.1, attention_dropout_rate=0.1)

  c.data = ml_collections.ConfigDict(source_block(held_out=True, eval_split='validation'))
  c.data.update(eval_fraction=0.15, test_fraction=0.15, test_split='test')
  c.data.prompt_key = ''  # files / tfds: the input and target fields ('' = the source's own)
  c.data.target_key = ''
  c.data.template = 'chat'  # 'chat' (User:/Assistant: turns) | 'plain' (prompt_format)
  c.data.prompt_format = '{prompt}\nTL;DR:'  # plain: the context around the input
  c.data.system = ''  # chat: a system message for examples that have none
  c.data.max_train_examples = 0  # 0 = all
  c.data.seq_len = 128  # packed row length, at most the model's max_len
  c.data.max_prompt_len = 96  # context tokens kept (the document is cut at its end)

  c.lora = lora_block()
  c.train = train_block(batch_size=16, steps=200, lr=3e-4, warmup_steps=20, schedule='cosine')
  c.train.loss_chunk = 0  # >0: fused linear + cross-entropy in chunks of this many tokens
  c.eval_batch_size = 32
  c.generate = ml_collections.ConfigDict(
    dict(
      strategy='beam',  # 'greedy' | 'sample' | 'beam' (lm.generate)
      num_beams=4,
      length_penalty=1.0,
      temperature=1.0,
      top_k=0,
      top_p=1.0,
      max_new_tokens=32,
      min_new_tokens=0,  # EOS banned before this many new tokens
      repetition_penalty=1.0,  # HF's CTRL penalty over prompt + output: < 1 favours copying
      no_repeat_ngram_size=0,  # > 0: no n-gram of this size twice
      seed=0,
      **backend_block(),
    )
  )
  c.early_stopping = ml_collections.ConfigDict(dict(metric='loss', mode='min', patience=0))
  c.update(periodic_block(log_every=25, eval_every=100, checkpoint_every=100, keep_checkpoints=2))
  c.report = report_block()
  return c


def rl() -> ml_collections.ConfigDict:
  """Defaults configs/ppo.py reads: a policy trained against a dpo.py reward model on the prompts
  of the preference data (lm/ppo.py says what each algorithm does with them)."""
  c = ml_collections.ConfigDict()
  c.algorithm = 'ppo'  # 'ppo' (value head + GAE) | 'grpo' | 'rloo' (critic-free, group_size > 1)
  c.init_checkpoint = config_dict.placeholder(
    str
  )  # the starting policy: a decoder workdir / HF dir
  c.reference = ''  # frozen KL reference ('' = the starting policy)
  c.reward_model = config_dict.placeholder(str)  # dpo.py --config=configs/reward.py workdir
  c.seed = 0
  c.mesh_shape = (-1, 1, 1)

  # Prompts: the `prompt` field of the preference data, its three splits (lm/preference.py).
  pref = preference().data
  c.data = ml_collections.ConfigDict(source_block(held_out=True))
  c.data.update({k: pref[k] for k in pref if k not in c.data and k != 'seq_len'})
  c.data.update(eval_fraction=pref.eval_fraction, test_fraction=pref.test_fraction)
  c.max_new_tokens = 48  # response length cap; max_prompt_len + this <= the model's max_len
  c.group_size = 1  # responses per prompt in a step (grpo / rloo: >= 2)
  c.generate = ml_collections.ConfigDict(backend_block())  # rollouts' (and held-out) sampling

  c.kl_coef = 0.05  # ppo / rloo: KL penalty in the reward; grpo: k3 KL term in the loss
  c.kl_budget = 10.0  # nats (held-out mean per-sequence KL): training stops above it
  c.gamma = 1.0  # ppo: GAE discount and lambda
  c.lam = 0.95
  c.clip = 0.2  # policy ratio clip
  c.value_clip = 0.2  # ppo: value clip around the rollout's values
  c.vf_coef = 0.1  # ppo: value-loss weight (the value head shares the decoder's body)
  c.ent_coef = 0.0  # entropy bonus
  c.whiten_advantages = True  # normalise advantages over each rollout's response tokens

  # batch_size: responses per step (prompts per step = batch_size / group_size); each step's
  # rollout is reused for epochs_per_batch passes of `minibatches` updates.
  c.model_overrides = model_overrides_block()
  c.lora = lora_block()
  c.train = train_block(
    batch_size=32,
    steps=100,
    lr=3e-5,
    warmup_steps=0,
    schedule='constant',
    weight_decay=0.0,
    minibatches=4,
    epochs_per_batch=4,
  )
  c.update(periodic_block(log_every=10, eval_every=20, checkpoint_every=20, keep_checkpoints=2))
  c.report = report_block()
  c.eval_batch_size = 64
  c.eval_seed = 1234  # held-out samples use fixed draws, so evaluations compare like with like
  c.best_of_n = -1  # best-of-n from the starting policy on the test prompts at the end:
  # -1 = n matching PPO's samples per training prompt, 0 = skip, k = best-of-k
  return c
