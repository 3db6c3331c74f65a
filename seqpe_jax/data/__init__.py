"""Data layer: text corpora → token streams (`text`, `tokenizers`), images (`vision`), shared I/O (`common`).

Entry points for training code are `text.build_lm_data` and
`vision.build_image_data`; both read a `config.data` ConfigDict.
"""

from seqpe_jax.data.common import process_batches, resolve_cache_dir, resolve_data_dir  # noqa: F401
