"""k distinct pool items, drawn with ``np.random.default_rng([seed, query])``: a fresh draw per
test example and seed (the baseline every other strategy should beat)."""

import numpy as np

NEEDS = ()
QUERY_INDEPENDENT = False


def select(k, features, query, seed, options):
  del options
  rng = np.random.default_rng([seed] if query is None else [seed, query])
  return rng.choice(features.num_pool, size=min(k, features.num_pool), replace=False)
