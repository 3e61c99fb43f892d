"""Every bad input of bad_input_cases.py raises exactly the exception type
its case names (ValueError unless said otherwise; never no error) with a
message that names what is wrong, and docs/bad_inputs.md lists them all."""
import re

import pytest
from bad_input_cases import CASES
from bad_inputs_page import PAGE, main, markdown_table, page


@pytest.mark.parametrize('entry', CASES, ids=lambda entry: entry[0])
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


def test_the_table_lists_every_case():
    cases = CASES[:2] + [
        ('a case that raises nothing', lambda: None),
        ('a | pipe', lambda: int('x|y')),
    ]
    table = markdown_table(cases)
    lines = table.splitlines()
    assert lines[0] == '| input | exception | message |'
    assert len(lines) == 2 + len(cases)
    assert lines[2].startswith('| parent vector with a cycle (2 -> 3 -> 2) | '
                               '`ValueError` | The nesting contains a cycle')
    assert lines[4] == '| a case that raises nothing | `no error` |  |'
    assert lines[5] == ("| a \\| pipe | `ValueError` | invalid literal for "
                        "int() with base 10: 'x\\|y' |")


def test_the_generator_rewrites_only_the_table(tmp_path, capsys):
    intro = '# Bad input\n\nHand-written text.\n\n'
    stale = intro + '| input | exception | message |\n| --- | --- | --- |\n'
    path = tmp_path / 'bad_inputs.md'
    path.write_text(stale)
    assert main(['--page', str(path), '--check']) == 1
    assert capsys.readouterr().out == f'{path} is out of date\n'
    assert main(['--page', str(path)]) == 0
    written = path.read_text()
    assert written.startswith(intro)
    assert len(written.splitlines()) == len(intro.splitlines()) + 2 + \
        len(CASES)
    assert main(['--page', str(path), '--check']) == 0
    assert capsys.readouterr().out == 'up to date\n'
    with pytest.raises(ValueError, match='no line'):
        page('# no table here\n', '')


def test_docs_table_is_the_generated_one():
    """docs/bad_inputs.md ends with the table the cases produce now
    (regenerate it with ``python tests/bad_inputs_page.py``)."""
    text = PAGE.read_text()
    assert page(text, markdown_table()) == text
