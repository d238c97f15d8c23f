"""One style for the whole tree: `ruff format` (2-space Google style, single quotes; ruff.toml)
leaves every file as it is, and `ruff check` finds nothing. Fix with `ruff format . && ruff check
--fix .`."""

import os
import re
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


def _layout_paths() -> list:
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    text = f.read()
  table = text.split('## Layout', 1)[1].split('\n## ', 1)[0]
  firsts = [row.split('|')[1] for row in table.splitlines() if row.startswith('| `')]
  return [p for cell in firsts for p in re.findall(r'`([^`]+)`', cell)]


def test_readme_layout_table_matches_the_tree():
  """Every path the README's layout table names exists, and every module of lm/, every
  top-level directory and every entry-point script is named there."""
  named = _layout_paths()
  missing = [p for p in named if not os.path.exists(os.path.join(ROOT, p))]
  assert not missing, f'README layout names paths that do not exist: {missing}'
  lm_dir = os.path.join(ROOT, 'lm')
  want = [f'lm/{n}' for n in os.listdir(lm_dir) if n.endswith('.py') and n != '__init__.py']
  want += [
    f'lm/{n}/' for n in os.listdir(lm_dir) if os.path.isfile(os.path.join(lm_dir, n, '__init__.py'))
  ]
  want += [n for n in os.listdir(ROOT) if n.endswith('.py') and n != 'setup.py']
  want += [f'{n}/' for n in ('configs', 'bench', 'colabs', 'tests')]
  unnamed = sorted(set(want) - set(named))
  assert not unnamed, f'README layout table does not name: {unnamed}'
