"""The ListOps example: every model trains on its hierarchy, resume
continues exactly, smoke runs leave the checkout untouched, and the
models see what they claim to see."""
import json
import sys
from pathlib import Path

import pytest
import torch
from torch_geometric.loader import DataLoader

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'examples'))

import listops  # noqa: E402

from checkout import (  # noqa: E402
    git_status,
    require_git_checkout,
    run_script,
)
from listops_models import ListOpsBatch, Schedule  # noqa: E402
from torch_geometric.data import Data  # noqa: E402

from pyg_hsa.datasets import ListOps  # noqa: E402

SMALL = ['--smoke', '--epochs', '2', '--emb_dim', '8', '--heads', '2']


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp('listops'))


@pytest.mark.slow
@pytest.mark.parametrize('model', listops.MODELS)
def test_every_model_trains(root, tmp_path, model):
    filename = tmp_path / 'out.json'
    result = listops.main(['--model', model, '--root', root, *SMALL,
                           '--filename', str(filename)])
    assert json.loads(filename.read_text())['tests'] == result['tests']
    assert len(result['curves']['loss']) == 2
    assert set(result['tests']) == {'test', 'test_200_300', 'test_500_600',
                                    'test_900_1000', 'lra_test'}
    assert all(0.0 <= acc <= 1.0 for acc in result['tests'].values())
    assert result['test'] == result['tests']['test']
    assert result['given_parse_tree'] == (model in ('hsa-tree', 'gin',
                                                    'tree-gru'))
    assert result['num_train'] == 16
    assert result['num_tests'] == {'test': 8, 'test_200_300': 4,
                                   'test_500_600': 3, 'test_900_1000': 2,
                                   'lra_test': 4}
    # Accuracy by length: every test expression counted once.
    counts = [n for bins in result['accuracy_by_length'].values()
              for _, n in bins.values()]
    assert sum(counts) == 21
    assert result['peak_memory_mb'] > 0


@pytest.mark.slow
def test_minutes_is_a_training_time_budget(root, tmp_path):
    result = listops.main(['--root', root, *SMALL, '--minutes', '0.01',
                           '--model', 'tree-gru'])
    # Two slices of 0.3 s each; passes over the 16 expressions continue.
    assert len(result['curves']['seconds']) == 2
    assert all(0.3 <= s < 3 for s in result['curves']['seconds'])
    assert result['train_seconds'] == pytest.approx(
        sum(result['curves']['seconds']), abs=0.05)
    assert result['train_examples_seen'] > 16


@pytest.mark.slow
def test_resume_continues_at_the_next_epoch(root, tmp_path):
    def run(epochs, checkpoint, *extra):
        return listops.main(['--root', root, *SMALL, '--epochs', str(epochs),
                             '--dropout', '0.1', '--checkpoint',
                             str(tmp_path / checkpoint), *extra])
    straight = run(3, 'a.ckpt')
    run(1, 'b.ckpt')
    resumed = run(3, 'b.ckpt', '--resume')
    for key in ('loss', 'valid'):
        assert resumed['curves'][key] == straight['curves'][key]
    with pytest.raises(ValueError, match='--emb_dim'):
        run(4, 'b.ckpt', '--resume', '--emb_dim', '4')


@pytest.mark.slow
@pytest.mark.parametrize('script', ['examples/listops.py',
                                    'benchmarks/listops_results.py'])
def test_smoke_run_writes_nothing_into_the_checkout(tmp_path, script):
    require_git_checkout()
    before = git_status('--ignored', skip=('cache',))
    done = run_script([script, '--smoke'], tmp_path)
    assert done.returncode == 0, done.stderr
    assert 'accuracy' in done.stdout
    assert git_status('--ignored', skip=('cache',)) == before


def test_arguments():
    args = listops.parse_args(['--smoke', '--heads', '4'])
    assert (args.heads, args.emb_dim, args.epochs) == (4, 16, 1)
    args = listops.parse_args([])
    assert (args.heads, args.emb_dim, args.train_examples) == (4, 64, 0)
    assert args.distribution == 'nangia-bowman' and args.minutes == 0
    for argv in (['--resume'], ['--epochs', '0'], ['--model', 'lstm'],
                 ['--emb_dim', '10', '--heads', '4'], ['--dropout', '1'],
                 ['--train_examples', '-1'], ['--iterations', '-1'],
                 ['--per_level', '0'], ['--minutes', '-1'],
                 ['--minutes', 'inf'], ['--data', 'x.tsv'],
                 ['--evaluate', 'x.ckpt'], ['--export', 'test'],
                 ['--evaluate', 'x', '--export', 'test', '--data', 'y'],
                 ['--export', 'test_200_300', '--distribution', 'lra',
                  '--data', 'y']):
        with pytest.raises(SystemExit):
            listops.parse_args(argv)


@pytest.mark.parametrize('argv, message', [
    (['--train_examples', '90001'],
     '--train_examples 90001 is more than the 90,000 expressions of the '
     'training split'),
    (['--smoke', '--train_examples', '17'],
     '--train_examples 17 is more than the 16 expressions of the training'),
    (['--distribution', 'lra', '--eval_examples', '2001'],
     '--eval_examples 2001 is more than the 2,000 expressions of the '
     'validation split'),
    (['--test_examples', '2001'],
     '--test_examples 2001 is more than the 2,000 expressions of the '
     'smallest test split'),
])
def test_example_counts_beyond_the_split_are_errors(capsys, argv, message):
    with pytest.raises(SystemExit):
        listops.parse_args(argv)
    assert message in capsys.readouterr().err


def test_help_says_0_means_all_only_for_example_counts(capsys):
    with pytest.raises(SystemExit):
        listops.parse_args(['--help'])
    text = ' '.join(capsys.readouterr().out.split())
    for name in ('train_examples', 'eval_examples', 'test_examples'):
        assert f'--{name} {name.upper()} the first N examples (0 means ' \
            f'all)' in text
    assert text.count('0 means all') == 3
    assert '--epochs EPOCHS (default: 4; --smoke: 1)' in text


@pytest.mark.slow  # (seconds: builds every split)
def test_hierarchies_and_model_inputs(root):
    """The parse tree nests by brackets, the windows by position, the flat
    tree is one family per expression; the parse tree's features and the
    schedule are what the tree says."""
    data = ListOps(root, 'val', num_examples=listops.SMOKE_SPLITS['lra'],
                   distribution='lra')[:3]
    tokens = [d.x for d in data]
    batches = {}
    for model in ('hsa-tree', 'hsa-windows', 'transformer'):
        transform = listops.hierarchy(model)
        batch = next(iter(DataLoader([transform(d) for d in data],
                                     batch_size=3)))
        inputs = ListOpsBatch(batch)
        tree = inputs.tree
        assert tree.num_roots == 3
        assert tree.num_leaves == sum(t.numel() for t in tokens)
        assert inputs.pe.shape == (tree.num_nodes, listops.PE_CHANNELS)
        assert inputs.first.tolist() == [0, tokens[0].numel(),
                                         tokens[0].numel() +
                                         tokens[1].numel()]
        batches[model] = inputs
    assert batches['transformer'].tree.depth == 1
    # Parse tree: one internal node per operator; depth = nesting + 1.
    parse = batches['hsa-tree']
    operators = sum(int((t < 14).sum() - (t < 10).sum()) for t in tokens)
    assert parse.tree.num_nodes - parse.tree.num_leaves == operators
    nesting = [int(torch.cumsum(torch.where(
        t == ListOps.CLOSING_ID, -1, (t >= 10).long()), 0).max())
        for t in tokens]
    assert parse.tree.depth == max(nesting)
    # Every node knows its example's nesting, the same in every model.
    example = [i for i, t in enumerate(tokens) for _ in range(t.numel())]
    for model, inputs in batches.items():
        levels = inputs.levels[:inputs.tree.num_leaves].tolist()
        assert levels == [nesting[i] for i in example], model
    # Sizes, depths and heights against a brute force over the parents.
    parent = parse.tree.parent.tolist()
    for node in range(parse.tree.num_nodes):
        path, up = [], node
        while up >= 0:
            path.append(up)
            up = parent[up]
        assert int(parse.depth[node]) == len(path) - 1
        below = [leaf for leaf in range(parse.tree.num_leaves)
                 if node in _path(parent, leaf)]
        assert int(parse.size[node]) == len(below)
        assert int(parse.height[node]) == max(
            _path(parent, leaf).index(node) for leaf in below)


def _path(parent, node):
    path = [node]
    while parent[path[-1]] >= 0:
        path.append(parent[path[-1]])
    return path


def test_schedule_evaluates_bottom_up():
    """Stage s: the operators of height-s expressions compute, then every
    token below them takes their value; a brute-force evaluation that
    follows the roles gets every expression right."""
    texts = ['[MAX 4 [MIN 2 3 ] 1 ]', '[SM 1 2 ]',
             '[MED [SM 5 [MIN 7 8 ] ] 3 [MAX 1 [MIN 9 6 ] 2 ] 4 ]']
    transform = listops.hierarchy('hsa-tree')
    examples = [transform(Data(x=ListOps.from_text(t),
                               y=torch.tensor([ListOps.evaluate(t)])))
                for t in texts]
    inputs = ListOpsBatch(next(iter(DataLoader(examples, batch_size=3))))
    schedule = Schedule(inputs)
    assert schedule.num_stages == 3
    roles = schedule.roles(1, broadcast=False)
    symbols = [ListOps.TOKENS[i] for i in inputs.tokens.tolist()]
    assert [s for s, r in zip(symbols, roles) if r == 1] == [
        '[MIN', '[SM', '[MIN', '[MIN']
    # Follow the roles: a token's value is a digit, or what its operator
    # computed from the values of its family's blocks (all leaves of a
    # block agree once broadcast).
    tree, tokens = inputs.tree, inputs.tokens.tolist()
    value = [t if t < 10 else None for t in tokens]
    parent = tree.parent.tolist()
    for stage in range(1, schedule.num_stages + 1):
        computing = schedule.roles(stage, broadcast=False).tolist()
        new = list(value)
        for i in [i for i, r in enumerate(computing) if r == 1]:
            family = [j for j in range(tree.num_nodes) if parent[j] ==
                      parent[i] and j != i]
            args = []
            for j in family:
                leaves = [leaf for leaf in range(tree.num_leaves)
                          if j in _path(parent, leaf)]
                block = {value[leaf] for leaf in leaves}
                assert len(block) == 1  # the block mean is exact
                if tokens[leaves[0]] != ListOps.CLOSING_ID:
                    args.append(block.pop())
            ids = [tokens[i]] + [a for a in args]
            new[i] = ListOps.evaluate(ids + [ListOps.CLOSING_ID])
        value = new
        roles = schedule.roles(stage, broadcast=True).tolist()
        for i in [i for i, r in enumerate(roles) if r in (2, 3)]:
            # The operator token of the expression being evaluated.
            source = [j for j, r in enumerate(roles) if r == 3 and
                      any(p == parent[j] for p in _path(parent, i))]
            assert len(source) == 1
            new[i] = value[source[0]]
        value = new
    assert [value[int(f)] for f in inputs.first] == \
        [ListOps.evaluate(t) for t in texts]


def test_models_are_batching_invariant(root):
    data = ListOps(root, 'val', distribution='nangia-bowman',
                   num_examples=listops.SMOKE_SPLITS['nangia-bowman'])[:3]
    torch.manual_seed(0)
    for model in listops.MODELS:
        args = listops.parse_args(['--smoke', '--model', model])
        net = listops.make_model(args).eval()
        transform = listops.hierarchy(model)
        examples = [transform(d) for d in data]
        out = net(ListOpsBatch(next(iter(DataLoader(examples,
                                                    batch_size=3)))))
        for i, example in enumerate(examples):
            alone = net(ListOpsBatch(next(iter(DataLoader([example],
                                                          batch_size=1)))))
            torch.testing.assert_close(out[i:i + 1], alone, rtol=1e-4,
                                       atol=1e-5)


def test_tree_gru_composes_families_in_order():
    """The batched, level-by-level Tree-GRU equals a recursion over the
    text that runs the same GRU cell over every family left to right."""
    torch.manual_seed(0)
    net = listops.make_model(listops.parse_args(
        ['--smoke', '--model', 'tree-gru'])).eval()
    texts = ['[MAX 4 [MIN 2 3 ] 1 ]', '[SM [MED 1 2 [MAX 3 4 5 ] ] 2 ]',
             '[MIN 7 [SM [MAX 1 [MED 2 3 ] ] 4 ] [MAX 5 6 ] ]']

    def compose(symbols, i):  # -> (state, next position)
        h = torch.zeros(1, net.channels)
        h = net.cell(net.embed(torch.tensor([ListOps.TOKENS.index(
            symbols[i])])), h)
        i += 1
        while True:
            symbol = symbols[i]
            if symbol.startswith('['):
                child, i = compose(symbols, i)
            else:
                child = net.embed(torch.tensor([ListOps.TOKENS.index(
                    symbol)]))
                i += 1
            h = net.cell(child, h)
            if symbol == ']':
                return h, i

    expected = torch.cat([net.head(compose(t.split(), 0)[0])
                          for t in texts])
    transform = listops.hierarchy('tree-gru')
    examples = [transform(Data(x=ListOps.from_text(t), y=torch.tensor([0])))
                for t in texts]
    out = net(ListOpsBatch(next(iter(DataLoader(examples, batch_size=3)))))
    torch.testing.assert_close(out, expected)


def test_size_key_weighs_blocks_alike():
    """With content-free queries and keys, HSA weighs a block by its size;
    the log-size key channel (gain 1) weighs every block alike."""
    from listops_models import SizedHSALayer
    from pyg_hsa import Tree
    # Root {leaf 0, leaf 1, node 7 = {leaves 2 .. 5}, leaf 6}.
    tree = Tree.from_parent(torch.tensor([8, 8, 7, 7, 7, 7, 8, 8, -1]))
    layer = SizedHSALayer(4, 1, pos_channels=1, resolution='query')
    with torch.no_grad():  # q = k = 0 (after LayerNorm), v = x
        layer.lin_qkv.weight.zero_()
        layer.lin_qkv.bias.zero_()
        layer.lin_qkv.weight[8:].copy_(torch.eye(4))
    x = torch.tensor([[1., 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0],
                      [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 0],
                      [0, 0, 0, 1]])
    # The leaves of node 7 carry it (4 leaves), the others themselves.
    log_size = torch.tensor([1., 1, 4, 4, 4, 4, 1]).log()
    pe = torch.zeros(9, 1)
    for gain, weights in ((0.0, [1 / 7, 1 / 7, 4 / 7, 1 / 7]),
                          (1.0, [1 / 4] * 4)):
        with torch.no_grad():
            layer.size_gain.fill_(gain)
        # Leaf 0 sees itself, leaves 1 and 6, and node 7 as one block.
        out = layer.attend(x, tree, pe, log_size)[0, 0]
        torch.testing.assert_close(out, torch.tensor(weights))
    assert layer(x, tree, pe, log_size).shape == (7, 4)


def test_depth_buckets_cover_every_example_once():
    depths = torch.tensor([0, 5, 1, 5, 2, 2, 9, 1, 0, 3, 3])
    sampler = listops.DepthBuckets(depths, 2, torch.Generator().manual_seed(
        0), pool=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 6
    assert sorted(i for b in batches for i in b) == list(range(11))
    # Within a pool of 4, batches hold neighbours in depth.
    again = list(listops.DepthBuckets(depths, 2, torch.Generator(
    ).manual_seed(0), pool=2))
    assert again == batches


@pytest.mark.slow
def test_evaluate_scores_an_exported_split(tmp_path, root):
    """--export writes a split as LRA's TSV, --evaluate scores it from the
    checkpoint alone and writes nothing, with the accuracy the training
    run measured on the same split."""
    ckpt = tmp_path / 'run.ckpt'
    result = listops.main(['--root', root, *SMALL, '--model', 'tree-gru',
                           '--checkpoint', str(ckpt)])
    tsv = tmp_path / 'test.tsv'
    listops.main(['--smoke', '--root', root, '--export', 'test',
                  '--data', str(tsv)])
    assert tsv.read_text().startswith('Source\tTarget\n')
    before = sorted(tmp_path.iterdir())
    done = run_script(['examples/listops.py', '--evaluate', str(ckpt),
                       '--data', str(tsv)], tmp_path)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last == f"accuracy {result['tests']['test']:.4f}"
    assert sorted(tmp_path.iterdir()) == before
    # LRA's parentheses are ignored: the same file with them scores alike.
    lines = tsv.read_text().splitlines()
    with_parens = [lines[0]] + ['( ' + line.replace(' ', ' ( ', 1).replace(
        '\t', ' ) )\t') for line in lines[1:]]
    lra = tmp_path / 'lra.tsv'
    lra.write_text('\n'.join(with_parens) + '\n')
    again = listops.main(['--evaluate', str(ckpt), '--data', str(lra)])
    assert again['accuracy'] == pytest.approx(result['tests']['test'])
    for bad, match in (('missing.ckpt', 'not a readable checkpoint'),
                       (str(tsv), 'not a readable checkpoint')):
        with pytest.raises(RuntimeError, match=match):
            listops.main(['--evaluate', bad, '--data', str(tsv)])


def test_count_and_match_parameters(capsys):
    """--count_parameters prints the model's size; --match_parameters the
    width closest to a budget, in steps of 1 for GIN and the Tree-GRU and
    of --heads for the attention models (benchmarks/listops_results.py
    matches its rows through it)."""
    common = ['--heads', '4', '--per_level', '2', '--count_parameters']
    tree = listops.main(['--model', 'hsa-tree', '--emb_dim', '64', *common])
    assert tree == {'emb_dim': 64, 'num_params': 63438}
    assert capsys.readouterr().out == '{"emb_dim": 64, "num_params": 63438}\n'
    for model, step in (('gin', 1), ('transformer', 4)):
        matched = listops.main(['--model', model, '--emb_dim', '64', *common,
                                '--match_parameters', '63438'])
        width = matched['emb_dim']
        assert width % step == 0
        gaps = [abs(listops.main(['--model', model, '--emb_dim', str(w),
                                  *common])['num_params'] - 63438)
                for w in (width - step, width, width + step)]
        assert gaps[1] == min(gaps) == abs(matched['num_params'] - 63438)
