"""The training flags: one definition for train_scripts/train_imagenet.py, train_fashion_mnist.py
and ``python -m gluon_lcnn compress`` (which fine-tunes with the same loop).

``add_training_arguments(parser)`` adds every flag with its ImageNet default,
``check_training_args(parser, args)`` validates and normalises the parsed values (usage errors
through ``parser.error``). ``FASHION_MNIST_DEFAULTS`` and ``small_input_args`` are the
Fashion-MNIST defaults: 10 classes of 1x28x28, and the constructor options that fit each zoo
family to that input.
"""

__all__ = ['add_training_arguments', 'check_training_args', 'FASHION_MNIST_DEFAULTS',
           'SMALL_INPUT_ARGS', 'small_input_args']

FASHION_MNIST_DEFAULTS = dict(dataset='fashion-mnist', data_shape='1,28,28', num_classes=10,
                              model='lenet_lcnn_accurate', batch_size=128, num_epochs=10,
                              lr=0.05, warmup_epochs=1.0, lr_mode='cosine', augment='none',
                              wd=1e-4, save_dir='checkpoints/fashion-mnist')

# Constructor options that fit each zoo family to 1x28x28 inputs.
SMALL_INPUT_ARGS = {
    'lenet': ['in_channels=1'],
    'alexnet': ['thumbnail=True', 'input_size=28', 'in_channels=1'],
    'resnet': ['thumbnail=True', 'in_channels=1'],
    'vgg': ['thumbnail=True', 'input_size=28', 'in_channels=1'],
    'jacintonet': ['thumbnail=True', 'in_channels=1'],
}


def small_input_args(model):
    """--model-arg values for a zoo model name at 1x28x28 (family = the name's first part)."""
    for family, args in SMALL_INPUT_ARGS.items():
        if model.lower().startswith(family):
            return list(args)
    return []


def add_training_arguments(p, model=True):
    """Every training flag, with the ImageNet defaults; ``model=False`` leaves out --model and
    --model-arg (for commands that define their own)."""
    if model:
        p.add_argument('--model', default='alexnet_lcnn_fast',
                       help='name from gluon_lcnn.list_models()')
        p.add_argument('--model-arg', action='append', default=[], metavar='KEY=VALUE',
                       help='extra constructor argument, e.g. thumbnail=True (repeatable)')
    p.add_argument('--dataset', default='rec', choices=['rec', 'fashion-mnist'])
    p.add_argument('--rec-train', help='training .rec file')
    p.add_argument('--rec-train-idx', help='its .idx file')
    p.add_argument('--rec-val', help='validation .rec file')
    p.add_argument('--rec-val-idx', help='its .idx file')
    p.add_argument('--data-root', default=None, help='Fashion-MNIST folder (idx .gz files)')
    p.add_argument('--train-limit', type=int, default=0,
                   help='Fashion-MNIST: train on the first N images only (0: all)')
    p.add_argument('--holdout', type=int, default=0,
                   help='Fashion-MNIST: keep the last N training images out of training and '
                        'report accuracy on them instead of the test set (for choosing '
                        'hyper-parameters)')
    p.add_argument('--per-class', type=int, default=0,
                   help='Fashion-MNIST: train on N images per class only (few-shot), drawn '
                        'with --subset-seed')
    p.add_argument('--subset-seed', type=int, default=0, help='draw of --per-class')
    p.add_argument('--epoch-repeats', type=int, default=1,
                   help='Fashion-MNIST: passes over the training images per epoch (few-shot)')
    p.add_argument('--augment', default='imagenet', choices=['imagenet', 'crop', 'none'],
                   help='training augmentation (Fashion-MNIST: anything but none = mirror)')
    p.add_argument('--val-resize', type=int, default=0,
                   help='RecordIO validation: shorter side before the centre crop (0: as packed)')
    p.add_argument('--data-shape', default='3,224,224', help='channels,height,width')
    p.add_argument('--num-classes', type=int, default=1000)
    p.add_argument('--batch-size', type=int, default=64, help='per worker')
    p.add_argument('--num-epochs', type=int, default=90)
    p.add_argument('--lr', type=float, default=0.025,
                   help='learning rate for one worker; multiplied by the number of workers')
    p.add_argument('--warmup-epochs', type=float, default=5.0,
                   help='linear warm-up from ~0 to the scaled learning rate')
    p.add_argument('--lr-mode', default='cosine', choices=['step', 'cosine', 'poly'])
    p.add_argument('--lr-decay', type=float, default=0.1, help='factor per step (step mode)')
    p.add_argument('--lr-decay-epochs', default='30,60,80', help='epochs of the steps')
    p.add_argument('--lr-power', type=float, default=2.0, help='exponent (poly mode)')
    p.add_argument('--optimizer', default='nag', choices=['sgd', 'nag'])
    p.add_argument('--momentum', type=float, default=0.9)
    p.add_argument('--wd', type=float, default=1e-4, help='weight decay')
    p.add_argument('--l1-lambda', type=float, default=None,
                   help='L1 pull on lookup entries (default: the model preset)')
    p.add_argument('--initial-sparsity', type=float, default=None,
                   help='lookup threshold = s / sqrt(kh*kw*d) (default: the model preset)')
    p.add_argument('--grad-accumulation', type=int, default=1,
                   help='micro-batches summed per optimizer step')
    p.add_argument('--dtype', default='float32', choices=['float32', 'float16'],
                   help='float16 needs a GPU')
    p.add_argument('--fp16-allreduce', action='store_true',
                   help="compress gradients to float16 for the allreduce (Horovod's fp16 "
                        "compression)")
    p.add_argument('--lookup-form', default='auto', choices=['auto', 'factored', 'composed'],
                   help='how lookup layers compute in training (auto: cheaper by MAC count)')
    p.add_argument('--data-nthreads', type=int, default=4, help='decoding threads per worker')
    p.add_argument('--save-dir', default='checkpoints')
    p.add_argument('--keep-checkpoints', type=int, default=2)
    p.add_argument('--resume', action='store_true',
                   help='continue from the last checkpoint in --save-dir')
    p.add_argument('--test-only', action='store_true', help='evaluate --params and exit')
    p.add_argument('--params', default=None, help='parameters for --test-only / --benchmark')
    p.add_argument('--benchmark', action='store_true',
                   help='print the per-layer MAC table (gluon_lcnn.flops) and exit')
    p.add_argument('--synthetic', action='store_true', help='random data, for throughput')
    p.add_argument('--synthetic-batches', type=int, default=20, help='per epoch')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--no-hybridize', action='store_true')
    p.add_argument('--no-horovod', action='store_true', help='one process, even if installed')
    p.add_argument('--no-progress', action='store_true', help='no tqdm bar')
    p.add_argument('--debug-digest', action='store_true',
                   help='every rank writes a SHA-256 of its final parameters to --save-dir')
    return p


def check_training_args(p, args):
    """Validate and normalise parsed training flags in place (``p.error`` on bad values)."""
    args.data_shape = tuple(int(v) for v in args.data_shape.split(','))
    if len(args.data_shape) != 3:
        p.error('--data-shape must be channels,height,width, got %r' % (args.data_shape,))
    if args.grad_accumulation < 1:
        p.error('--grad-accumulation must be >= 1')
    if args.test_only and not args.params:
        p.error('--test-only needs --params FILE')
    for flag in ('holdout', 'per_class', 'train_limit'):
        if getattr(args, flag, 0) < 0:
            p.error('--%s must be >= 0, got %d' % (flag.replace('_', '-'), getattr(args, flag)))
    if getattr(args, 'epoch_repeats', 1) < 1:
        p.error('--epoch-repeats must be >= 1, got %d' % args.epoch_repeats)
    if args.keep_checkpoints < 1:
        # 0 would delete the checkpoint just written (and a negative count, all of them).
        p.error('--keep-checkpoints must be >= 1 (2 or more keep an earlier epoch to fall '
                'back to if the newest is corrupt), got %d' % args.keep_checkpoints)
    args.lr_decay_epochs = [float(e) for e in args.lr_decay_epochs.split(',') if e.strip()]
    return args
