"""Writes the "input -> what happens" table of ``docs/bad_inputs.md`` from
the errors the cases of ``bad_input_cases.py`` actually raise; the page's
hand-written text above the table stays as it is::

    python tests/bad_inputs_page.py            # rewrite the page's table
    python tests/bad_inputs_page.py --check    # fail if it is out of date
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from bad_input_cases import CASES

PAGE = Path(__file__).resolve().parents[1] / 'docs' / 'bad_inputs.md'
HEADER = '| input | exception | message |'


def outcome(entry) -> Tuple[str, str]:
    """``(exception class name, message)`` raised by a case's trigger, or
    ``('no error', '')``."""
    try:
        entry[1]()
    except Exception as error:  # (reported, whatever it is)
        return type(error).__name__, str(error)
    return 'no error', ''


def markdown_table(cases: Optional[Sequence] = None) -> str:
    rows = [HEADER, '| --- | --- | --- |']
    for entry in CASES if cases is None else cases:
        name, message = outcome(entry)
        cells = [entry[0], f'`{name}`', message]
        rows.append('| ' + ' | '.join(_cell(c) for c in cells) + ' |')
    return '\n'.join(rows) + '\n'


def _cell(text: str) -> str:
    return ' '.join(text.split()).replace('|', '\\|')


def page(text: str, table: str) -> str:
    """The page :obj:`text` with everything from the table's header on
    replaced by :obj:`table` (the table ends the page)."""
    start = text.find('\n' + HEADER + '\n')
    if start < 0:
        raise ValueError(f"the page has no line {HEADER!r} to start the "
                         f"table at")
    return text[:start + 1] + table


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--check', action='store_true',
                        help='only report whether the page is up to date')
    parser.add_argument('--page', default=str(PAGE))
    args = parser.parse_args(argv)
    text = Path(args.page).read_text()
    new = page(text, markdown_table())
    if args.check:
        print('up to date' if new == text else f'{args.page} is out of date')
        return int(new != text)
    Path(args.page).write_text(new)
    return 0


if __name__ == '__main__':
    sys.exit(main())
