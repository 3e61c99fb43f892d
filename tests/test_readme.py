"""The README's snippets run as written, and CI runs the README's commands."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / 'README.md').read_text()


def python_blocks():
    return re.findall(r'```python\n(.*?)```', README, flags=re.S)


def test_quick_start_runs():
    blocks = python_blocks()
    assert blocks, 'README has no python snippet'
    for block in blocks:
        exec(compile(block, 'README.md', 'exec'), {'__name__': '__readme__'})


def test_ci_runs_the_readme_commands():
    bash = re.findall(r'```bash\n(.*?)```', README, flags=re.S)
    setup, tests = bash[0].strip(), bash[1].strip()
    ci = (ROOT / '.ci' / 'run').read_text().splitlines()
    assert setup in ci and tests in ci


def test_example_commands_parse():
    """Every ``python examples/ogbg_mol.py ...`` command in the README is
    accepted by the script's argument parser."""
    import shlex
    import sys
    sys.path.insert(0, str(ROOT / 'examples'))
    import ogbg_mol
    commands = re.findall(r'python examples/ogbg_mol\.py([^`\n]*)', README)
    assert commands, 'the README shows no ogbg_mol.py command'
    for command in commands:
        ogbg_mol.parse_args(shlex.split(command))
