"""Command line: ``python -m gluon_lcnn COMMAND [options]`` (console script ``gluon-lcnn``).

Each command lives in its own module providing ``add_arguments(parser)`` and ``run(args)``;
the top-level parser has one argparse subcommand per entry of ``COMMANDS``, and only the module
of the command being run is imported (its options added to its subparser), so one missing or
broken command leaves the others working and says clearly what is wrong.
"""
import argparse
import importlib
import os
import re
import sys

# command -> (module, one-line help for `gluon-lcnn --help`)
COMMANDS = {
    'flops': ('gluon_lcnn.flops',
              'per-layer MACs/params of a zoo model, dense-equivalent vs lookup'),
    'export': ('gluon_lcnn.export',
               'write NAME-symbol.json + NAME-0000.params (SymbolBlock, Module)'),
    'benchmark': ('gluon_lcnn.compare', 'time LCNN layers/models against their dense twins'),
    'archive': ('gluon_lcnn.archive', 'package a trained model for MXNet Model Server (.mar)'),
    'predict': ('gluon_lcnn.predict', 'classify images with a trained or exported model'),
    'compress': ('gluon_lcnn.compress.workflow',
                 'accelerate a trained dense net: lcnn, lowrank, prune or int8, fine-tuned'),
}

_EPILOG = '''`gluon-lcnn COMMAND --help` shows a command's options. Bad input ends with one
"error: ..." line (exit status 1; usage errors 2); GLUON_LCNN_TRACEBACK=1 shows the traceback.'''


def load_command(name):
    """Import the module behind a command; SystemExit with a clear message when it can't."""
    if name not in COMMANDS:
        raise SystemExit('gluon-lcnn: unknown command %r; commands: %s'
                         % (name, ', '.join(sorted(COMMANDS))))
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise SystemExit('gluon-lcnn %s: cannot import %s (%s)' % (name, module_name, err))
    if not (hasattr(module, 'add_arguments') and hasattr(module, 'run')):
        raise SystemExit('gluon-lcnn %s: %s does not provide add_arguments(parser) and run(args)'
                         % (name, module_name))
    return module


def build_parser(name=None, module=None):
    """The ``gluon-lcnn`` parser and the subparser of command ``name`` (None without one).

    Every command gets a subparser (listed by ``--help``); only ``name``'s gets its options,
    from ``module.add_arguments``.
    """
    parser = argparse.ArgumentParser(
        prog='gluon-lcnn', epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description='LCNN (lookup-based CNN) tools; also run as python -m gluon_lcnn COMMAND.')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND', title='commands')
    chosen = None
    for command, (_, help_text) in COMMANDS.items():
        if command != name:
            subparsers.add_parser(command, help=help_text)
            continue
        chosen = subparsers.add_parser(
            command, help=help_text,
            description=(module.__doc__ or '').strip().split('\n')[0])
        module.add_arguments(chosen)
    return parser, chosen


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
        build_parser()[0].print_help()
        return 0
    name = argv[0]
    module = load_command(name)
    parser, command_parser = build_parser(name, module)
    args, extra = parser.parse_known_args([name] + join_dash_values(command_parser, argv[1:]))
    if extra:   # reported by the command's parser, with its usage line
        command_parser.error('unrecognized arguments: %s' % ' '.join(extra))
    try:
        result = module.run(args)
    except (ValueError, OSError) as err:
        if os.environ.get('GLUON_LCNN_TRACEBACK'):
            raise
        from .cli_args import error_line
        print('gluon-lcnn %s: error: %s' % (name, error_line(err)), file=sys.stderr)
        return 1
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == '__main__':
    sys.exit(main())
