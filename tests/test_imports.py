"""The package's import graph has no cycle through its modules, counting imports inside
functions too."""
import ast
import os

import gluon_lcnn

ROOT = os.path.dirname(gluon_lcnn.__file__)
# Layers, conversion, counting and timing: none of them may sit on an import cycle.
CORE = ('gluon_lcnn.nn', 'gluon_lcnn.deploy', 'gluon_lcnn.compare', 'gluon_lcnn.timing',
        'gluon_lcnn.flops', 'gluon_lcnn.convert', 'gluon_lcnn.model_zoo', 'gluon_lcnn.archive',
        'gluon_lcnn.export', 'gluon_lcnn.predict', 'gluon_lcnn.cli_args')


def _modules():
    mods = {}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith('.py'):
                rel = os.path.relpath(os.path.join(folder, f), os.path.dirname(ROOT))[:-3]
                name = rel.replace(os.sep, '.')
                mods[name[:-len('.__init__')] if name.endswith('.__init__') else name] = \
                    os.path.join(folder, f)
    return mods


def _edges(mods):
    """module -> package modules it imports anywhere (parent packages left out)."""
    edges = {}
    for mod, path in mods.items():
        package = mod if path.endswith('__init__.py') else mod.rsplit('.', 1)[0]
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split('.')[:len(package.split('.')) - node.level + 1]
                    base = '.'.join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ''
                targets = [base + '.' + a.name if base + '.' + a.name in mods else base
                           for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                if t in mods and t != mod and not mod.startswith(t + '.'):
                    edges.setdefault(mod, set()).add(t)
    return edges


def test_no_import_cycles():
    mods = _modules()
    edges = _edges(mods)
    assert 'gluon_lcnn.deploy' in edges  # the graph was read
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 'open'
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 'open':
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 'done'
    for m in sorted(mods):
        if m not in state:
            visit(m)
    core = [c for c in cycles if any(m == k or m.startswith(k + '.') for m in c for k in CORE)]
    assert core == []
