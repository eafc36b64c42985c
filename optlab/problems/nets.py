"""Small neural networks on the 8x8 digits: a convolutional classifier and a dense autoencoder."""

from __future__ import annotations

import math
from itertools import pairwise
from typing import ClassVar

import numpy as np

from ..hparams import Hyper
from ..kernels import kernel
from .base import MEASURED, Budget, Target
from .data import DenseStack, _Supervised, _tabular, glorot_uniform


def _cnn_work_size(n_filters, n_cls):
    """Length of ``_cnn_batch``'s float64 scratch: zmap, feat, dfeat, logits, wt and the four accumulators."""
    n_feat = 16 * n_filters
    return 64 * n_filters + 2 * n_feat + n_cls + n_cls * n_feat + 9 * n_filters + n_filters + n_cls * n_feat + n_cls


# serial: the batches are small, and the machines' 2 cores are better spent on 2 runs at once
@kernel(parallel=False, fastmath={"reassoc", "contract"})
def _cnn_batch(xpad, labels, index, kern, cbias, w, b, g_kern, g_cbias, g_w, g_b, work, arg, backward):
    """Conv 3x3 ('same') -> ReLU -> 2x2 max pool -> dense -> softmax cross-entropy over ``index``.

    ``xpad`` holds the images zero-padded to 10x10. Returns (sum of the losses, correct
    predictions); with ``backward`` writes the gradient of the mean loss into ``g_*``.
    One example at a time, in float64: the scratch (``work``, ``arg``) is a few rows, whatever
    the batch size.
    """
    n_filters = cbias.shape[0]
    n_feat = 16 * n_filters
    n_cls = b.shape[0]
    n_images = xpad.shape[0]
    # no bounds checks in compiled code: a wrong shape would read or write past an array
    if (
        kern.shape != (3, 3, 1, n_filters)
        or w.shape != (n_feat, n_cls)
        or g_kern.shape != kern.shape
        or g_cbias.shape != cbias.shape
        or g_w.shape != w.shape
        or g_b.shape != b.shape
        or arg.shape[0] < n_feat
    ):
        raise ValueError("CNNDigits: parameters or gradients of the wrong shapes for the problem's `filters`")
    # work: zmap | feat | dfeat | logits | wt | acc_kern | acc_cbias | acc_wt | acc_b
    zmap = work[0 : 64 * n_filters].reshape((8, 8, n_filters))
    o = 64 * n_filters
    feat = work[o : o + n_feat]
    o += n_feat
    dfeat = work[o : o + n_feat]
    o += n_feat
    logits = work[o : o + n_cls]
    o += n_cls
    wt = work[o : o + n_cls * n_feat].reshape((n_cls, n_feat))
    o += n_cls * n_feat
    acc_kern = work[o : o + 9 * n_filters].reshape((3, 3, n_filters))
    o += 9 * n_filters
    acc_cbias = work[o : o + n_filters]
    o += n_filters
    acc_wt = work[o : o + n_cls * n_feat].reshape((n_cls, n_feat))
    o += n_cls * n_feat
    acc_b = work[o : o + n_cls]
    if o + n_cls > work.shape[0]:
        raise ValueError("CNNDigits: the scratch buffer is too short")
    # the dense kernel transposed: each logit and each row of its gradient is then a contiguous
    # loop over the features (SIMD), not a loop over 10 classes
    for d in range(n_feat):
        for k in range(n_cls):
            wt[k, d] = w[d, k]
    if backward:
        acc_kern[...] = 0.0
        acc_cbias[...] = 0.0
        acc_wt[...] = 0.0
        acc_b[...] = 0.0
    total = 0.0
    correct = 0
    for t in range(index.shape[0]):
        e = index[t]
        if e < 0 or e >= n_images:
            raise IndexError("CNNDigits: a batch index is out of range of the training set")
        # forward: the whole 8x8 map, one tap at a time (the filters are the inner, SIMD loop)
        for i in range(8):
            for j in range(8):
                for f in range(n_filters):
                    zmap[i, j, f] = cbias[f]
        for a in range(3):
            for c in range(3):
                for i in range(8):
                    for j in range(8):
                        v = xpad[e, i + a, j + c]
                        if v != 0.0:  # about half the pixels of a digit are blank
                            for f in range(n_filters):
                                zmap[i, j, f] += v * kern[a, c, 0, f]
        # each pooled cell is the max of relu(z) over its 2x2 window = relu(max z); ties keep
        # the first position in row-major order
        for pi in range(4):
            for pj in range(4):
                cell = (pi * 4 + pj) * n_filters
                for f in range(n_filters):
                    top = zmap[2 * pi, 2 * pj, f]
                    q = 0
                    for r in range(1, 4):
                        v = zmap[2 * pi + r // 2, 2 * pj + r % 2, f]
                        if v > top:
                            top = v
                            q = r
                    if top > 0.0:
                        feat[cell + f] = top
                        arg[cell + f] = q
                    else:
                        feat[cell + f] = 0.0
                        arg[cell + f] = -1  # relu'(z) = 0 for z <= 0, as in Keras
        for k in range(n_cls):
            acc = b[k]
            for d in range(n_feat):
                acc += feat[d] * wt[k, d]
            logits[k] = acc
        best = 0
        for k in range(1, n_cls):
            if logits[k] > logits[best]:
                best = k
        y = labels[e]
        correct += best == y
        m = logits[best]
        label_logit = logits[y]
        s = 0.0
        for k in range(n_cls):
            logits[k] = math.exp(logits[k] - m)
            s += logits[k]
        total += math.log(s) + m - label_logit  # log-sum-exp minus the label's logit
        if not backward:
            continue
        # backward: dlogits = softmax - onehot (the 1/n comes at the end)
        for k in range(n_cls):
            logits[k] /= s
        logits[y] -= 1.0
        dfeat[:] = 0.0
        for k in range(n_cls):
            g = logits[k]
            acc_b[k] += g
            for d in range(n_feat):
                acc_wt[k, d] += g * feat[d]
                dfeat[d] += g * wt[k, d]
        for pi in range(4):
            for pj in range(4):
                cell = (pi * 4 + pj) * n_filters
                for f in range(n_filters):
                    q = arg[cell + f]
                    if q < 0:
                        continue  # the pooled value is relu's 0: no gradient
                    g = dfeat[cell + f]
                    i = 2 * pi + q // 2
                    j = 2 * pj + q % 2
                    acc_cbias[f] += g
                    for a in range(3):
                        for c in range(3):
                            acc_kern[a, c, f] += g * xpad[e, i + a, j + c]
    if backward:
        scale = 1.0 / index.shape[0]
        for a in range(3):
            for c in range(3):
                for f in range(n_filters):
                    g_kern[a, c, 0, f] = acc_kern[a, c, f] * scale
        for f in range(n_filters):
            g_cbias[f] = acc_cbias[f] * scale
        for d in range(n_feat):
            for k in range(n_cls):
                g_w[d, k] = acc_wt[k, d] * scale
        for k in range(n_cls):
            g_b[k] = acc_b[k] * scale
    return total, correct


class CNNDigits(_Supervised):
    r"""A small convolutional network on scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes).

    Each image, pixels scaled to [0, 1], is one 8x8 channel. A 3x3 convolution with ``filters``
    channels and 'same' zero padding (the map stays 8x8, so edge strokes count as much as
    central ones, and 2x2 pooling tiles it exactly), ReLU, 2x2 max pooling to 4x4, flattened in
    Keras's channels-last order, and a dense layer to 10 logits:
    :math:`z = W \operatorname{flatten}(\operatorname{maxpool}(\operatorname{relu}(K * x + c))) + b`.
    Loss: softmax cross-entropy averaged over the batch,
    :math:`\tfrac1n \sum_i \bigl(\log \sum_k e^{z_{ik}} - z_{i y_i}\bigr)`. A pooling window's
    gradient goes to its first maximum (row-major) and none to a pooled zero (relu' = 0 at 0).
    Parameters as Keras names them: ``conv2d/kernel`` (3, 3, 1, filters), ``conv2d/bias``,
    ``dense/kernel`` (16 ``filters``, 10), ``dense/bias``; kernels start Glorot-uniform (seeded,
    Keras's fans), biases at 0. 80/20 train/validation split. Metrics: ``accuracy`` (training
    set), ``val_loss``, ``val_accuracy``. Forward and backward run in one numba kernel, one example
    at a time, computed in float64.
    """

    registry_name = "cnn_digits"
    target: ClassVar[Target | None] = Target(
        "val_accuracy", ">=", 0.98, measured=MEASURED.format(opt="Adam", lr=0.03, name="cnn_digits")
    )
    budget: ClassVar[Budget] = Budget(epochs=30, batch_size=32)
    # about 0.45 s a run on a quiet core, but up to 1 s with the other core busy: not reliably tiny
    size_class: ClassVar[str] = "small"
    filters = Hyper(16, kind=int, low=1, doc="channels of the 3x3 convolution")

    def load_data(self, rng):
        return _tabular("digits")

    def check(self):
        super().check()
        # zero-padded once: the kernel reads every 3x3 patch without a bounds test
        self._xpad_train = np.pad(self.x_train.reshape(-1, 8, 8), ((0, 0), (1, 1), (1, 1)))
        self._xpad_val = np.pad(self.x_val.reshape(-1, 8, 8), ((0, 0), (1, 1), (1, 1)))
        self._all_train = np.arange(len(self.x_train))
        self._all_val = np.arange(len(self.x_val))
        self._work = np.empty(0)

    def shapes(self):
        f = self.filters
        return [(3, 3, 1, f), (f,), (16 * f, 10), (10,)]

    def parameter_names(self):
        return ["conv2d/kernel", "conv2d/bias", "dense/kernel", "dense/bias"]

    def initial_values(self, rng):
        f = self.filters
        # Keras's fans for a conv kernel: receptive field (9) times the input / output channels
        return [
            glorot_uniform(rng, (3, 3, 1, f), 9, 9 * f),
            np.zeros(f),
            glorot_uniform(rng, (16 * f, 10), 16 * f, 10),
            np.zeros(10),
        ]

    def _run(self, params, grads, x, y, index, backward):
        n_filters = params[1].shape[0]
        size = _cnn_work_size(n_filters, 10)
        if self._work.shape[0] != size:  # per example, not per batch: made once (again if `filters` changes)
            self._work = np.empty(size)
            self._arg = np.empty(16 * n_filters, np.int64)
        if grads is None:
            grads = params  # not written without backward
        return _cnn_batch(x, y, np.asarray(index), *params, *grads, self._work, self._arg, backward)

    def loss_and_grad(self, params, grads, batch=None, rng=None):
        index = self._all_train if batch is None else batch
        total, _ = self._run(params, grads, self._xpad_train, self.y_train, index, True)
        return total / len(index)

    def train_metrics(self, params):
        _, correct = self._run(params, None, self._xpad_train, self.y_train, self._all_train, False)
        return {"accuracy": correct / len(self._all_train)}

    def validation_metrics(self, params):
        total, correct = self._run(params, None, self._xpad_val, self.y_val, self._all_val, False)
        return {"val_loss": total / len(self._all_val), "val_accuracy": correct / len(self._all_val)}


class AutoencoderDigits(DenseStack, _Supervised):
    r"""A dense autoencoder on scikit-learn's 8x8 handwritten digits (1,797 images, 64 pixels in [0, 1]).

    64 inputs, ``hidden`` layers (default 32-8-32: an 8-unit code), ``activation`` (tanh or
    relu) on every hidden layer, and 64 sigmoid outputs :math:`\hat x = \sigma(W h + b)`, in
    the pixels' range. Loss: the mean squared reconstruction error over the batch and the
    pixels, as Keras's ``mean_squared_error``:
    :math:`\tfrac{1}{64 n} \sum_i \lVert \hat x_i - x_i \rVert^2` (predicting the mean image
    scores about 0.074 on the validation images, the best rank-8 linear code, PCA, 0.024).
    Kernels ``dense/kernel`` ... ``dense_3/kernel`` start Glorot-uniform (seeded), biases at 0;
    the labels are not used. 80/20 train/validation split. Metric: ``val_loss``, the
    reconstruction error of the held-out images. Non-convex (a bottleneck and saturating units):
    plain SGD at its default rate sits on a plateau worse than the mean image.
    """

    registry_name = "autoencoder_digits"
    metric_directions: ClassVar[dict[str, str]] = {"loss": "min"}
    target: ClassVar[Target | None] = Target(
        "val_loss", "<=", 0.015, measured=MEASURED.format(opt="Adam", lr=0.01, name="autoencoder_digits")
    )
    budget: ClassVar[Budget] = Budget(epochs=100, batch_size=32)
    size_class: ClassVar[str] = "small"
    hidden = Hyper([32, 8, 32], kind=list, item=Hyper(kind=int, low=1), doc="sizes of the hidden layers")
    activation = Hyper("tanh", kind=str, choices=("tanh", "relu"), doc="activation of the hidden layers")

    def check(self):
        super().check()
        if not self.hidden:
            raise ValueError("AutoencoderDigits: `hidden` must list at least one hidden layer; received hidden=[]")
        self._all_train = np.arange(len(self.x_train))
        self._layout = None

    @property
    def _sizes(self):
        return [64, *self.hidden, 64]

    def load_data(self, rng):
        return _tabular("digits")

    def _scratch(self, n):
        """float64 buffers for a batch of ``n``: activations, deltas and a temporary per layer.
        Kept per batch size (an epoch's last batch is often shorter), so a step allocates nothing."""
        sizes = self._sizes
        if self._layout != sizes:  # made on first use, again if `hidden` is reassigned
            self._buffers, self._layout = {}, sizes
            self._weights = [np.empty((a, b)) for a, b in pairwise(sizes)]
            self._grad_w = [np.empty((a, b)) for a, b in pairwise(sizes)]
            self._grad_b = [np.empty(b) for b in sizes[1:]]
        buffers = self._buffers.get(n)
        if buffers is None:
            if len(self._buffers) >= 4:  # bounded: a caller cycling through batch sizes
                self._buffers.clear()
            buffers = self._buffers[n] = tuple([np.empty((n, size)) for size in sizes] for _ in range(3))
        return buffers

    def _forward(self, params, x, index):
        """Fill the activations of every layer for the rows ``index`` of ``x``; returns the loss."""
        acts, deltas, _ = self._scratch(len(index))
        # mode="raise" copies the batch once more (16 KB) but beats checking the indices ourselves
        np.take(x, index, axis=0, out=acts[0])
        last = len(self._weights) - 1
        for k, w in enumerate(self._weights):
            np.copyto(w, params[2 * k])  # computed in float64, whatever the parameters' dtype
            z = acts[k + 1]
            np.dot(acts[k], w, out=z)
            z += params[2 * k + 1]
            if k == last:  # sigmoid, as 0.5 (1 + tanh(z / 2)): no overflow for large |z|
                z *= 0.5
                np.tanh(z, out=z)
                z += 1.0
                z *= 0.5
            elif self.activation == "tanh":
                np.tanh(z, out=z)
            else:
                np.maximum(z, 0.0, out=z)
        residual = deltas[-1]
        np.subtract(acts[-1], acts[0], out=residual)
        return float(np.vdot(residual, residual)) / residual.size

    def loss_and_grad(self, params, grads, batch=None, rng=None):
        index = self._all_train if batch is None else batch
        loss = self._forward(params, self.x_train, index)
        acts, deltas, tmps = self._scratch(len(index))
        # the output's delta: dL/dxhat * sigmoid'(z) = 2 (xhat - x) / (64 n) * xhat (1 - xhat)
        delta, out, tmp = deltas[-1], acts[-1], tmps[-1]
        delta *= 2.0 / delta.size
        delta *= out
        np.subtract(1.0, out, out=tmp)
        delta *= tmp
        for k in range(len(self._weights) - 1, -1, -1):
            np.dot(acts[k].T, delta, out=self._grad_w[k])
            np.sum(delta, axis=0, out=self._grad_b[k])
            grads[2 * k][...] = self._grad_w[k]  # cast to the parameters' dtype
            grads[2 * k + 1][...] = self._grad_b[k]
            if k:
                below, a, tmp = deltas[k], acts[k], tmps[k]
                np.dot(delta, self._weights[k].T, out=below)
                if self.activation == "tanh":  # tanh' = 1 - a^2
                    np.multiply(a, a, out=tmp)
                    np.subtract(1.0, tmp, out=tmp)
                else:  # relu' = 1 where a > 0: sign(a), a >= 0
                    np.sign(a, out=tmp)
                below *= tmp
                delta = below
        return loss

    def validation_metrics(self, params):
        return {"val_loss": self._forward(params, self.x_val, np.arange(len(self.x_val)))}
