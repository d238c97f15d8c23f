"""k-means (scikit-learn, k clusters, on L2-normalised embeddings) over the pool; per cluster the
member nearest its centroid, biggest cluster first: demonstrations that cover the pool."""

import numpy as np

from lm.icl import features as features_lib

NEEDS = ('pool_emb',)
QUERY_INDEPENDENT = True


def select(k, features, query, seed, options):
  del query, options
  return diverse(features.pool_emb, k, seed)


def diverse(pool_emb: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
  from sklearn.cluster import KMeans  # pylint: disable=g-import-not-at-top

  x = features_lib.normalize(pool_emb)
  k = min(k, len(x))
  if k <= 0:
    return np.zeros(0, np.int64)
  km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
  picks, sizes = [], []
  for c in range(k):
    members = np.flatnonzero(km.labels_ == c)
    if not len(members):  # k-means can leave a cluster empty on duplicate points
      continue
    d = np.linalg.norm(x[members] - km.cluster_centers_[c], axis=-1)
    picks.append(members[np.argmin(d)])
    sizes.append(len(members))
  order = np.argsort(-np.asarray(sizes), kind='stable')
  picks = [picks[i] for i in order]
  if len(picks) < k:  # fill from the rest, nearest-to-any-centroid first
    rest = [i for i in np.argsort(km.transform(x).min(-1), kind='stable') if i not in picks]
    picks += rest[: k - len(picks)]
  return np.asarray(picks, np.int64)
