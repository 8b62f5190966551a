"""Command line: ``python -m gluon_lcnn COMMAND [options]`` (console script ``gluon-lcnn``).

Each command lives in its own module providing ``add_arguments(parser)`` and ``run(args)``;
the module is imported only when its command runs, so one missing or broken command leaves the
others working and says clearly what is wrong.
"""
import argparse
import importlib
import os
import re
import sys

COMMANDS = {
    'flops': 'gluon_lcnn.flops',
    'export': 'gluon_lcnn.export',
    'benchmark': 'gluon_lcnn.benchmark',
    'archive': 'gluon_lcnn.archive',
    'predict': 'gluon_lcnn.predict',
}

_USAGE = '''usage: gluon-lcnn COMMAND [options]   (or: python -m gluon_lcnn COMMAND ...)

commands:
  flops      per-layer MACs/params of a zoo model, dense-equivalent vs lookup
  export     write NAME-symbol.json + NAME-0000.params for SymbolBlock / Module
  benchmark  time LCNN layers/models against their dense twins
  archive    package a trained model for MXNet Model Server (.mar)
  predict    classify images with a trained or exported model

`gluon-lcnn COMMAND --help` shows a command's options. Bad input ends with one
"error: ..." line (exit status 1; usage errors 2); GLUON_LCNN_TRACEBACK=1 shows the traceback.'''


def load_command(name):
    """Import the module behind a command; SystemExit with a clear message when it can't."""
    if name not in COMMANDS:
        raise SystemExit('gluon-lcnn: unknown command %r; commands: %s'
                         % (name, ', '.join(sorted(COMMANDS))))
    try:
        module = importlib.import_module(COMMANDS[name])
    except ImportError as err:
        raise SystemExit('gluon-lcnn %s: cannot import %s (%s)' % (name, COMMANDS[name], err))
    if not (hasattr(module, 'add_arguments') and hasattr(module, 'run')):
        raise SystemExit('gluon-lcnn %s: %s does not provide add_arguments(parser) and run(args)'
                         % (name, COMMANDS[name]))
    return module


def join_dash_values(parser, argv):
    """``--opt -1,2`` -> ``--opt=-1,2`` for options taking one value.

    argparse takes a word starting with '-' that is not a plain number for an option, so a
    negative shape gets "expected one argument"; joined, the option's own check says what is
    wrong with the value.
    """
    out = []
    for word in argv:
        action = parser._option_string_actions.get(out[-1]) if out else None
        if action is not None and action.nargs is None and re.match(r'^-\d', word):
            out[-1] += '=' + word
        else:
            out.append(word)
    return out


def main(argv=None):
    """Run one command; its bad input (ValueError, OSError) ends in one 'error:' line, exit 1.

    Commands raise ValueError for input they refuse, also where MXNet's own error means bad input
    (a parameter file of another model, a shape the model cannot take); other exceptions are
    bugs and keep their traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help', 'help'):
        print(_USAGE)
        return 0
    name, rest = argv[0], argv[1:]
    module = load_command(name)
    parser = argparse.ArgumentParser(prog='gluon-lcnn %s' % name,
                                     description=(module.__doc__ or '').strip().split('\n')[0])
    module.add_arguments(parser)
    args = parser.parse_args(join_dash_values(parser, rest))
    try:
        result = module.run(args)
    except (ValueError, OSError) as err:
        if os.environ.get('GLUON_LCNN_TRACEBACK'):
            raise
        from .flops import error_line
        print('gluon-lcnn %s: error: %s' % (name, error_line(err)), file=sys.stderr)
        return 1
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == '__main__':
    sys.exit(main())
