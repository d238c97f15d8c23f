"""kNN by cosine similarity of the model's embeddings (final hidden states mean-pooled over the
input's real tokens) to the query's; most similar first."""

from lm.icl import features as features_lib

NEEDS = ('pool_emb', 'query_emb')
QUERY_INDEPENDENT = False


def select(k, features, query, seed, options):
  del seed, options
  return features_lib.cosine_rank(features.pool_emb, features.query_emb[query], k)
