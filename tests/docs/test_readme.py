"""The snippets of the README and the docs pages run as written, their
example commands parse, and CI runs the README's commands."""
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ['README.md'] + sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / 'docs').glob('*.md'))


def blocks(page: str, language: str):
    text = (ROOT / page).read_text()
    return re.findall(rf'```{language}\n(.*?)```', text, flags=re.S)


@pytest.mark.parametrize('page', [p for p in PAGES if blocks(p, 'python')])
def test_python_snippets_run(page):
    # The snippets of one page run in order in one namespace, as a reader
    # would paste them.
    namespace = {'__name__': '__docs__'}
    for block in blocks(page, 'python'):
        exec(compile(block, page, 'exec'), namespace)


def test_readme_is_a_landing_page():
    readme = (ROOT / 'README.md').read_text()
    assert len(readme.splitlines()) <= 200
    code = blocks('README.md', 'python')
    assert len(code) == 1 and len(code[0].splitlines()) <= 25
    # Every local link points at a file of the repository.
    for target in re.findall(r'\]\(([^)#:]+)(?:#[^)]*)?\)', readme):
        assert (ROOT / target).exists(), target


def test_docs_links_resolve():
    for page in PAGES:
        text = (ROOT / page).read_text()
        for target in re.findall(r'\]\(([^)#:]+)(?:#[^)]*)?\)', text):
            assert (ROOT / page).parent.joinpath(target).exists(), \
                f'{page}: {target}'
        assert 'shared/' not in text, f'{page} refers outside the repo'


def test_ci_runs_the_readme_commands():
    # The README's first two commands are the set-up and the quick start
    # (tests/examples/test_quickstart.py runs it); the tests come third.
    bash = [block.strip() for block in blocks('README.md', 'bash')]
    setup, quickstart, tests = bash[:3]
    assert setup.startswith('python -m pip install torch==')
    assert quickstart == 'python examples/quickstart.py'
    assert tests == 'python -m pytest'
    ci = (ROOT / '.ci' / 'run').read_text().splitlines()
    assert setup in ci and tests in ci


@pytest.mark.parametrize('script', ['ogbg_mol', 'listops', 'pointcloud_cls',
                                    'causal_lm'])
def test_example_commands_parse(script, monkeypatch):
    """Every ``python examples/<script>.py ...`` command in the docs is
    accepted by the script's argument parser."""
    monkeypatch.syspath_prepend(str(ROOT / 'examples'))
    commands = []
    for page in PAGES:
        text = (ROOT / page).read_text()
        commands += re.findall(rf'python examples/{script}\.py([^`\n]*)',
                               text)
    if not commands:
        pytest.skip(f'no page shows an examples/{script}.py command')
    module = __import__(script)
    for command in commands:
        module.parse_args(shlex.split(command))
    sys.modules.pop(script, None)
