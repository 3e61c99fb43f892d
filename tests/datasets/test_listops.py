"""ListOps: the generator against LRA's specification (lengths, values,
distinct expressions, the distribution of a test-local reference sampler),
deterministic, written atomically, and loud about bad arguments."""
import os
import random
import statistics

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency, ks_2samp
from torch_geometric.data import Data, HeteroData, InMemoryDataset

from pyg_hsa.datasets import ListOps
from pyg_hsa.datasets import listops as listops_module
from pyg_hsa.datasets import listops_generator
from pyg_hsa.utils import io

SYMBOLS = [str(d) for d in range(10)] + ['[MIN', '[MAX', '[MED', '[SM', ']']
OPS = ['[MIN', '[MAX', '[MED', '[SM']
SIZES = {'train': 300, 'val': 30, 'test': 30}


def build(root, split='train', **kwargs):
    kwargs.setdefault('num_examples', SIZES)
    return ListOps(str(root), split=split, **kwargs)


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return tmp_path_factory.mktemp('listops')


@pytest.fixture(scope='module')
def splits(root):
    return {split: build(root, split) for split in ('train', 'val', 'test')}


def texts(dataset):
    return [' '.join(SYMBOLS[i] for i in data.x.tolist()) for data in dataset]


# An independent evaluator: recursive descent over the text ###############


def value_of(text):
    symbols = text.split()
    value, end = _parse(symbols, 0)
    assert end == len(symbols), 'trailing symbols'
    return value


def _parse(symbols, i):
    symbol = symbols[i]
    if symbol.isdigit():
        return int(symbol), i + 1
    assert symbol in OPS, symbol
    args, i = [], i + 1
    while symbols[i] != ']':
        value, i = _parse(symbols, i)
        args.append(value)
    if symbol == '[MIN':
        return min(args), i + 1
    if symbol == '[MAX':
        return max(args), i + 1
    if symbol == '[SM':
        return sum(args) % 10, i + 1
    # int() of the median: the mean of the two middle values, truncated.
    return int(statistics.median(args)), i + 1


# A reference sampler: LRA's recursion, written out with Python's random ###


def sample_tree(rng, depth, out, operator_prob=0.25, max_args=10,
                max_depth=10):
    if depth < max_depth and rng.random() < operator_prob:
        out.append(rng.choice(OPS))
        for _ in range(rng.randint(2, max_args)):  # inclusive
            sample_tree(rng, depth + 1, out, operator_prob, max_args,
                        max_depth)
        out.append(']')
    else:
        out.append(str(rng.randrange(10)))


def reference_sample(num, seed, lengths=(500, 2000), distinct=False,
                     **kwargs):
    rng, accepted = random.Random(seed), []
    while len(accepted) < num:
        out = []
        sample_tree(rng, 1, out, **kwargs)
        if lengths[0] < len(out) < lengths[1]:
            accepted.append(' '.join(out))
            if distinct:  # Nangia and Bowman keep a set
                accepted = list(dict.fromkeys(accepted))
    return accepted


def summary(expressions, max_depth=11):
    """Argument counts of all operators, (digits, operators) per depth,
    values and lengths."""
    num_args, kinds = [], np.zeros((max_depth + 1, 2), dtype=np.int64)
    labels, lengths = [], []
    for text in expressions:
        symbols = text.split()
        lengths.append(len(symbols))
        labels.append(value_of(text))
        open_args = []
        for symbol in symbols:
            if symbol == ']':
                num_args.append(open_args.pop())
                continue
            if open_args:
                open_args[-1] += 1
            depth = len(open_args) + 1
            kinds[depth, int(symbol in OPS)] += 1
            if symbol in OPS:
                open_args.append(0)
    return (np.bincount(num_args, minlength=12), kinds,
            np.bincount(labels, minlength=10), np.array(lengths))


def same_distribution(ours, reference):
    """Loose checks (p > 1e-3, or a few standard errors), reliable for
    samples of a few hundred expressions; returns the failures."""
    args_a, kinds_a, labels_a, lengths_a = summary(ours)
    args_b, kinds_b, labels_b, lengths_b = summary(reference)
    failures = []
    # Operators take 2 .. 10 arguments, both bounds reached.
    for name, counts in (('ours', args_a), ('reference', args_b)):
        if counts[:2].any() or counts[11:].any() or not counts[2] or \
                not counts[10]:
            failures.append(f'{name} argument counts {counts.tolist()}')
    if chi2_contingency(np.stack([args_a[2:11], args_b[2:11]]))[1] < 1e-3:
        failures.append('argument counts differ')
    # Operators at depths 1 .. 9 only, digits down to depth 10.
    for name, kinds in (('ours', kinds_a), ('reference', kinds_b)):
        if kinds[10:, 1].any() or not kinds[9, 1] or not kinds[10, 0]:
            failures.append(f'{name} depths {kinds.tolist()}')
    # Below the root, a node is a digit with probability 0.75 (about 0.745
    # after the length filter; tens of thousands of nodes).
    frac_a = kinds_a[2:10, 0].sum() / kinds_a[2:10].sum()
    frac_b = kinds_b[2:10, 0].sum() / kinds_b[2:10].sum()
    if abs(frac_a - frac_b) > 0.015:
        failures.append(f'digit fractions {frac_a:.4f} vs {frac_b:.4f}')
    if chi2_contingency(np.stack([labels_a, labels_b]))[1] < 1e-3:
        failures.append(f'labels {labels_a.tolist()} vs {labels_b.tolist()}')
    if ks_2samp(lengths_a, lengths_b).pvalue < 1e-3:
        failures.append('length distributions differ')
    # Lengths: about 1,040 tokens on average, standard deviation ~380.
    error = 4 * 380 * np.sqrt(1 / len(ours) + 1 / len(reference))
    if abs(lengths_a.mean() - lengths_b.mean()) > error:
        failures.append(f'mean lengths {lengths_a.mean():.0f} vs '
                        f'{lengths_b.mean():.0f}')
    for q in (0.25, 0.5, 0.75):
        qa, qb = np.quantile(lengths_a, q), np.quantile(lengths_b, q)
        if abs(qa - qb) > 1.5 * error:
            failures.append(f'{q} quantiles of lengths {qa} vs {qb}')
    return failures


# Tests ######################################################################


def test_tokens():
    assert ListOps.TOKENS == SYMBOLS
    assert len(ListOps.TOKENS) == 15
    assert ListOps.OPERATOR_IDS == (10, 11, 12, 13)
    assert ListOps.CLOSING_ID == 14
    assert listops_module.MAX_DEPTH == 10 and listops_module.MAX_ARGS == 10


def test_examples_well_formed_and_labelled(splits):
    for split, dataset in splits.items():
        assert len(dataset) == SIZES[split]
        assert dataset.num_classes == 10
        for data, text in zip(dataset, texts(dataset)):
            x = data.x
            assert x.dtype == torch.long and x.dim() == 1
            assert 500 < x.numel() < 2000
            assert int(x.min()) >= 0 and int(x.max()) < 15
            assert int(x[0]) in ListOps.OPERATOR_IDS
            assert int(x[-1]) == ListOps.CLOSING_ID
            assert data.y.shape == (1, ) and data.y.dtype == torch.long
            assert int(data.y) == value_of(text)
            assert ListOps.evaluate(data.x) == int(data.y)
            assert ListOps.to_text(data.x) == text


def test_distinct_and_disjoint_splits(splits):
    everything = [t for dataset in splits.values() for t in texts(dataset)]
    assert len(set(everything)) == len(everything) == sum(SIZES.values())


def test_same_seed_same_data_other_seed_other_data(tmp_path, splits):
    np.random.seed(3)
    torch.manual_seed(3)
    state = (torch.get_rng_state(), np.random.get_state()[1].copy(),
             random.getstate())
    for split, dataset in splits.items():
        again = build(tmp_path / 'again', split)
        assert torch.equal(again._data.x, dataset._data.x)
        assert torch.equal(again._data.y, dataset._data.y)
        assert torch.equal(again.slices['x'], dataset.slices['x'])
    # No global random state is read or changed.
    assert torch.equal(torch.get_rng_state(), state[0])
    assert np.array_equal(np.random.get_state()[1], state[1])
    assert random.getstate() == state[2]
    other = build(tmp_path / 'other', 'test', seed=1)
    assert set(texts(other)).isdisjoint(texts(splits['test']))


def test_splits_do_not_depend_on_the_train_size(tmp_path, splits):
    small = {'train': 40, 'val': 30, 'test': 30}
    for split in ('val', 'test'):
        assert texts(build(tmp_path, split, num_examples=small)) == \
            texts(splits[split])
    # A smaller training split is a prefix of a larger one.
    assert texts(build(tmp_path, num_examples=small)) == \
        texts(splits['train'])[:40]
    assert sorted(os.listdir(tmp_path / 'processed')) == ['n40-30-30_s0']


def test_distribution_matches_reference_sampler(splits):
    ours = texts(splits['train'])
    reference = reference_sample(300, seed=0)
    assert same_distribution(ours, reference) == []


@pytest.mark.parametrize('kwargs', [
    dict(max_args=9),  # an exclusive upper bound
    dict(operator_prob=0.3),  # a wrong digit probability
    dict(max_depth=11),  # operators one level deeper
])
def test_distribution_check_catches_wrong_samplers(splits, kwargs):
    wrong = reference_sample(300, seed=1, **kwargs)
    assert same_distribution(texts(splits['train']), wrong) != []


def test_evaluate_and_text_helpers():
    cases = {
        '7': 7,
        '[MAX 2 9 ]': 9,
        '[MIN 4 [MAX 1 5 ] 6 ]': 4,
        '[SM 9 9 5 ]': 3,
        '[MED 3 6 ]': 4,  # int(4.5)
        '[MED 1 2 3 4 ]': 2,  # int(2.5)
        '[MED 9 0 4 ]': 4,
        '[MED 7 8 ]': 7,
        '[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]': 5,
    }
    for text, value in cases.items():
        ids = ListOps.from_text(text)
        assert ids.dtype == torch.long
        assert ListOps.to_text(ids) == text
        assert value_of(text) == value
        for tokens in (text, ids, ids.numpy(), ids.tolist()):
            assert ListOps.evaluate(tokens) == value
    for text, match in [(']', 'token 0'), ('[MAX 1 2 ] ]', 'token 4'),
                        ('[MAX 1 [MIN 2', 'token 0'), ('[SM ]', 'token 0'),
                        ('1 2', 'values'), ('', 'empty')]:
        with pytest.raises(ValueError, match=match):
            ListOps.evaluate(text)
    with pytest.raises(ValueError, match="'\\(' at token 1"):
        ListOps.from_text('[MAX ( 1 ]')
    with pytest.raises(ValueError, match='id 15 at token 1'):
        ListOps.to_text([0, 15])
    with pytest.raises(TypeError, match="'tokens'"):
        ListOps.evaluate(torch.tensor([1.0]))
    with pytest.raises(TypeError, match="'text'"):
        ListOps.from_text(3)


def test_collated_storage(splits, tmp_path):
    train = splits['train']
    # Tokens are stored compactly and handed out as long.
    assert train._data.x.dtype == torch.uint8
    assert train[0].x.dtype == torch.long
    assert train[0].x.dtype == torch.long  # also when cached
    assert train._data.x.dtype == torch.uint8
    # The storage is what InMemoryDataset.collate builds.
    examples = [Data(x=d.x.to(torch.uint8), y=d.y) for d in train]
    data, slices = InMemoryDataset.collate(examples)
    assert torch.equal(data.x, train._data.x)
    assert torch.equal(data.y, train._data.y)
    assert slices.keys() == train.slices.keys()
    for key in slices:
        assert torch.equal(slices[key], train.slices[key])
    # Each split's file holds its own tokens only.
    sizes = {split: os.path.getsize(d.processed_paths[0])
             for split, d in splits.items()}
    assert sizes['val'] < sizes['train'] / 5


def test_pre_transform_and_pre_filter(tmp_path, splits):
    from pyg_hsa.transforms import BracketsToHierarchy

    transform = BracketsToHierarchy(ListOps.OPERATOR_IDS, ListOps.CLOSING_ID,
                                    pe_channels=4)
    hetero = build(tmp_path, 'val', pre_transform=transform)
    for example, data in zip(hetero, splits['val']):
        assert isinstance(example, HeteroData)
        expected = transform(data)
        assert torch.equal(example['token'].x, data.x)
        assert torch.equal(example.y, data.y)
        assert torch.equal(example['token', 'in', 'expr'].edge_index,
                           expected['token', 'in', 'expr'].edge_index)
        assert torch.equal(example['expr'].pe, expected['expr'].pe)
    odd = build(tmp_path / 'filtered', 'test',
                pre_filter=lambda d: int(d.y) % 2 == 1)
    assert [int(d.y) for d in odd] == \
        [int(d.y) for d in splits['test'] if int(d.y) % 2 == 1]


def test_second_construction_reuses_the_files(tmp_path, monkeypatch):
    first = build(tmp_path, 'test', num_examples=3)
    config = tmp_path / 'processed' / 'n3-3-3_s0'
    assert sorted(os.listdir(config)) == ['expressions.pt', 'test']
    assert sorted(os.listdir(config / 'test')) == [
        'data.pt', 'pre_filter.pt', 'pre_transform.pt'
    ]
    stamps = {p: os.stat(config / p).st_mtime_ns
              for p in ('expressions.pt', 'test/data.pt')}

    def fail(*args, **kwargs):
        raise AssertionError('regenerated')

    monkeypatch.setattr(listops_module, 'generate', fail)
    again = build(tmp_path, 'test', num_examples=3)
    assert torch.equal(again._data.x, first._data.x)
    # Another split is cut from the cached expressions, not regenerated.
    val = build(tmp_path, 'val', num_examples=3)
    assert len(val) == 3
    assert {p: os.stat(config / p).st_mtime_ns for p in stamps} == stamps


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(100)  # written partly, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(io.torch, 'save', half_save)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, 'test', num_examples=3)
    config = tmp_path / 'processed' / 'n3-3-3_s0'
    assert sorted(os.listdir(config)) == ['test']  # the folder PyG made
    assert os.listdir(config / 'test') == []
    monkeypatch.undo()
    assert len(build(tmp_path, 'test', num_examples=3)) == 3


def test_failed_pre_transform_keeps_only_complete_files(tmp_path):
    def fail(data):
        raise RuntimeError('boom')

    with pytest.raises(RuntimeError, match='boom'):
        build(tmp_path, 'val', num_examples=3, pre_transform=fail)
    config = tmp_path / 'processed' / 'n3-3-3_s0'
    # The cached expressions are whole; the split was never written.
    assert sorted(os.listdir(config)) == ['expressions.pt', 'val']
    assert os.listdir(config / 'val') == []
    assert len(build(tmp_path, 'val', num_examples=3)) == 3


@pytest.mark.parametrize('name', ['data', 'expressions'])
def test_corrupted_files_name_the_folder(tmp_path, name):
    dataset = build(tmp_path, 'test', num_examples=2)
    path = dataset.processed_paths[0] if name == 'data' else \
        dataset.expressions_path
    with open(path, 'wb') as f:
        f.write(b'not a torch file')
    split = 'test' if name == 'data' else 'val'
    with pytest.raises(RuntimeError) as info:
        build(tmp_path, split, num_examples=2)
    message = str(info.value)
    assert 'corrupted' in message and 'delete the folder' in message
    assert dataset.config_dir in message


def test_default_sizes(tmp_path, monkeypatch):
    # Only the sizes are checked here: a stand-in generator (every
    # expression [MAX 1 2 ]) avoids generating 100,000 expressions.
    def fake(num, seed, distribution):
        tokens = np.tile(np.array([11, 1, 2, 14], dtype=np.uint8), num)
        return (tokens, np.arange(num + 1, dtype=np.int64) * 4,
                np.full(num, 2, dtype=np.int64))

    monkeypatch.setattr(listops_module, 'generate', fake)
    sizes = {split: len(ListOps(str(tmp_path), split))
             for split in ('train', 'val', 'test')}
    assert sizes == {'train': 96000, 'val': 2000, 'test': 2000}
    assert os.listdir(tmp_path / 'processed') == ['n96000-2000-2000_s0']
    dataset = ListOps(str(tmp_path), num_examples=5)
    assert len(dataset) == 5 and ListOps.to_text(dataset[4].x) == \
        '[MAX 1 2 ]'


def test_generate_is_a_prefix_stream():
    tokens, offsets, labels = listops_module.generate(7, seed=5)
    more = listops_module.generate(9, seed=5)
    assert offsets.dtype == np.int64 and tokens.dtype == np.uint8
    assert np.array_equal(more[1][:8], offsets)
    assert np.array_equal(more[0][:offsets[-1]], tokens)
    assert np.array_equal(more[2][:7], labels)
    empty = listops_module.generate(0)
    assert empty[0].size == 0 and empty[1].tolist() == [0]


@pytest.mark.parametrize('kwargs, error, name', [
    (dict(split='dev'), ValueError, 'split'),
    (dict(num_examples=0), ValueError, 'num_examples'),
    (dict(num_examples=2.5), TypeError, 'num_examples'),
    (dict(num_examples=True), TypeError, 'num_examples'),
    (dict(num_examples={'train': 2}), ValueError, 'num_examples'),
    (dict(num_examples={'train': 2, 'val': 2, 'test': 0}), ValueError,
     "num_examples\\['test'\\]"),
    (dict(split=1), TypeError, 'split'),
    (dict(seed=-1), ValueError, 'seed'),
    (dict(seed=1.0), TypeError, 'seed'),
    (dict(transform='x'), TypeError, 'transform'),
    (dict(pre_transform=3), TypeError, 'pre_transform'),
    (dict(pre_filter=3), TypeError, 'pre_filter'),
    (dict(force_reload='yes'), TypeError, 'force_reload'),
])
def test_bad_arguments(tmp_path, kwargs, error, name):
    with pytest.raises(error, match=f"'{name}'"):
        build(tmp_path, **kwargs)
    assert not (tmp_path / 'processed').exists()


def test_bad_root(tmp_path):
    with pytest.raises(ValueError, match="'root'"):
        ListOps('')
    with pytest.raises(TypeError, match="'root'"):
        ListOps(3)
    # A path object is fine.
    assert len(ListOps(tmp_path, 'test', num_examples=1)) == 1


def test_repr(splits):
    assert repr(splits['train']) == "ListOps(300, split='train', seed=0)"
    assert repr(splits['val']) == "ListOps(30, split='val', seed=0)"


# The original ListOps (Nangia and Bowman) ###################################

NB_SIZES = {'train': 300, 'val': 30, 'test': 30, 'test_200_300': 12,
            'test_500_600': 6, 'test_900_1000': 3}
NB_LENGTHS = {'train': (1, 101), 'val': (1, 101), 'test': (1, 101),
              'test_200_300': (200, 300), 'test_500_600': (500, 600),
              'test_900_1000': (900, 1000)}


def build_nb(root, split='train', **kwargs):
    kwargs.setdefault('num_examples', NB_SIZES)
    return ListOps(str(root), split=split, distribution='nangia-bowman',
                   **kwargs)


@pytest.fixture(scope='module')
def nb_splits(root):
    return {split: build_nb(root, split) for split in NB_SIZES}


def nb_failures(ours, reference):
    """What tells Nangia and Bowman's distribution from others at a few
    hundred expressions of at most 100 tokens."""
    args_a, kinds_a, labels_a, lengths_a = summary(ours, 21)
    args_b, kinds_b, labels_b, lengths_b = summary(reference, 21)
    failures = []
    for name, counts in (('ours', args_a), ('reference', args_b)):
        if counts[:2].any() or counts[6:].any() or not counts[5]:
            failures.append(f'{name} argument counts {counts.tolist()}')
    if chi2_contingency(np.stack([args_a[2:6], args_b[2:6]]))[1] < 1e-3:
        failures.append(f'argument counts {args_a[2:6]} vs {args_b[2:6]}')
    frac_a = kinds_a[2:, 0].sum() / kinds_a[2:].sum()
    frac_b = kinds_b[2:, 0].sum() / kinds_b[2:].sum()
    if abs(frac_a - frac_b) > 0.03:
        failures.append(f'digit fractions {frac_a:.4f} vs {frac_b:.4f}')
    if chi2_contingency(np.stack([labels_a, labels_b]))[1] < 1e-3:
        failures.append(f'labels {labels_a.tolist()} vs {labels_b.tolist()}')
    if ks_2samp(lengths_a, lengths_b).pvalue < 1e-3:
        failures.append('length distributions differ')
    return failures


def test_nangia_bowman_well_formed_and_labelled(nb_splits):
    for split, dataset in nb_splits.items():
        assert len(dataset) == NB_SIZES[split]
        lo, hi = NB_LENGTHS[split]
        args, kinds, _, lengths = summary(texts(dataset), 21)
        assert lengths.min() > lo and lengths.max() < hi
        # 2-5 arguments; operators at depths 1 .. 19 at most (the root is
        # always one), digits at depth 20 at most.
        assert not args[:2].any() and not args[6:].any()
        assert kinds[1, 1] == len(dataset) and not kinds[20:, 1].any()
        for data, text in zip(dataset, texts(dataset)):
            assert int(data.y) == value_of(text) == ListOps.evaluate(data.x)
            assert int(data.x[0]) in ListOps.OPERATOR_IDS
            assert int(data.x[-1]) == ListOps.CLOSING_ID


def test_nangia_bowman_depth_reaches_its_bound():
    # Long expressions nest deeply: the deepest operator at depth 19 (a
    # node at depth 20 is a digit), never deeper.
    tokens, offsets, _ = listops_module.generate(
        60, seed=0, distribution=listops_module.Distribution(5, 20, 900,
                                                             1000))
    nesting = np.cumsum(np.where(tokens == 14, -1, (tokens >= 10) & (
        tokens < 14)).astype(np.int64))
    assert nesting.max() <= 19
    assert nesting.max() >= 12
    assert np.all(np.diff(offsets) > 900) and np.all(np.diff(offsets) < 1000)


def test_nangia_bowman_matches_reference_sampler(nb_splits):
    reference = reference_sample(300, 0, lengths=(1, 101), distinct=True,
                                 max_args=5, max_depth=20)
    assert nb_failures(texts(nb_splits['train']), reference) == []


@pytest.mark.parametrize('kwargs', [
    dict(max_args=6),  # an argument too many
    dict(operator_prob=0.35),  # too many operators
])
def test_nangia_bowman_check_catches_wrong_samplers(nb_splits, kwargs):
    kwargs = {'max_args': 5, 'max_depth': 20, **kwargs}
    wrong = reference_sample(300, 1, lengths=(1, 101), distinct=True,
                             **kwargs)
    assert nb_failures(texts(nb_splits['train']), wrong) != []


def test_nangia_bowman_splits_disjoint_and_alike(tmp_path, nb_splits):
    everything = [t for dataset in nb_splits.values() for t in texts(dataset)]
    assert len(set(everything)) == len(everything) == sum(NB_SIZES.values())
    # Short expressions run out (400 of the form [OP d d ]); shuffled, the
    # test split holds as many of them as the training split.
    sizes = {'train': 4000, 'val': 100, 'test': 1000}
    short = {split: np.mean([len(t.split()) == 4 for t in texts(
        build_nb(tmp_path, split, num_examples=sizes))])
        for split in ('train', 'test')}
    assert 0.03 < short['train'] < 0.12
    assert abs(short['train'] - short['test']) < 0.03


def test_nangia_bowman_deterministic(tmp_path, nb_splits):
    for split in ('test', 'test_200_300'):
        again = build_nb(tmp_path / 'again', split)
        assert texts(again) == texts(nb_splits[split])
        other = build_nb(tmp_path / 'other', split, seed=1)
        assert set(texts(other)).isdisjoint(texts(nb_splits[split]))
    assert sorted(os.listdir(tmp_path / 'again' / 'processed')) == [
        'nangia-bowman_200-300_n12_s0', 'nangia-bowman_n300-30-30_s0']


def test_lra_and_nangia_bowman_live_side_by_side(tmp_path):
    lra = build(tmp_path, 'test', num_examples=3)
    nb = build_nb(tmp_path, 'test', num_examples=3)
    assert all(len(t.split()) > 500 for t in texts(lra))
    assert all(len(t.split()) < 101 for t in texts(nb))
    assert sorted(os.listdir(tmp_path / 'processed')) == [
        'n3-3-3_s0', 'nangia-bowman_n3-3-3_s0']
    assert repr(nb) == "ListOps(3, split='test', distribution=" \
        "'nangia-bowman', seed=0)"
    # The default sizes of the windows are 2,000; given, only theirs.
    assert build_nb(tmp_path, 'test_200_300',
                    num_examples={'train': 3, 'val': 3, 'test': 3,
                                  'test_200_300': 2}).num_examples == {
        'train': 3, 'val': 3, 'test': 3, 'test_200_300': 2,
        'test_500_600': 2000, 'test_900_1000': 2000}


def test_pre_transform_change_reprocesses_the_split(tmp_path, monkeypatch):
    from pyg_hsa.transforms import BracketsToHierarchy

    def brackets(width):
        return BracketsToHierarchy(ListOps.OPERATOR_IDS, ListOps.CLOSING_ID,
                                   pe_channels=width)

    plain = build_nb(tmp_path, 'val', num_examples=4)
    four = build_nb(tmp_path, 'val', num_examples=4,
                    pre_transform=brackets(4))

    def fail(*args, **kwargs):
        raise AssertionError('regenerated')

    # Every change is noticed and processed again from the cached
    # expressions (PyG itself would only warn and load the old file).
    monkeypatch.setattr(listops_module, 'generate', fail)
    eight = build_nb(tmp_path, 'val', num_examples=4,
                     pre_transform=brackets(8))
    assert four[0]['expr'].pe.size(1) == 4
    assert eight[0]['expr'].pe.size(1) == 8
    odd = build_nb(tmp_path, 'val', num_examples=4,
                   pre_filter=lambda d: int(d.y) % 2 == 1)
    assert [int(d.y) for d in odd] == \
        [int(d.y) for d in plain if int(d.y) % 2 == 1]
    again = build_nb(tmp_path, 'val', num_examples=4)
    assert isinstance(again[0], Data) and again._data.x.dtype == torch.uint8
    assert texts(again) == texts(plain)
    # An unchanged pre_transform reuses the file.
    build_nb(tmp_path, 'val', num_examples=4, pre_transform=brackets(8))
    path = eight.processed_paths[0]
    stamp = os.stat(path).st_mtime_ns
    same = build_nb(tmp_path, 'val', num_examples=4,
                    pre_transform=brackets(8))
    assert os.stat(path).st_mtime_ns == stamp
    assert same[0]['expr'].pe.size(1) == 8


def test_tsv_round_trip_and_lra_parentheses(tmp_path, nb_splits):
    dataset = nb_splits['test']
    path = tmp_path / 'test.tsv'
    dataset.to_tsv(str(path))
    lines = path.read_text().splitlines()
    assert lines[0] == 'Source\tTarget' and len(lines) == len(dataset) + 1
    assert lines[1] == f'{texts(dataset)[0]}\t{int(dataset[0].y)}'
    expressions, labels = ListOps.read_tsv(str(path))
    assert len(expressions) == len(dataset)
    for x, data in zip(expressions, dataset):
        assert torch.equal(x, data.x)
    assert torch.equal(labels, dataset._data.y)
    # LRA's files carry a binary bracketing with ( ), which is ignored.
    lra = tmp_path / 'lra.tsv'
    lra.write_text('Source\tTarget\n( ( ( [MAX 2 ) 9 ) ] )\t9\n\n'
                   '( ( [SM 7 ) 8 ] )\t5\n')
    expressions, labels = ListOps.read_tsv(str(lra))
    assert [ListOps.to_text(x) for x in expressions] == ['[MAX 2 9 ]',
                                                         '[SM 7 8 ]']
    assert labels.tolist() == [9, 5]


@pytest.mark.parametrize('text, match', [
    ('', 'header'),
    ('Input\tLabel\n[MAX 1 ]\t1\n', 'header'),
    ('Source\tTarget\n', 'no expression'),
    ('Source\tTarget\n[MAX 1 2 ]\n', 'line 2: expected two'),
    ('Source\tTarget\n[MAX 1 2 ]\t2\n[MAX 1 X ]\t1\n',
     "line 3: unknown symbol 'X'"),
    ('Source\tTarget\n[MAX 1 2 ]\t12\n', 'line 2: the target'),
    ('Source\tTarget\n( )\t1\n', 'line 2: empty'),
])
def test_bad_tsv_files_name_the_line(tmp_path, text, match):
    path = tmp_path / 'bad.tsv'
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        ListOps.read_tsv(str(path))


def test_to_tsv_refuses_a_filtered_split(tmp_path):
    dataset = build_nb(tmp_path, 'val', num_examples=3,
                       pre_filter=lambda d: True)
    with pytest.raises(ValueError, match='pre_filter'):
        dataset.to_tsv(str(tmp_path / 'out.tsv'))
    assert not (tmp_path / 'out.tsv').exists()


@pytest.mark.parametrize('distribution, error, match', [
    ((1, 20, 1, 101), ValueError, 'max_args >= 2'),
    ((5, 2, 100, 200), ValueError, 'admits no expression'),
    ((5, 20, 100, 101), ValueError, 'admits no expression'),
    ((5, 20, 1), TypeError, 'Distribution'),
    ('lra', TypeError, 'Distribution'),
    ((5, 20.0, 1, 101), TypeError, 'distribution.max_depth'),
])
def test_bad_distributions(distribution, error, match):
    with pytest.raises(error, match=match):
        listops_module.generate(1, distribution=distribution)


@pytest.mark.slow  # (seconds: draws chunks until it gives up)
def test_too_few_distinct_expressions_raise(monkeypatch):
    # Depth 2 and two arguments: only [OP d d ], 400 distinct expressions.
    monkeypatch.setattr(listops_generator, 'MAX_BARREN_CHUNKS', 4)
    small = listops_module.Distribution(2, 2, 1, 5)
    tokens, offsets, _ = listops_module.generate(400, distribution=small)
    assert len(set(map(bytes, np.split(tokens, offsets[1:-1])))) == 400
    with pytest.raises(RuntimeError, match='too few distinct'):
        listops_module.generate(401, distribution=small)


@pytest.mark.parametrize('kwargs, error, name', [
    (dict(distribution='listops-o'), ValueError, 'distribution'),
    (dict(distribution=None), TypeError, 'distribution'),
    (dict(split='test_200_300'), ValueError, 'split'),
    (dict(num_examples={'train': 2, 'val': 2, 'test': 2,
                        'test_100_200': 2}), ValueError, 'num_examples'),
])
def test_bad_distribution_arguments(tmp_path, kwargs, error, name):
    with pytest.raises(error, match=f"'{name}'"):
        build(tmp_path, **kwargs)
    assert not (tmp_path / 'processed').exists()
