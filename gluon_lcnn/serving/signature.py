"""signature.json: what a served model takes (input name and shape, normalisation, resize,
top-k, pixel limit) and the names of the archive's files."""
import numpy as np

__all__ = ['SIGNATURE_FILE', 'SYNSET_FILE', 'DEFAULT_MAX_PIXELS', 'make_signature']

SIGNATURE_FILE = 'signature.json'
SYNSET_FILE = 'synset.txt'
DEFAULT_MAX_PIXELS = 25_000_000   # ~5000 x 5000: far beyond any photo worth classifying


def make_signature(input_shape, mean=None, std=None, resize=None, top_k=5,
                   max_pixels=DEFAULT_MAX_PIXELS, input_name='data',
                   symbol='model-symbol.json', params='model-0000.params', op_library=None,
                   apply_softmax=True):
    """The validated signature.json content for a model taking ``input_shape`` = (C, H, W).

    ``mean`` and ``std`` are per channel (or one value for all) in [0, 1] pixel units.
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape[1:]) < 1:
        raise ValueError('input_shape must be (channels, height, width) with 1 or 3 channels, '
                         'got %r' % (input_shape,))
    channels = shape[0]

    def per_channel(value, default, name):
        value = [default] if value is None else list(np.atleast_1d(value).astype(float))
        if len(value) == 1:
            value = value * channels
        if len(value) != channels:
            raise ValueError('%s needs 1 or %d values for %d channels, got %r'
                             % (name, channels, channels, value))
        return [float(v) for v in value]
    mean = per_channel(mean, 0.0, 'mean')
    std = per_channel(std, 1.0, 'std')
    if min(std) <= 0:
        raise ValueError('std must be positive, got %r' % (std,))
    if resize is not None and int(resize) < min(shape[1:]):
        raise ValueError('resize (shorter side, %r) must be >= the input height and width %r'
                         % (resize, shape[1:]))
    if int(top_k) < 1 or int(max_pixels) < 1:
        raise ValueError('top_k and max_pixels must be positive, got %r, %r' % (top_k, max_pixels))
    return {
        'inputs': [{'data_name': input_name, 'data_shape': [0] + list(shape)}],
        'input_name': input_name,
        'data_shape': [0] + list(shape),
        'channels': channels,
        'color': 'gray' if channels == 1 else 'rgb',
        'mean': mean,
        'std': std,
        'scale': '1/255',
        'resize': int(resize) if resize else None,
        'top_k': int(top_k),
        'max_pixels': int(max_pixels),
        'apply_softmax': bool(apply_softmax),
        'symbol': symbol,
        'params': params,
        'op_library': op_library,
    }
