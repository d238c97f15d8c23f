"""The pool items whose per-example LM-loss gradients (see lm/icl/gradients.py) have the highest
cosine similarity to the query's gradient, most similar first: demonstrations that would move the
model the way the query does."""

from lm.icl import features as features_lib

NEEDS = ('pool_grad', 'query_grad')
QUERY_INDEPENDENT = False


def select(k, features, query, seed, options):
  del seed, options
  return features_lib.cosine_rank(features.pool_grad, features.query_grad[query], k)
