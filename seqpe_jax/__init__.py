"""seqpe_jax: SeqPE (Sequential Position Encoding) in JAX/Flax."""

__version__ = '0.1.0'
