# Longest one-row sequence per device budget, 1 device vs a context axis (issue 31), 2026-12-07,
# jax 0.10.2, 8 simulated CPU devices on a 2-core machine shared with other work (memory figures
# are compiled memory analysis, not timings: load does not change them).
# memory_longest.txt: in each config's block the rows are (1,1,1) with einsum attention, then
# (1,1,1) through the ring schedule on one device (--ring_baseline; this run printed that row
# before the ' ring' label was added), then the context axis of 8.
python bench/memory.py --longest=1 --ring_baseline=1 --configs=gpt2.py:small,llama.py:1b \
    --meshes=1,1,1:1,1,1,8 > memory_longest.txt
# memory_longest_2_4.txt: context axes of 2 and 4 for GPT-2 small (labelled rows).
python bench/memory.py --longest=1 --ring_baseline=1 --configs=gpt2.py:small \
    --meshes=1,1,1:1,1,1,2:1,1,1,4 > memory_longest_2_4.txt
