"""The user's own text files as a real TFDS dataset: after one build,
``tfds.load('local_text_files', data_dir=DIR)`` and ``load_corpus`` with
``source='tfds', tfds_name='local_text_files', data_dir=DIR`` read them like any TFDS dataset.

Documents follow :func:`lm.data.text_files.read_text_files` (blank lines separate
documents). The train/validation split hashes each document's text, so it is
stable across runs and machines and independent of file order. One data_dir
holds one build: use a separate data_dir per file set.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import tensorflow_datasets as tfds
from etils import epath

from lm.data.split import doc_hash, doc_held_out
from lm.data.text_files import read_text_files


def is_validation(doc: str, validation_fraction: float) -> bool:
  """The same content-hash split as pretraining's held-out documents."""
  return doc_held_out(doc_hash(doc), validation_fraction)


class LocalTextFiles(tfds.core.GeneratorBasedBuilder):
  """Local text files; ``files`` is only needed to build, not to load a built copy."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Blank-line separated documents, sha256 train/validation split.'}

  # tfds derives code_path through the `importlib_resources` backport, which it does not
  # declare as a dependency (ModuleNotFoundError on download_and_prepare); point it here.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def __init__(
    self,
    *,
    files: Optional[Union[str, Sequence[str]]] = None,
    validation_fraction: float = 0.01,
    **kwargs,
  ):
    self._files, self._validation_fraction = files, validation_fraction
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict({'text': tfds.features.Text()}),
      description='Documents read from local text files by lm.data.text_files.read_text_files.',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    if not self._files:
      raise ValueError(
        'LocalTextFiles needs files to build: use build_text_files_dataset(files, data_dir).'
      )
    docs, _ = read_text_files(self._files)
    splits = {'train': [], 'validation': []}
    for i, doc in enumerate(docs):
      splits['validation' if is_validation(doc, self._validation_fraction) else 'train'].append(
        (i, doc)
      )
    return {name: self._generate_examples(examples) for name, examples in splits.items()}

  def _generate_examples(self, examples):
    for i, doc in examples:
      yield i, {'text': doc}


def build_text_files_dataset(
  files, data_dir: str, validation_fraction: float = 0.01
) -> LocalTextFiles:
  """Build (once; an existing build in data_dir is reused) and return the builder."""
  builder = LocalTextFiles(files=files, validation_fraction=validation_fraction, data_dir=data_dir)
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    )
  )
  return builder
