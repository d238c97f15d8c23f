"""The package's import graph shows its architecture: read from the code (ast, not regex), it has
no cycles, nothing outside `lm/jobs` imports a job, and every function-level import of an `lm`
module says (in a `deferred:` comment on its line) which optional dependency it defers."""

import ast
import os
import textwrap

from conftest import ROOT


def _modules(root: str, package: str) -> dict:
  """{dotted name: path} of every module below root/package."""
  out = {}
  for d, _, files in os.walk(os.path.join(root, package)):
    for f in files:
      if f.endswith('.py'):
        rel = os.path.relpath(os.path.join(d, f), root)[:-3].replace(os.sep, '.')
        out[rel[: -len('.__init__')] if rel.endswith('.__init__') else rel] = os.path.join(d, f)
  return out


def _is_main_guard(node) -> bool:
  return (
    isinstance(node, ast.If)
    and isinstance(node.test, ast.Compare)
    and isinstance(node.test.left, ast.Name)
    and node.test.left.id == '__name__'
  )


def _imports(name: str, path: str, modules: dict, package: str):
  """(target module, line, in a function) for each import of a `package` module in `path`;
  imports under `if __name__ == '__main__':` (a module run as a script) are not the library's."""
  tree = ast.parse(open(path, encoding='utf-8').read())
  is_pkg = path.endswith('__init__.py')
  base = name if is_pkg else name.rpartition('.')[0]
  out = []

  def visit(node, in_function):
    for child in ast.iter_child_nodes(node):
      if _is_main_guard(child):
        continue
      func = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
      targets = []
      if isinstance(child, ast.Import):
        targets = [a.name for a in child.names]
      elif isinstance(child, ast.ImportFrom):
        if child.level:
          parts = base.split('.')
          mod = '.'.join(parts[: len(parts) - child.level + 1] + [child.module or ''])
          mod = mod.rstrip('.')
        else:
          mod = child.module or ''
        targets = [f'{mod}.{a.name}' if f'{mod}.{a.name}' in modules else mod for a in child.names]
      for t in targets:
        if t == package or t.startswith(package + '.'):
          while t not in modules and '.' in t:
            t = t.rpartition('.')[0]
          out.append((t, child.lineno, func))
      visit(child, func)

  visit(tree, False)
  return out


def graph(root: str, package: str):
  """({module: {imported modules}}, [(module, line, target) of function-level imports without a
  `deferred:` comment])."""
  modules = _modules(root, package)
  edges, undeclared = {m: set() for m in modules}, []
  for name, path in modules.items():
    lines = open(path, encoding='utf-8').read().splitlines()
    for target, line, in_function in _imports(name, path, modules, package):
      if target != name:
        edges[name].add(target)
      if in_function and 'deferred:' not in lines[line - 1]:
        undeclared.append((name, line, target))
  return edges, undeclared


def cycles(edges: dict) -> list:
  """Every strongly connected component of more than one module (Tarjan)."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

  def strong(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges.get(v, ()):
      if w not in index:
        strong(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(edges):
    if v not in index:
      strong(v)
  return out


def upward(edges: dict, jobs: str) -> list:
  """(module, job module) for each import of `jobs` from outside it."""
  inside = lambda m: m == jobs or m.startswith(jobs + '.')  # noqa: E731
  return sorted((m, t) for m, ts in edges.items() if not inside(m) for t in ts if inside(t))


def test_lm_has_no_import_cycles():
  edges, _ = graph(ROOT, 'lm')
  assert len(edges) > 60, sorted(edges)  # the walk saw the package
  assert cycles(edges) == []


def test_nothing_below_the_jobs_imports_them():
  edges, _ = graph(ROOT, 'lm')
  up = upward(edges, 'lm.jobs')
  assert up == [], f'library modules import jobs: {up}'
  assert {'lm.jobs.pretrain', 'lm.jobs.finetune', 'lm.jobs.sft', 'lm.jobs.dpo', 'lm.jobs.ppo'} <= (
    set(edges)
  )


def test_function_level_imports_name_what_they_defer():
  _, undeclared = graph(ROOT, 'lm')
  assert undeclared == [], (
    'function-level imports of lm modules without a `deferred: <optional dependency>` comment: '
    f'{undeclared}'
  )


def test_the_checks_catch_a_cycle_an_upward_import_and_a_hidden_import(tmp_path):
  """The same checks on a small package built to break each rule."""
  pkg = tmp_path / 'p'
  (pkg / 'jobs').mkdir(parents=True)
  files = {
    '__init__.py': '',
    'a.py': 'from p import b\n',
    'b.py': 'from p.jobs import run\n\ndef f():\n  from p import a\n',
    'c.py': 'def g():\n  from p import a  # deferred: torch\n',
    'jobs/__init__.py': '',
    'jobs/run.py': 'from p import a\n',
  }
  for name, text in files.items():
    (pkg / name).write_text(textwrap.dedent(text))
  edges, undeclared = graph(str(tmp_path), 'p')
  assert cycles(edges) == [['p.a', 'p.b', 'p.jobs.run']]
  assert upward(edges, 'p.jobs') == [('p.b', 'p.jobs.run')]
  assert [(m, t) for m, _, t in undeclared] == [('p.b', 'p.a')]
