"""Evaluation with metrics summed over workers."""
import mxnet as mx

from .horovod import allreduce_sums


def topk_correct(output, label, num_valid, k):
    """Number of the first ``num_valid`` rows whose label is among the top ``k`` outputs (NDArray)."""
    output = output[:num_valid]
    label = label[:num_valid].astype('float32')
    if k == 1:
        return (output.argmax(axis=1) == label).sum()
    top = mx.nd.topk(output, axis=1, k=k, ret_typ='indices').astype('float32')
    return (top == label.reshape((-1, 1))).sum()


def evaluate(net, batches, ctx, hvd, loss_fn=None, dtype='float32', name='val'):
    """Top-1, top-5 and mean loss of ``net`` over every worker's share of ``batches``.

    Counts are summed over workers before dividing, so the result is the accuracy on the whole
    set, identical on every worker and independent of how the set was split.

    Returns
    -------
    dict
        top1, top5, loss, count.
    """
    loss_fn = loss_fn or mx.gluon.loss.SoftmaxCrossEntropyLoss()
    zero = lambda: mx.nd.zeros((1,), ctx=ctx, dtype='float64')  # noqa: E731
    correct1, correct5, loss_sum = zero(), zero(), zero()
    count, k = 0, None
    for data, label, num_valid in batches:
        data = data.as_in_context(ctx).astype(dtype, copy=False)
        label = label.as_in_context(ctx)
        output = net(data).astype('float32', copy=False)
        k = k or min(5, output.shape[1])
        correct1 += topk_correct(output, label, num_valid, 1).astype('float64')
        correct5 += topk_correct(output, label, num_valid, k).astype('float64')
        loss_sum += loss_fn(output[:num_valid], label[:num_valid]).sum().astype('float64')
        count += num_valid
    sums = allreduce_sums(hvd, dict(correct1=correct1.asscalar(), correct5=correct5.asscalar(),
                                    loss=loss_sum.asscalar(), count=count), name=name)
    n = max(sums['count'], 1.0)
    return dict(top1=sums['correct1'] / n, top5=sums['correct5'] / n, loss=sums['loss'] / n,
                count=int(sums['count']))
