"""Long-context data: Gutenberg split/stripping, bAbI parsing, BABILong/passkey records, JSONL."""

import io
import json
import lzma
import re
import tarfile

from absl.testing import absltest, parameterized
import numpy as np

from seqpe_jax.data import longctx as lc
from seqpe_jax.data.tokenizers import ByteTokenizer, SentencePieceTokenizer
from seqpe_jax.errors import ConfigError, DataError
from tests import testutil
from tests.conftest import shared_path

BYTES = ByteTokenizer()
MAX_SENT = 100  # The generators' default max_sentence_tokens.


class WordTokenizer:
  """Whitespace words as tokens: a non-byte tokenizer with different length units."""

  name = 'words'

  def encode(self, text: str) -> np.ndarray:
    return np.arange(len(text.split()), dtype=np.int32)


def synthetic_filler(n: int = 400) -> lc.Filler:
  rng = np.random.default_rng(0)
  words = 'alpha beta gamma delta river stone cloud lantern quiet morning'.split()
  text = ' '.join(
      ' '.join(rng.choice(words, int(rng.integers(3, 12)))).capitalize() + '.' for _ in range(n))
  return lc.Filler.from_books([text])


SAMPLE = lc.BabiSample(
    task='qa2', facts=('Mary got the milk there.', 'John moved to the bedroom.',
                       'Sandra went back to the kitchen.', 'Mary travelled to the hallway.'),
    question='Where is the milk?', answer='hallway', support=(0, 3))

BABI_TEXT = """1 Mary got the milk there.
2 John moved to the bedroom.
3 Sandra went back to the kitchen.
4 Mary travelled to the hallway.
5 Where is the milk? \thallway\t1 4
6 John got the football there.
7 John went to the hallway.
8 Where is the football? \thallway\t7 6
1 Daniel went to the garden.
2 Where is Daniel? \tgarden\t1
"""


def fact_positions_ok(test, record, facts):
  """Facts sit at their recorded byte offsets, in order (ByteTokenizer: token = byte)."""
  data = record['input'].encode()
  test.assertLen(record['fact_tokens'], len(facts))
  test.assertEqual(record['fact_tokens'], sorted(record['fact_tokens']))
  for pos, fact in zip(record['fact_tokens'], facts):
    test.assertTrue(data[pos:].startswith(fact.encode()), (pos, fact))


def filler_tokens(record, facts, tok=BYTES) -> int:
  start, end = record['context_tokens']
  return end - start - sum(len(tok.encode(' ' + f)) for f in facts)


class GutenbergTest(testutil.TmpDirTestCase):

  def test_split_rule_is_per_name_and_disjoint(self):
    names = [f'book_{i}.txt' for i in range(300)]
    splits = {n: lc.gutenberg_split(n) for n in names}
    self.assertEqual(set(splits.values()), set(lc.GUTENBERG_SPLITS))
    self.assertEqual(splits, {n: lc.gutenberg_split(n) for n in reversed(names)})
    self.assertEqual(lc.gutenberg_split('dir/book_3.txt'), splits['book_3.txt'])

  def test_split_of_the_shared_books(self):
    lines = shared_path('data', 'gutenberg', 'books-list.txt').read_text().splitlines()[1:]
    names = [x.split('|')[2] for x in lines]
    counts = {s: sum(lc.gutenberg_split(n) == s for n in names) for s in lc.GUTENBERG_SPLITS}
    self.assertEqual(counts, {'train': 68, 'filler': 11, 'eval': 6})

  def test_strip_synthetic(self):
    body = 'Chapter 1\n\nIt was a dark night.\n'
    book = ('\ufeffThe Project Gutenberg eBook of X\r\nLicense blah\r\n'
            '*** START OF THE PROJECT GUTENBERG EBOOK X ***\r\n\r\n' + body.replace('\n', '\r\n')
            + '\r\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\r\nMore license\r\n')
    self.assertEqual(lc.strip_gutenberg(book), body.strip('\n'))
    variant = ('header\n***START OF THIS PROJECT GUTENBERG EBOOK Y***\n' + body
               + 'End of the Project Gutenberg EBook of Y\nfooter')
    self.assertEqual(lc.strip_gutenberg(variant), body.strip('\n'))
    old_footer = ('*** START OF THE PROJECT GUTENBERG EBOOK Z ***\n' + body
                  + "\n\nEnd of Project Gutenberg's Z, by W\n\n*** END OF THE PROJECT")
    self.assertEqual(lc.strip_gutenberg(old_footer), body.strip('\n'))
    self.assertEqual(lc.strip_gutenberg('plain text\n'), 'plain text')  # No markers.

  def _tar(self, books: dict) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as tf:
      for name, text in books.items():
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    path = self.tmp / 'books.tar.xz'
    path.write_bytes(lzma.compress(buf.getvalue()))
    return path

  def test_read_split_and_cache(self):
    wrap = ('*** START OF THE PROJECT GUTENBERG EBOOK {0} ***\n{0} body.\n'
            '*** END OF THE PROJECT GUTENBERG EBOOK {0} ***\n')
    names = [f'b{i}.txt' for i in range(40)]
    path = self._tar({n: 'header\n' + wrap.format(n) for n in names})
    self.assertEqual(lc.list_gutenberg(path), sorted(names))
    by_split = {s: lc.read_gutenberg(s, tar_path=path, cache_dir=self.cache)
                for s in lc.GUTENBERG_SPLITS}
    self.assertEqual(sorted(n for b in by_split.values() for n in b), sorted(names))
    for split, books in by_split.items():
      self.assertNotEmpty(books)
      for name, text in books.items():
        self.assertEqual(lc.gutenberg_split(name), split)
        self.assertEqual(text, f'{name} body.')
    # Second read comes from the cache (same result, no re-stripping needed).
    self.assertEqual(lc.read_gutenberg('eval', tar_path=path, cache_dir=self.cache),
                     by_split['eval'])
    self.assertLen(list((self.cache / 'gutenberg').glob('*/*.txt')), 40)
    self.assertOneLineError(DataError, lambda: lc.read_gutenberg(names=['nope.txt'],
                                                                 tar_path=path), 'nope.txt')
    self.assertOneLineError(ConfigError, lambda: lc.read_gutenberg('test', tar_path=path))
    self.assertOneLineError(DataError, lambda: lc.read_gutenberg(tar_path=self.tmp / 'x.tar.xz'))

  def test_real_book_is_stripped(self):
    tar = shared_path('data', lc.GUTENBERG_TAR)
    text = lc.read_gutenberg(names=['classics__great_expectations.txt'],
                             tar_path=tar)['classics__great_expectations.txt']
    self.assertNotIn('PROJECT GUTENBERG', text.upper()[:2000] + text.upper()[-2000:])
    self.assertNotIn('\r', text)
    self.assertIn('Pip', text[:20000])
    self.assertGreater(len(text), 900_000)


class SentencesTest(absltest.TestCase):

  def test_split(self):
    text = 'Mr. Smith went home.  He said: "Hello!"\nThen J. R. left? Yes. '
    self.assertEqual(lc.split_sentences(text),
                     ['Mr. Smith went home.', 'He said: "Hello!"', 'Then J. R. left?', 'Yes.'])


class BabiTest(testutil.TmpDirTestCase):

  def test_parse(self):
    samples = lc.parse_babi(BABI_TEXT, 2)
    self.assertLen(samples, 3)
    self.assertEqual(samples[0], SAMPLE)
    self.assertEqual(samples[1].facts[-2:], ('John got the football there.',
                                             'John went to the hallway.'))
    self.assertEqual(samples[1].support, (5, 4))  # bAbI order kept, ids -> fact indices.
    self.assertEqual(samples[2].facts, ('Daniel went to the garden.',))  # A new story.
    self.assertEqual(lc.babi_labels(samples), ('garden', 'hallway'))

  @parameterized.parameters(
      ('x Mary went home.\n', 'line id'),
      ('1 Mary went home.\n2 Where is Mary?\tkitchen\n', 'question'),
      ('1 Mary went home.\n2 Where is Mary?\tkitchen\t7\n', 'supporting'),
      ('1 Mary went home.\n', 'no bAbI questions'))
  def test_malformed(self, text, needle):
    self.assertOneLineError(DataError, lambda: lc.parse_babi(text, 1), needle)

  def test_real_tasks(self):
    tar = shared_path('data', lc.BABI_TAR)
    for task in (1, 2):
      test = lc.read_babi(task, 'test', tar_path=tar)
      self.assertLen(test, 1000)
      self.assertEqual(lc.babi_labels(test), lc.BABILONG_LABELS[f'qa{task}'])
      for s in test[:50]:
        self.assertLen(s.support, task)
        self.assertTrue(all(0 <= i < len(s.facts) for i in s.support))
    self.assertLen(lc.read_babi('qa1', 'train', variant='en-10k', tar_path=tar), 10_000)
    self.assertOneLineError(DataError, lambda: lc.read_babi(3, 'train', variant='en-10k',
                                                            tar_path=tar), 'qa3')
    self.assertOneLineError(ConfigError, lambda: lc.read_babi(21, tar_path=tar))


class BabilongTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.filler = synthetic_filler()

  def test_deterministic(self):
    a = lc.babilong_record(SAMPLE, BYTES, 1024, self.filler, seed=3, depth=0.5)
    b = lc.babilong_record(SAMPLE, BYTES, 1024, self.filler, seed=3, depth=0.5)
    c = lc.babilong_record(SAMPLE, BYTES, 1024, self.filler, seed=4, depth=0.5)
    self.assertEqual(a, b)
    self.assertNotEqual(a['input'], c['input'])
    self.assertEqual(set(a), {'index', 'input', 'outputs', 'depth', 'length', 'task',
                              'target_length', 'question', 'support', 'fact_tokens',
                              'context_tokens'})
    self.assertEqual(a['outputs'], ['hallway'])
    self.assertTrue(a['input'].endswith('Question: Where is the milk?\nAnswer:'))
    json.dumps(a)  # JSON-serialisable as is.

  @parameterized.parameters(0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
  def test_depth(self, depth):
    r = lc.babilong_record(SAMPLE, BYTES, 2048, self.filler, seed=1, depth=depth)
    fact_positions_ok(self, r, SAMPLE.facts)
    # The first fact is within one filler sentence of depth x filler tokens.
    offset = r['fact_tokens'][0] - r['context_tokens'][0]
    self.assertLessEqual(abs(offset - depth * filler_tokens(r, SAMPLE.facts)), MAX_SENT)
    # spread=0: the facts form one block.
    block = ' '.join(SAMPLE.facts)
    self.assertIn(block, r['input'])

  def test_same_filler_across_depths(self):
    a = lc.babilong_record(SAMPLE, BYTES, 1024, self.filler, seed=1, depth=0.0)
    b = lc.babilong_record(SAMPLE, BYTES, 1024, self.filler, seed=1, depth=1.0)
    strip = lambda r: r['input'].replace(' '.join(SAMPLE.facts), '').split()
    self.assertEqual(strip(a), strip(b))

  def test_lengths_ladder(self):
    for tok, unit in ((BYTES, 'bytes'), (WordTokenizer(), 'words')):
      base = 256 if unit == 'bytes' else 64
      for target in lc.length_ladder(base):
        r = lc.babilong_record(SAMPLE, tok, target, self.filler, seed=0, depth=0.3)
        self.assertLessEqual(r['length'], target)
        # Tolerance: one filler sentence (< max_sentence_tokens) plus a few tokens.
        self.assertGreaterEqual(r['length'], target - MAX_SENT - 4, (unit, target))
        self.assertEqual(r['length'], len(tok.encode(r['input'])))

  def test_spread_keeps_order(self):
    many = lc.BabiSample('qa1', tuple(f'Fact number {i} is true.' for i in range(12)),
                         'Where?', 'garden', (11,))
    for seed in range(3):
      r = lc.babilong_record(many, BYTES, 4096, self.filler, seed=seed, depth=None)
      fact_positions_ok(self, r, many.facts)
      self.assertIsNone(r['depth'])
      spreadd = lc.babilong_record(many, BYTES, 4096, self.filler, seed=seed, depth=0.2,
                                   spread=0.5)
      fact_positions_ok(self, spreadd, many.facts)
      first, last = spreadd['fact_tokens'][0], spreadd['fact_tokens'][-1]
      span = filler_tokens(spreadd, many.facts)
      self.assertLessEqual(abs(first - spreadd['context_tokens'][0] - 0.2 * span), MAX_SENT)
      self.assertLessEqual(last - first, 0.5 * 0.8 * span + MAX_SENT + 300)  # + the facts.

  def test_dataset(self):
    samples = lc.parse_babi(BABI_TEXT, 2)
    records = lc.babilong_dataset(samples, BYTES, self.filler, lengths=[512, 1024],
                                  depths=[0.0, 1.0], num_samples=2, seed=0)
    self.assertLen(records, 8)
    self.assertEqual([r['target_length'] for r in records], [512] * 4 + [1024] * 4)
    self.assertEqual([r['index'] for r in records[:4]], [0, 1, 0, 1])

  def test_errors(self):
    self.assertRaises(ConfigError, lc.babilong_record, SAMPLE, BYTES, 1024, self.filler,
                      depth=1.5)
    self.assertRaises(ConfigError, lc.babilong_record, SAMPLE, BYTES, 50, self.filler)
    self.assertRaises(ConfigError, lc.length_ladder, 0)

  def test_real_filler_and_babi(self):
    book = lc.read_gutenberg(names=['classics__roderick_random.txt'],
                             tar_path=shared_path('data', lc.GUTENBERG_TAR))
    self.assertEqual(lc.gutenberg_split('classics__roderick_random.txt'), 'filler')
    filler = lc.Filler.from_books(book.values())
    sample = lc.read_babi(1, 'test', tar_path=shared_path('data', lc.BABI_TAR))[0]
    r = lc.babilong_record(sample, BYTES, 4096, filler, seed=0, depth=0.5)
    fact_positions_ok(self, r, sample.facts)
    self.assertBetween(r['length'], 4096 - MAX_SENT - 4, 4096)


class SentencePieceTest(testutil.TmpDirTestCase):

  def test_positions_and_length(self):
    # SentencePiece merges the joining space into the next word: checks that
    # positions and lengths are measured in the full prompt's tokens.
    corpus = self.tmp / 'corpus.txt'
    filler = synthetic_filler(300)
    corpus.write_text('\n'.join(filler.sentences + list(SAMPLE.facts)))
    sp = SentencePieceTokenizer.train([corpus], 300, self.cache)
    for depth in (0.0, 0.5, 1.0):
      r = lc.babilong_record(SAMPLE, sp, 1024, filler, seed=0, depth=depth)
      self.assertBetween(r['length'], 1024 - MAX_SENT - 4, 1024)
      ids = sp.encode(r['input'])
      self.assertLen(ids, r['length'])
      for pos, fact in zip(r['fact_tokens'], SAMPLE.facts):
        self.assertEqual(sp.decode(ids[pos:pos + 40]).strip()[:len(fact)], fact)


class PasskeyTest(parameterized.TestCase):

  def test_record(self):
    r = lc.passkey_record(BYTES, 1024, depth=0.5, seed=7)
    key = r['outputs'][0]
    self.assertRegex(key, r'^[1-9]\d{4}$')
    self.assertEqual(r['input'].count(key), 2)
    self.assertTrue(r['input'].endswith('What is the pass key? The pass key is'))
    self.assertIn('The grass is green. The sky is blue.', r['input'])
    self.assertEqual(r, lc.passkey_record(BYTES, 1024, depth=0.5, seed=7))
    self.assertNotEqual(key, lc.passkey_record(BYTES, 1024, depth=0.5, seed=8)['outputs'][0])

  @parameterized.parameters(0.0, 0.33, 0.5, 0.9, 1.0)
  def test_depth_and_length(self, depth):
    for target in (512, 2048, 8192):
      r = lc.passkey_record(BYTES, target, depth=depth, seed=1)
      needle = lc.PASSKEY_NEEDLE.format(passkey=r['outputs'][0])
      fact_positions_ok(self, r, [needle])
      offset = r['fact_tokens'][0] - r['context_tokens'][0]
      # The repeated noise sentences are at most 22 bytes long.
      self.assertLessEqual(abs(offset - depth * filler_tokens(r, [needle])), 22)
      self.assertBetween(r['length'], target - 25, target)

  def test_dataset_and_book_filler(self):
    records = lc.passkey_dataset(BYTES, lengths=[256, 512], depths=[0.0, 1.0], num_samples=3,
                                 filler=synthetic_filler(), digits=6)
    self.assertLen(records, 12)
    self.assertTrue(all(re.fullmatch(r'\d{6}', r['outputs'][0]) for r in records))
    self.assertTrue(all(r['task'] == 'passkey' for r in records))


class JsonlTest(testutil.TmpDirTestCase):

  def test_roundtrip(self):
    records = [{'index': 0, 'input': 'Q\u2028A: x', 'outputs': ['a', 'b']},
               {'index': 'x1', 'input': 'ctx', 'outputs': ['c'], 'extra': 1}]
    path = self.tmp / 'qa.jsonl'
    lc.write_qa_jsonl(path, records)
    self.assertEqual(lc.read_qa_jsonl(path), records)

  def test_defaults(self):
    path = self.tmp / 'qa.jsonl'
    path.write_text('{"input": "a", "outputs": "x"}\n\n{"input": "b", "outputs": ["y"]}\n')
    self.assertEqual(lc.read_qa_jsonl(path), [{'index': 0, 'input': 'a', 'outputs': ['x']},
                                              {'index': 1, 'input': 'b', 'outputs': ['y']}])

  @parameterized.parameters(
      ('{"input": "a", "outputs": ["x"]}\n{"input": "a"', ':2: not valid JSON'),
      ('[1, 2]', 'JSON object'),
      ('{"outputs": ["x"]}', '"input"'),
      ('{"input": "a", "outputs": []}', '"outputs"'),
      ('{"input": "a", "outputs": [3]}', '"outputs"'),
      ('{"input": "a", "outputs": ["x"], "index": 1.5}', '"index"'),
      ('\n\n', 'no records'))
  def test_malformed(self, text, needle):
    path = self.tmp / 'bad.jsonl'
    path.write_text(text)
    self.assertOneLineError(DataError, lambda: lc.read_qa_jsonl(path), needle)

  def test_missing_file(self):
    self.assertOneLineError(DataError, lambda: lc.read_qa_jsonl(self.tmp / 'none.jsonl'))


if __name__ == '__main__':
  absltest.main()
