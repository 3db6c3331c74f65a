"""seqpe_jax: SeqPE (Sequential Position Encoding) in JAX/Flax.

Shape-letter legend. Array names carry their shape as a suffix (`x_BxLxC`); each
letter means one thing everywhere:

  B  batch
  L  query length (tokens, or patches + prefix; a prompt when generating)
  S  key length (= L in self-attention; cache slots / total length when decoding)
  G  tokens generated (new tokens)
  C  model width (the backbone's channels); c: image channels
  H  attention heads;  K  head dim (K2 = K/2 rotation pairs; K~ a key as attention sees it)
  F  MLP hidden width
  V  vocabulary;  Y  classes
  P  position sets (divides B: sample b uses set b mod P)
  X  a leading dim that is P, B or 1 (position functions accept any)
  n  position axes (1 text, 2 images);  h, w  grid height / width (pixels or patches)
  N  patches (h·w)
  M  positions encoded in one SeqPE encoder call (main + auxiliary)
  T  SeqPE digit tokens (n·k digits + CLS; k = max_digits)
  D  SeqPE encoder width;  E  position-embedding width (the encoder's out_dim)
  O, I  output / input size of a resize matrix

Not yet followed outside the PE and model modules (see the README): the contrastive
sampler / loss name candidates `K`, and `aux.max_position` is called P in comments.
"""

__version__ = '0.1.0'
