"""Every bad input of docs/bad_inputs.py raises exactly the exception type
its case names (ValueError unless said otherwise; never no error) with a
message that names what is wrong."""
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    'bad_inputs', ROOT / 'docs' / 'bad_inputs.py')
bad_inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bad_inputs)


@pytest.mark.parametrize('entry', bad_inputs.CASES,
                         ids=lambda entry: entry[0])
def test_bad_input_raises_a_clear_error(entry):
    description, trigger = entry[0], entry[1]
    names = entry[2] if len(entry) > 2 else ()
    error = entry[3] if len(entry) > 3 else ValueError
    with pytest.raises(Exception) as info:
        trigger()
    assert type(info.value) is error, (
        f'{description}: expected {error.__name__}, got '
        f'{type(info.value).__name__}: {info.value}')
    message = str(info.value)
    assert message, f'{description}: empty message'
    for name in names:
        assert name in message, f'{description}: {name!r} not in {message!r}'
    if not names:  # then at least something in quotes
        assert re.search(r"'[^']+'", message), message


def test_the_table_lists_every_case(capsys, tmp_path):
    cases = bad_inputs.CASES[:2] + [
        ('a case that raises nothing', lambda: None),
        ('a | pipe', lambda: int('x|y')),
    ]
    table = bad_inputs.markdown_table(cases)
    lines = table.splitlines()
    assert lines[0] == '| input | exception | message |'
    assert len(lines) == 2 + len(cases)
    assert lines[2].startswith('| parent vector with a cycle (2 -> 3 -> 2) | '
                               '`ValueError` | The nesting contains a cycle')
    assert lines[4] == '| a case that raises nothing | `no error` |  |'
    assert lines[5] == ("| a \\| pipe | `ValueError` | invalid literal for "
                        "int() with base 10: 'x\\|y' |")
    # The script's entry point prints the same table for all cases.
    out = tmp_path / 'table.md'
    bad_inputs.main(['--out', str(out)])
    printed = capsys.readouterr().out
    assert printed == out.read_text()
    assert len(printed.splitlines()) == 2 + len(bad_inputs.CASES)


def test_docs_table_is_the_generated_one():
    """docs/bad_inputs.md's "input -> what happens" table is this script's
    output (regenerate it with ``python docs/bad_inputs.py``)."""
    page = (ROOT / 'docs' / 'bad_inputs.md').read_text()
    assert bad_inputs.markdown_table() in page
