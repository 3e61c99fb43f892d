"""Runs the rows of a results table as example-script processes, a few at
a time, and keeps each row's JSON result, so an interrupted sweep resumes
(``listops_results.py``, ``causal_lm_results.py``); and what every results
script writes beside its table: the command and the machine.

A row's command writes ``<out>/runs/<row>.json`` (its ``--filename``) and
logs to ``<out>/runs/<row>.log``; the arguments it was launched with go to
``<out>/runs/<row>.command.json``. A row whose result file exists, made
with the arguments the command would use, is not run again.

The example scripts run only as processes (the benchmarks import nothing
from ``examples/``): :func:`example_parameters` asks one for its model's
parameter count through its ``--count_parameters`` option.
"""
import json
import os
import os.path as osp
import platform
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch


def result_path(out: str, row: str) -> str:
    return osp.join(out, 'runs', f'{row}.json')


def example_parameters(script: str, arguments: List[str]) -> Dict[str, int]:
    """``{'emb_dim': width, 'num_params': count}`` of the model that
    ``python <script> *arguments`` would train (with ``--match_parameters
    N`` among the arguments: the width whose count is closest to ``N``)."""
    done = subprocess.run([sys.executable, script, *arguments,
                           '--count_parameters'], capture_output=True,
                          text=True, check=False)
    if done.returncode:
        raise RuntimeError(f'{script} --count_parameters failed:\n'
                           f'{done.stderr}')
    return json.loads(done.stdout.splitlines()[-1])


def arguments(cmd: List[str]) -> List[str]:
    """What makes a row's result: the arguments of :obj:`cmd`
    (``[python, script, *arguments]``) without ``--resume`` and without
    the checkpoint and data folders."""
    out, rest = [], list(cmd[2:])
    while rest:
        item = rest.pop(0)
        if item in ('--checkpoint', '--root'):
            rest.pop(0)
        elif item != '--resume':
            out.append(item)
    return out


def launched(out: str, row: str) -> Optional[List[str]]:
    """The :func:`arguments` the row's last process was launched with."""
    path = osp.join(out, 'runs', f'{row}.command.json')
    if not osp.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def cached(out: str, row: str, cmd: List[str]) -> Optional[Dict]:
    """The row's earlier result if it was made with the same
    :func:`arguments` as :obj:`cmd`."""
    path = result_path(out, row)
    if not osp.exists(path):
        return None
    with open(path) as f:
        result = json.load(f)
    return result if result.get('command') == arguments(cmd) else None


def run_rows(commands: Dict[str, List[str]], out: str, threads: int,
             parallel: int) -> Dict[str, Dict]:
    """Runs the rows' commands, :obj:`parallel` processes at a time with
    :obj:`threads` OpenMP threads each; returns each row's result with its
    wall-clock seconds (``wall_seconds``)."""
    os.makedirs(osp.join(out, 'runs'), exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), PYTHONWARNINGS='ignore')
    results, pending, running, failed = {}, list(commands), {}, []
    while pending or running:
        while pending and len(running) < parallel:
            row = pending.pop(0)
            cmd = commands[row]
            result = cached(out, row, cmd)
            if result is not None:
                results[row] = result
                continue
            print(' '.join(shlex.quote(c) for c in cmd[1:]), flush=True)
            with open(osp.join(out, 'runs', f'{row}.command.json'), 'w') as f:
                json.dump(arguments(cmd), f)
            log = open(osp.join(out, 'runs', f'{row}.log'), 'w')
            running[row] = (subprocess.Popen(cmd, env=env, stdout=log,
                                             stderr=subprocess.STDOUT),
                            time.perf_counter(), log)
        for row, (process, start, log) in list(running.items()):
            if process.poll() is None:
                continue
            log.close()
            del running[row]
            if process.returncode:  # (the other rows go on)
                failed.append(f'{row} (see {log.name})')
                continue
            with open(result_path(out, row)) as f:
                result = json.load(f)
            result['wall_seconds'] = time.perf_counter() - start
            result['command'] = arguments(process.args)
            with open(result_path(out, row) + '.tmp', 'w') as f:
                json.dump(result, f, indent=1)
            os.replace(result_path(out, row) + '.tmp', result_path(out, row))
            results[row] = result
        time.sleep(0.5)
    if failed:
        raise RuntimeError(f"rows failed: {', '.join(failed)}")
    return {row: results[row] for row in commands}


def invocation(script: str, argv: Optional[List[str]]) -> str:
    """The command line that made a table: ``python benchmarks/<script>``
    with :obj:`argv` (default: this process's arguments)."""
    return f'python benchmarks/{script}' + ''.join(
        f' {shlex.quote(a)}'
        for a in (argv if argv is not None else sys.argv[1:]))


def machine() -> str:
    """The processor, its number of cores and torch's version."""
    return (f'{platform.processor() or platform.machine()}, '
            f'{os.cpu_count()} cores, torch {torch.__version__}')


def write_table(out: str, text: str) -> None:
    """``<out>/results.md``, and the same text on the terminal."""
    os.makedirs(out, exist_ok=True)
    with open(osp.join(out, 'results.md'), 'w') as f:
        f.write(text)
    print(text)
