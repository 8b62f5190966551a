"""Build the sparse-lookup operator library ``liblcnn_ops.so``.

``python -m gluon_lcnn.ops.build [--force] [--verbose]``

The C++ sources next to this file are compiled together with the mxnet wheel's
``src/lib_api.cc`` into one shared library that ``mx.library.load`` accepts. The build is skipped
when a stamp (hash of sources, MXNet headers, compiler and flags) says the library is current.
The library is written next to its sources: a checkout's ``gluon_lcnn/ops/``, or for an installed
wheel (which carries the sources, never a built library) the installed package, on its first
import.
Vector code is portable GCC vector extensions: the build adds ``-mavx2 -mfma`` (and ``-mf16c``)
only when the building CPU has them (the library is built where it runs); on aarch64 NEON is
baseline and other CPUs get generic code.
"""
import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
LIB_PATH = os.path.join(HERE, 'liblcnn_ops.so')
STAMP_PATH = LIB_PATH + '.stamp'
SOURCES = ('lib.cc', 'common.cc', 'sparse_conv.cc', 'lookup_kernel.cc', 'sparse_dense.cc',
           'max_pool.cc', 'dense.cc')
HEADERS = ('common.h', 'vec.h', 'lookup_kernel.h', 'half.h', 'dense_product.h')
BASE_FLAGS = ['-O3', '-std=gnu++17', '-fPIC', '-shared', '-fopenmp', '-ffp-contract=fast',
              '-fno-math-errno', '-Wall']


class BuildError(RuntimeError):
    """The operator library could not be built (no compiler, compile error, ...)."""


def mxnet_paths():
    """(include dir, lib_api.cc) of the installed mxnet wheel."""
    import mxnet
    root = os.path.dirname(os.path.abspath(mxnet.__file__))
    include = os.path.join(root, 'include')
    lib_api = os.path.join(root, 'src', 'lib_api.cc')
    if not (os.path.isfile(os.path.join(include, 'mxnet', 'lib_api.h'))
            and os.path.isfile(lib_api)):
        raise BuildError('the installed mxnet (%s) ships no include/mxnet/lib_api.h or '
                         'src/lib_api.cc; mxnet>=1.9 wheels do' % root)
    return include, lib_api


def find_compiler():
    cxx = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
    if not cxx or not shutil.which(cxx):
        raise BuildError('no C++ compiler found (set CXX or install g++, e.g. '
                         '`apt-get install g++`); it is needed once to build %s' % LIB_PATH)
    return cxx


def _compiles(cxx, flags):
    """Whether `cxx` accepts `flags` for a trivial translation unit."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, 't.cc')
        with open(src, 'w') as f:
            f.write('int main() { return 0; }\n')
        proc = subprocess.run([cxx] + flags + [src, '-o', os.path.join(tmp, 't')],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return proc.returncode == 0


def _cpu_flags():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    return set(line.split(':', 1)[1].split())
    except OSError:
        pass
    return set()


def arch_flags(cxx):
    """Extra ISA flags for the building CPU: AVX2+FMA where present (and F16C, which widens
    float16 weights in one instruction, where that is present too), else none."""
    machine = platform.machine().lower()
    if machine in ('x86_64', 'amd64'):
        cpu = _cpu_flags()
        if {'avx2', 'fma'} <= cpu and _compiles(cxx, ['-mavx2', '-mfma']):
            f16c = ['-mf16c'] if 'f16c' in cpu and _compiles(cxx, ['-mf16c']) else []
            return ['-mavx2', '-mfma'] + f16c
    return []


def build_command(cxx, out_path):
    include, lib_api = mxnet_paths()
    srcs = [os.path.join(HERE, s) for s in SOURCES] + [lib_api]
    return ([cxx] + BASE_FLAGS + arch_flags(cxx) + ['-I', include, '-I', HERE] + srcs
            + ['-o', out_path])


def source_hash(cmd):
    """Hash of everything the library depends on: sources, MXNet's lib_api, the command."""
    include, lib_api = mxnet_paths()
    h = hashlib.sha256()
    for path in ([os.path.join(HERE, s) for s in SOURCES + HEADERS] + [lib_api]
                 + [os.path.join(include, 'mxnet', 'lib_api.h')]):
        with open(path, 'rb') as f:
            h.update(f.read())
    h.update(' '.join(c for c in cmd if not c.startswith(HERE) and c != 'OUT').encode())
    return h.hexdigest()


def is_current():
    """True when liblcnn_ops.so exists and was built from the present sources."""
    try:
        cmd = build_command(find_compiler(), 'OUT')
    except BuildError:
        # No compiler: a shipped library is all we can use.
        return os.path.isfile(LIB_PATH)
    if not os.path.isfile(LIB_PATH) or not os.path.isfile(STAMP_PATH):
        return False
    with open(STAMP_PATH) as f:
        return f.read().strip() == source_hash(cmd)


def build(force=False, verbose=False):
    """Compile liblcnn_ops.so unless it is current; return its path. Raises BuildError."""
    if not force and is_current():
        return LIB_PATH
    cxx = find_compiler()
    stamp = source_hash(build_command(cxx, 'OUT'))
    # Build under a unique name and rename: concurrent builders never see a half-written file.
    try:
        fd, tmp = tempfile.mkstemp(suffix='.so.tmp', dir=HERE)
    except OSError as err:   # e.g. a system-wide install imported by another user
        raise BuildError('cannot write %s (%s): build it once as the owner of the install '
                         '(python -m gluon_lcnn.ops.build), or set GLUON_LCNN_OPS_LIB to a '
                         'built library' % (LIB_PATH, err.strerror or err)) from None
    os.close(fd)
    try:
        cmd = build_command(cxx, tmp)
        if verbose:
            print(' '.join(cmd))
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True)
        if proc.returncode != 0:
            raise BuildError('compiling %s failed:\n%s' % (LIB_PATH, proc.stdout))
        os.replace(tmp, LIB_PATH)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    with open(STAMP_PATH, 'w') as f:
        f.write(stamp + '\n')
    return LIB_PATH


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--force', action='store_true', help='rebuild even if current')
    parser.add_argument('--verbose', action='store_true', help='print the compile command')
    args = parser.parse_args(argv)
    try:
        fresh = args.force or not is_current()
        path = build(force=args.force, verbose=args.verbose)
    except BuildError as err:
        print('gluon_lcnn.ops.build: %s' % err, file=sys.stderr)
        return 1
    print('%s %s' % ('built' if fresh else 'up to date:', path))
    return 0


if __name__ == '__main__':
    sys.exit(main())
