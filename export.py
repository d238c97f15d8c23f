"""Export a trained model to HuggingFace: the merged model, or its LoRA adapter for PEFT.

  # config.json + model.safetensors (+ tokenizer.json): LoRA adapters folded into the kernels
  # (a QLoRA base dequantized), loadable with transformers.AutoModel*.from_pretrained
  python export.py --checkpoint=WORKDIR --output=DIR [--which=latest] [--step=N]
  # adapter_config.json + adapter_model.safetensors: peft.PeftModel.from_pretrained(base, DIR)
  python export.py --checkpoint=WORKDIR --output=DIR --adapter [--base_model=meta-llama/...]

WORKDIR is a train.py, sft.py, dpo.py or ppo.py workdir (a PPO one gives its policy) or an HF
directory. The HF architecture follows from the model: GPT-2 (learned positions), Llama, Mistral
(a sliding window) or Qwen2 (q/k/v biases) for a decoder, T5 for an encoder-decoder, BERT for an
encoder (`lm.hf.model_type_of`). A task model (finetune.py) has a head HF has no class for.
"""

from absl import flags

from lm import cli
from lm import hf
from lm import pretrained

FLAGS = flags.FLAGS
flags.DEFINE_string('checkpoint', None, 'Workdir of a job, or an HF directory.', required=True)
flags.DEFINE_string('output', None, 'Directory to write.', required=True)
flags.DEFINE_bool('adapter', False, 'Write the PEFT LoRA adapter instead of the merged model.')
flags.DEFINE_string(
  'base_model', '', "The adapter's base_model_name_or_path (--adapter; the HF base it fits)."
)
flags.DEFINE_enum(
  'which', 'best', ['best', 'latest'], 'best/ (when the job kept one) or the latest checkpoint.'
)
flags.DEFINE_integer('step', None, 'Checkpoint step (default: --which).')


def main(argv):
  del argv
  path = FLAGS.checkpoint
  pre = pretrained.load(path, step=FLAGS.step, which=FLAGS.which)
  if pre.head is not None:
    pre.body(path, 'export.py')  # refuses a task or reward model in one line
  kind = hf.model_type_of(pre.kind, pre.cfg)
  if FLAGS.adapter:
    hf.save_adapter(FLAGS.output, kind, pre.cfg, pre.params, FLAGS.base_model)
    print(f'wrote the {kind} LoRA adapter (rank {pre.cfg.lora_rank}) to {FLAGS.output}')
  else:
    hf.export_merged(FLAGS.output, kind, pre.cfg, pre.params, pre.tokenizer)
    print(f'wrote the {kind} model to {FLAGS.output}')


if __name__ == '__main__':
  cli.run(main)
