#!/bin/bash
# Everything this project measures on a GPU, in one invocation of at most 10 minutes on one GPU
# (issue 31). Offline: the data is a local corpus (this Python's site-packages .py files), the
# tokenizers are trained on it as train.py does. Phases, each under its own `timeout` (seconds,
# cut further so the whole ends within TOTAL_S=570), each tee'd into $OUT/<phase>.txt:
#   setup            40  nvidia-smi, versions, the corpus (64 MB), the bf16 / fp32 matmul ceiling
#                        (bench/train_throughput.py --ceiling_only): the MFU denominator
#   check_attention  60  fused attention vs einsum, logits and grads, causal, segment ids,
#                        grouped-query heads: cuDNN and lm/models/kernels.py's Pallas 'flash'
#                        (compiled Triton on the GPU)
#   train_gpt2_small 100 train.py end to end on configs/gpt2.py:small (bf16, remat dots, chunked
#                        loss, cuDNN attention as configured), mesh (1,1,1), batch 16 x 1024,
#                        40 steps, logged every 10: data prepared and a 50,257 BPE trained on
#                        the corpus, checkpoint and sample at the end; tokens/s -> MFU
#   train_llama_1b  160  the same on configs/llama.py:1b (Llama 3.2 1B's shape, 128,256 BPE),
#                        batch 4 x 4096, 24 steps, logged every 8
#   longest          90  the longest one-row sequence whose compiled train step fits the GPU's
#                        memory (bench/gpu_report.py longest: XLA's memory analysis on the GPU,
#                        scanned layers), per shape, the configs' attention ('auto' = cuDNN with
#                        a dense document mask), then the Pallas 'flash' kernel if time is left
#   decode           40  bench/decode.py: greedy decode tokens/s (d=256 L=4 vocab 50,257)
#   serve            75  bench/serve.py: serve.py under 1 and 32 clients vs sequential generate
# then summary.txt: one table of the phases (rc, seconds, budget, result). MFU: steady-state
# tokens/s (the logged intervals after the first, which holds the compile) x model FLOPs per
# token / the bf16 matmul ceiling (bench/gpu_report.py's docstring has the formula).
#
#   bash bench/gpu.sh                  # on a GPU; logs in $OUT (default bench/logs/gpu_DATE)
#   SMOKE=1 bash bench/gpu.sh          # CPU: the same phases at tiny shapes (flash in Pallas
#                                      # interpret mode, no cuDNN), ~3-5 min on 2 cores
# The project's device tool: run(command='bash bench/gpu.sh', carry=['.whl'], timeout_s=600),
# with .whl/ holding the wheels the GPU image lacks (bench/gpu_wheels.sh fetches them); $OUT is
# the tool's, so the 8 logs come back. Env: PY (python3), OUT, WORK (scratch: corpus, prepared
# data, workdirs; /dev/shm when it has room), TOTAL_S.
set -o pipefail
START=$(date +%s)
cd "$(dirname "$0")/.." || exit 1
SMOKE=${SMOKE:-0}
PY=${PY:-python3}
OUT=${OUT:-bench/logs/gpu_$(date +%F)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
own_work=0
if [ -z "$WORK" ]; then
  own_work=1
  WORK=/tmp/lm_gpu_$$
  shm=$(df --output=avail -B1G /dev/shm 2>/dev/null | tail -1 | tr -d ' ')
  if [ "$SMOKE" != 1 ] && [ "${shm:-0}" -ge 40 ] 2>/dev/null; then WORK=/dev/shm/lm_gpu_$$; fi
fi
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PY OUT WORK SMOKE
# Wheels the GPU image lacks (ml-collections, tensorboardX, fastapi, ...), carried in .whl/.
if [ "$SMOKE" != 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if [ "$SMOKE" = 1 ]; then
  TOTAL_S=${TOTAL_S:-480}
  export JAX_PLATFORMS=cpu
  CORPUS_MB=2
  IMPLS=flash
  CHECK_FLAGS="--batch=2 --seq=64"
  tiny="--config.data.seq_len=64 --config.model.max_len=64 --config.model.hidden_size=64
    --config.model.num_layers=2 --config.data.tokenizer.vocab_size=1024 --config.train.batch_size=4"
  GPT2_FLAGS="$tiny --config.model.num_heads=2 --config.model.mlp_dim=256"
  LLAMA_FLAGS="$tiny --config.model.num_heads=4 --config.model.num_kv_heads=2 --config.model.mlp_dim=128"
  STEPS="--config.train.steps=6 --config.log_every=2"
  GPT2_STEPS=$STEPS LLAMA_STEPS=$STEPS SAMPLE_MB="2 2"
  lt="model.max_len=64 model.hidden_size=64 model.num_layers=2 model.num_heads=4 data.tokenizer.vocab_size=1024"
  LONGEST_SETS="$lt model.mlp_dim=256"
  LONGEST_FLAGS="--budget_gib=0.03 --fit_lengths=128,256,512 --step=128 --max_compiles=1"
  DECODE_FLAGS="--hidden=32 --layers=1 --heads=2 --vocab=512 --new_tokens=16 --batch_sizes=1,4 --windows=32,40 --window=4"
  SERVE_FLAGS="--hidden=32 --layers=1 --heads=2 --vocab=300 --requests=2 --clients=1,2 --max_tokens=4"
  B_SETUP=60 B_CHECK=90 B_GPT2=120 B_LLAMA=120 B_LONGEST=180 B_DECODE=60 B_SERVE=90
else
  TOTAL_S=${TOTAL_S:-570}
  CORPUS_MB=64
  IMPLS=cudnn,flash
  CHECK_FLAGS=""
  GPT2_FLAGS="--config.train.batch_size=16"
  LLAMA_FLAGS="--config.train.batch_size=4"
  GPT2_STEPS="--config.train.steps=40 --config.log_every=10"
  LLAMA_STEPS="--config.train.steps=24 --config.log_every=8"
  SAMPLE_MB="16 64"  # BPE sample: 8 MB of .py gave 57k ids, 64 MB the full 128,256 (2 cores: 10 s)
  LONGEST_SETS=""
  LONGEST_FLAGS="--max_compiles=2"  # the budget: the allocator's limit at a 0.95 memory fraction
  export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9  # train.py's llama 1b: more than the default 0.75
  DECODE_FLAGS="--new_tokens=128 --batch_sizes=1,8,32 --windows=32,256,480"
  SERVE_FLAGS="--requests=32 --clients=1,32 --max_tokens=64"
  B_SETUP=40 B_CHECK=60 B_GPT2=100 B_LLAMA=160 B_LONGEST=90 B_DECODE=40 B_SERVE=75
fi
DEADLINE=$((START + TOTAL_S))
PHASES=$WORK/phases.tsv
: >"$PHASES"
export CORPUS_MB IMPLS CHECK_FLAGS GPT2_FLAGS LLAMA_FLAGS GPT2_STEPS LLAMA_STEPS SAMPLE_MB
export LONGEST_SETS LONGEST_FLAGS DECODE_FLAGS SERVE_FLAGS

quiet() { grep --line-buffered -v "^W0\|^I0\|^E0000\|^WARNING: All log messages"; }

# phase NAME BUDGET_S FUNCTION: runs the exported FUNCTION under timeout min(BUDGET, time left),
# its output into $OUT/NAME.txt, a row into $PHASES.
phase() {
  local name=$1 budget=$2 fn=$3 left t t0 rc
  left=$((DEADLINE - $(date +%s)))
  t=$((budget < left ? budget : left))
  if [ "$t" -lt 15 ]; then
    echo "== $name: skipped, ${left} s left of TOTAL_S=$TOTAL_S" | tee "$OUT/$name.txt"
    printf '%s\tskip\t0\t%s\n' "$name" "$budget" >>"$PHASES"
    return
  fi
  echo "== $name (timeout ${t} s of budget ${budget} s) $(date -u +%FT%TZ)" | tee "$OUT/$name.txt"
  t0=$(date +%s)
  timeout -k 10 "$t" bash -c "$fn" 2>&1 | quiet | tee -a "$OUT/$name.txt"
  rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "== $name: TIMED OUT after ${t} s" | tee -a "$OUT/$name.txt"
  echo "== $name: rc=$rc, $(($(date +%s) - t0)) s" | tee -a "$OUT/$name.txt"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" "$budget" >>"$PHASES"
}

setup() {
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,memory.used,memory.total \
    --format=csv 2>&1 || echo "no nvidia-smi (SMOKE=$SMOKE)"
  $PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
  echo "git: $(git rev-parse --short HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) changed paths; WORK=$WORK"
  $PY bench/gpu_report.py corpus "$WORK/corpus" "$CORPUS_MB" || return 1
  local n=
  [ "$SMOKE" = 1 ] && n=--matmul_n=512
  $PY bench/train_throughput.py --ceiling_only --quick $n | tee "$WORK/ceiling.txt"
}

check_attention() {
  $PY bench/check_attention.py --impl="$IMPLS" $CHECK_FLAGS
}

# train NAME CONFIG SAMPLE_MB STEP_FLAGS MODEL_FLAGS: train.py end to end, then its MFU.
train() {
  local name=$1 spec=$2 sample_mb=$3 steps=$4 flags=$5
  rm -rf "$WORK/$name"
  $PY train.py --config="configs/$spec" --workdir="$WORK/$name" \
    --config.mesh_shape='(1,1,1)' --config.data.source=files --config.data.files="$WORK/corpus" \
    --config.data.prepared_dir="$WORK/prepared_$name" --config.data.eval_fraction=0.0 \
    --config.data.tokenizer.sample_mb="$sample_mb" --config.eval_every=0 \
    --config.checkpoint_every=0 --config.keep_checkpoints=1 --config.sample_tokens=8 \
    $steps $flags || return 1
  $PY bench/gpu_report.py mfu --workdir="$WORK/$name" --ceiling="$WORK/ceiling.txt" --name="$name"
  rm -rf "$WORK/$name/checkpoints"
}
train_gpt2_small() { train gpt2_small gpt2.py:small "${SAMPLE_MB% *}" "$GPT2_STEPS" "$GPT2_FLAGS"; }
train_llama_1b() { train llama_1b llama.py:1b "${SAMPLE_MB#* }" "$LLAMA_STEPS" "$LLAMA_FLAGS"; }

longest() {
  local rc=0 impl spec sets
  # Autotuning picks kernels, not buffers: off, the compiles are several times faster.
  if [ "$SMOKE" != 1 ]; then
    export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_autotune_level=0"
    export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 XLA_PYTHON_CLIENT_PREALLOCATE=false
  fi
  for impl in '' flash; do
    for spec in gpt2.py:small llama.py:1b; do
      sets=()
      for s in $LONGEST_SETS; do sets+=("--set=$s"); done
      [ "$SMOKE" = 1 ] && [ "$spec" = llama.py:1b ] && sets+=(--set=model.num_kv_heads=2 --set=model.mlp_dim=128)
      $PY bench/gpu_report.py longest --spec=$spec --name="${spec/.py:/_}${impl:+_$impl}" \
        --attention_impl="$impl" $LONGEST_FLAGS "${sets[@]}" || rc=1
    done
  done
  return $rc
}

decode() { $PY bench/decode.py $DECODE_FLAGS; }
# Two JAX processes on the GPU (the bench's sequential generate, then serve.py): no preallocation.
serve() { XLA_PYTHON_CLIENT_PREALLOCATE=false $PY bench/serve.py $SERVE_FLAGS; }

export -f setup check_attention train train_gpt2_small train_llama_1b longest decode serve
phase setup "$B_SETUP" setup
phase check_attention "$B_CHECK" check_attention
phase train_gpt2_small "$B_GPT2" train_gpt2_small
phase train_llama_1b "$B_LLAMA" train_llama_1b
phase longest "$B_LONGEST" longest
phase decode "$B_DECODE" decode
phase serve "$B_SERVE" serve
{
  echo "bench/gpu.sh (SMOKE=$SMOKE) $(date -u +%FT%TZ), $(($(date +%s) - START)) s in all, logs in $OUT"
  $PY bench/gpu_report.py summary "$OUT" --phases="$PHASES"
} | tee "$OUT/summary.txt"
failed=$(awk -F'\t' '$2 != 0 {print $1}' "$PHASES" | tr '\n' ' ')
[ "$own_work" = 1 ] && rm -rf "$WORK"
if [ -n "$failed" ]; then
  echo "failed, timed out or skipped: $failed"
  exit 1
fi
