"""One style for the whole tree: `ruff format` (2-space Google style, single quotes; ruff.toml)
leaves every file as it is, and `ruff check` finds nothing. Fix with `ruff format . && ruff check
--fix .`."""

import os
import subprocess
import sys

from conftest import ROOT


def _ruff(*args):
  return subprocess.run(
    [sys.executable, '-m', 'ruff', *args], cwd=ROOT, capture_output=True, text=True, check=False
  )


def test_tree_is_formatted():
  out = _ruff('format', '--check', '--diff', '.')
  assert out.returncode == 0, f'run `ruff format .` in {ROOT}:\n{out.stdout[-3000:]}{out.stderr}'


def test_lint_is_clean():
  out = _ruff('check', '--output-format', 'concise', '.')
  assert out.returncode == 0, f'run `ruff check --fix .` in {ROOT}:\n{out.stdout}{out.stderr}'


def test_style_check_fails_on_a_badly_formatted_file(tmp_path):
  """The check can fail: a 4-space, double-quoted file is reported under the tree's config."""
  bad = tmp_path / 'bad.py'
  bad.write_text('def f():\n    return "x"\n')
  out = _ruff('format', '--check', '--config', os.path.join(ROOT, 'ruff.toml'), str(bad))
  assert out.returncode == 1 and 'bad.py' in out.stdout + out.stderr, out
