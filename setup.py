"""lm: JAX/Flax Transformer language models, from a laptop CPU to a TPU pod."""

from setuptools import find_packages, setup

# Ranges are the ones the test suite ran against; jax/flax/orbax break across minors.
INSTALL_REQUIRES = [
  'jax>=0.10.0,<0.11',
  'flax>=0.12.0,<0.13',
  'optax>=0.2.6,<0.3',
  'orbax-checkpoint>=0.12.0,<0.13',
  'tensorflow-cpu>=2.20,<2.22',
  'tensorflow-datasets>=4.9.9,<4.10',
  'ml-collections>=1.1,<1.2',
  'absl-py>=2.1',
  'numpy>=1.26',
  'tokenizers>=0.21,<0.24',
  'tensorboardX>=2.6',
  'tqdm>=4.66',
  'safetensors>=0.4',
  'sentencepiece>=0.2,<0.3',  # Llama / Mistral tokenizer.model files
  'sacrebleu>=2.4,<3',
  'rouge-score==0.1.2',
  'scikit-learn>=1.5',
  'importlib_resources',  # tensorflow-datasets imports it when building a dataset
]

# serve.py: the HTTP server; jinja2 renders a model directory's chat template without transformers
# (3.1.6: earlier versions have sandbox escapes, and templates come with downloaded models).
SERVE = ['fastapi>=0.165,<0.170', 'uvicorn>=0.55,<0.60', 'jinja2>=3.1.6,<4']
# report.wandb_project: lm.report's Weights & Biases run (tests/test_report.py reads its offline
# files, whose layout changes between minors).
WANDB = ['wandb>=0.31,<0.32']
# python -m lm.plot: training curves. An extra, not a requirement: training never draws, and a TPU
# host needs no plotting stack.
PLOT = ['matplotlib>=3.8,<4']
EXTRAS = {
  'serve': SERVE,
  'wandb': WANDB,
  'plot': PLOT,
  # torch==2.13.0 resolves to the CPU wheel on this project's machines.
  # peft: tests/test_peft.py checks lm.hf.peft's adapters against PEFT's own LoraLayer.
  'hf': ['torch==2.13.0', 'transformers>=5.0,<6', 'peft>=0.21,<0.22'],
  'test': [
    'pytest>=8',
    'pytest-xdist>=3.5',
    'nbclient>=0.10',
    'nbformat>=5.10',
    'ipykernel>=6.29',
    # The formatter and linter of tests/test_style.py: pinned, its layout changes between versions.
    'ruff==0.17.6',
    # tests/test_serve.py queries serve.py with the real OpenAI client.
    'openai>=3.63,<4',
    'httpx>=0.29,<0.30',
    *SERVE,
    *WANDB,
    *PLOT,  # lm.plot and the notebooks' curves
  ],
}
# lm.harness (eval.py --harness_tasks): lm-evaluation-harness's model interface and tasks;
# accelerate: its `hf` backend, which tests/test_harness.py compares ours with.
EXTRAS['harness'] = ['lm-eval>=0.4.8,<0.5', 'accelerate>=1.0']
EXTRAS['test'] += EXTRAS['harness']  # the README's `.[test,hf]` runs tests/test_harness.py
# lm-eval's API models (`local-completions`, pointed at serve.py in tests/test_serve.py).
EXTRAS['test'].append('lm-eval[api]>=0.4.8,<0.5')
# bench/data_pipeline.py compares our memmapped shards with array_record and grain readers.
EXTRAS['bench'] = ['array-record>=0.8,<0.9', 'grain>=0.2.18,<0.3', 'psutil>=5.9']
EXTRAS['all'] = sorted({d for v in EXTRAS.values() for d in v})

setup(
  name='lm',
  version='0.1.0',
  description='Pretrain and fine-tune Transformer language models with JAX/Flax.',
  packages=find_packages(include=['lm', 'lm.*']),
  python_requires='>=3.10',
  install_requires=INSTALL_REQUIRES,
  extras_require=EXTRAS,
)
