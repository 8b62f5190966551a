"""Horovod for the training scripts, or a one-process stand-in (``LocalHorovod``), and the
collective helpers they use: sums over workers, parameter broadcast, auxiliary-state averaging.
"""
import mxnet as mx


class LocalHorovod:
    """The part of ``horovod.mxnet`` the scripts use, for a single process without Horovod.

    ``allreduce`` returns a copy (the sum over one worker), ``broadcast_parameters`` does nothing
    and ``DistributedTrainer`` is a plain ``gluon.Trainer`` without a kvstore (``compression`` is
    accepted and has nothing to compress): with one worker these are exactly what Horovod
    computes.
    """
    Sum = 'sum'
    Average = 'average'

    class Compression:
        """Names of Horovod's gradient compressions; one worker sends nothing to compress."""
        none = None
        fp16 = 'fp16'

    def init(self):
        pass

    @staticmethod
    def size():
        return 1

    @staticmethod
    def rank():
        return 0

    @staticmethod
    def local_rank():
        return 0

    @staticmethod
    def allreduce(tensor, op=None, name=None):
        return tensor.copy()

    @staticmethod
    def broadcast_parameters(params, root_rank=0):
        pass

    @staticmethod
    def DistributedTrainer(params, optimizer, optimizer_params=None, compression=None):
        return mx.gluon.Trainer(params, optimizer, optimizer_params, kvstore=None)

    def __repr__(self):
        return 'LocalHorovod(size=1)'


def init_horovod(enabled=True):
    """``horovod.mxnet`` after ``hvd.init()``, or a ``LocalHorovod`` when it is not installed.

    Started with plain ``python`` (no horovodrun) Horovod itself runs as a world of size 1, so the
    stand-in is only needed where Horovod is missing, or when ``enabled`` is False.
    """
    if enabled:
        try:
            import horovod.mxnet as hvd
        except ImportError:
            hvd = None
        if hvd is not None:
            hvd.init()
            return hvd
    hvd = LocalHorovod()
    hvd.init()
    return hvd


def allreduce_sums(hvd, values, name):
    """Sum a dict of numbers over all workers (float64, one allreduce); returns a new dict."""
    keys = sorted(values)
    local = mx.nd.array([float(values[k]) for k in keys], dtype='float64')
    total = hvd.allreduce(local, op=hvd.Sum, name=name).asnumpy()
    return {k: float(v) for k, v in zip(keys, total)}


def broadcast_parameters(net, hvd, root_rank=0, tag='init'):
    """Give every worker rank ``root_rank``'s parameters (``hvd.broadcast_parameters``, but safe
    for MKLDNN).

    On CPU, an inference-mode forward pass (the one that settles deferred shapes, or an
    evaluation) leaves convolution weights in MKLDNN's blocked layout; Horovod's in-place
    broadcast of such an array fails ("can't generate TBlob for MKLDNN data"). Each parameter
    therefore travels as a plain copy and is written back with ``set_data``, which converts
    the layout. The training script also calls this at the end of every epoch: with MKLDNN
    weights and MXNet's threaded engine, replicas were seen to drift apart by rounding
    (~1e-8 relative, none under NaiveEngine), and a checkpoint must describe every worker.
    """
    if hvd.size() == 1:
        return
    for name, param in sorted(net.collect_params().items()):
        plain = mx.nd.array(param.data().asnumpy(), dtype=param.dtype)
        # Horovod keys collectives by name: the tag keeps each call's names unique.
        param.set_data(hvd.broadcast(plain, root_rank=root_rank,
                                     name='%s.param.%s' % (tag, name)))


def average_aux_states(net, hvd, tag=''):
    """Average the non-trained parameters (BatchNorm running statistics) over workers.

    Gradients are allreduced, so trained parameters agree everywhere, but each worker updates
    its running mean/var from its own batches; averaging them at the end of an epoch makes every
    worker evaluate, and rank 0 save, the same model.
    """
    if hvd.size() == 1:
        return
    for name, param in sorted(net.collect_params().items()):
        if param.grad_req == 'null':
            data = param.data()
            data[:] = hvd.allreduce(data, op=hvd.Average, name='%s.aux.%s' % (tag, name))
