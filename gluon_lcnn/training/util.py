"""Small helpers of the training scripts: parameter digest, density line, --model-arg parsing."""
import hashlib

import numpy as np


def params_digest(net):
    """SHA-256 over every parameter (sorted by name): equal digests mean bit-identical models."""
    digest = hashlib.sha256()
    for name, param in sorted(net.collect_params().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(param.data().asnumpy()).tobytes())
    return digest.hexdigest()


def format_density(report, limit=12):
    """One line from ``gluon_lcnn.nn.density_report``: total, then per layer."""
    if not report:
        return 'no lookup layers'
    layers = [(k, v) for k, v in report.items() if k != '__total__']
    parts = ['%s %.4f' % (k, v) for k, v in layers[:limit]]
    if len(layers) > limit:
        parts.append('... (%d more)' % (len(layers) - limit))
    return 'total %.4f: %s' % (report['__total__'], ', '.join(parts))


def parse_model_args(items):
    """['thumbnail=True', 'fc_units=1024'] -> {'thumbnail': True, 'fc_units': 1024}."""
    import ast
    out = {}
    for item in items or ():
        if '=' not in item:
            raise ValueError('--model-arg %r is not KEY=VALUE' % (item,))
        key, value = item.split('=', 1)
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out
