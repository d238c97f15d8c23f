"""The LM's mean token loss on each formatted demonstration (text and label):
``difficulty='easy'`` (default) picks the k lowest-loss ones, lowest first, ``'hard'`` the k
highest, highest first."""

import numpy as np

NEEDS = ('pool_loss',)
QUERY_INDEPENDENT = True


def select(k, features, query, seed, options):
  del query, seed
  order = options.get('difficulty', 'easy')
  if order not in ('easy', 'hard'):
    raise ValueError(f"difficulty={order!r}: use 'easy' (lowest loss) or 'hard' (highest).")
  loss = np.asarray(features.pool_loss, np.float64)
  return np.argsort(loss if order == 'easy' else -loss, kind='stable')[:k]
