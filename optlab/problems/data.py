"""Problems with data: the tutorial's line fit, linear and logistic regression, a small MLP."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..hparams import Hyper
from .base import MEASURED, Budget, Problem, Target, distance


class SeedLinear(Problem):
    r"""The tutorial's problem: fit :math:`y = a x + b` to (0, 1), (1, 2), (2, 3).

    Loss :math:`\tfrac12 \sum (a x + b - y)^2`, full batch; the minimum is a = b = 1.
    Metrics: ``a``, ``b``, ``excess`` = max(|a - 1|, |b - 1|) (the tutorial stops once it is
    <= 0.1: its a approaches 1 from below, its b from above) and ``distance_to_optimum``.
    """

    registry_name = "seed_linear"
    budget = Budget(epochs=100)
    target = Target("excess", "<=", 0.1, measured="the tutorial's own stopping rule: a and b within 0.1 of 1")
    metric_directions: ClassVar[dict[str, str]] = {"excess": "min", "distance_to_optimum": "min"}
    a = Hyper(2.0, doc="initial slope")
    b = Hyper(2.0, doc="initial intercept")
    x = np.array([0.0, 1.0, 2.0])
    y = np.array([1.0, 2.0, 3.0])

    def shapes(self):
        return [(), ()]

    def parameter_names(self):
        return ["a", "b"]

    def initial_values(self, rng):
        return [np.array(self.a), np.array(self.b)]

    def loss_and_grad(self, params, grads, batch=None, rng=None):
        a, b = float(params[0]), float(params[1])
        r = a * self.x + b - self.y
        grads[0][...] = np.sum(self.x * r)
        grads[1][...] = np.sum(r)
        return 0.5 * float(np.sum(r * r))

    def optimum(self):
        return [np.array(1.0), np.array(1.0)]

    def evaluate(self, params):
        a, b = float(params[0]), float(params[1])
        return {
            "a": a,
            "b": b,
            "excess": max(abs(a - 1.0), abs(b - 1.0)),
            "distance_to_optimum": distance(params, self.optimum()),
        }


class _Supervised(Problem):
    metric_directions: ClassVar[dict[str, str]] = {"loss": "min", "accuracy": "max", "distance_to_optimum": "min"}
    """Data split into training and validation sets by a seeded permutation."""

    validation_split = Hyper(0.2, low=0.0, high=1.0, high_open=True, doc="fraction held out for validation")
    data_seed = Hyper(0, kind=int, low=0, doc="seed of the data set and its split")

    def check(self):
        x, y = self.load_data(np.random.default_rng(self.data_seed))
        order = np.random.default_rng(self.data_seed + 1).permutation(len(x))
        n_val = round(self.validation_split * len(x))
        val, train = order[:n_val], order[n_val:]
        self.x_train, self.y_train = x[train], y[train]
        self.x_val, self.y_val = x[val], y[val]

    def load_data(self, rng) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    @property
    def num_examples(self):
        return len(self.x_train)

    def _batch(self, batch):
        if batch is None:
            return self.x_train, self.y_train
        return self.x_train[batch], self.y_train[batch]


class LinearRegression(_Supervised):
    r"""Least squares on synthetic data :math:`y = X w^* + b^* + \sigma \varepsilon`.

    Loss :math:`\tfrac{1}{2n} \sum (x^T w + b - y)^2` over a minibatch. ``distance_to_optimum``
    is to the least-squares solution on the training set (not to :math:`w^*`).
    """

    registry_name = "linear_regression"
    target = Target("val_loss", "<=", 0.005, measured=MEASURED.format(opt="SGD", lr=0.03, name="linear_regression"))
    n_samples = Hyper(1000, kind=int, low=2, doc="examples in the data set")
    n_features = Hyper(10, kind=int, low=1, doc="input dimension")
    noise = Hyper(0.1, low=0.0, doc="standard deviation of the label noise")

    def load_data(self, rng):
        x = rng.standard_normal((self.n_samples, self.n_features))
        self.true_w = rng.standard_normal(self.n_features)
        self.true_b = float(rng.standard_normal())
        y = x @ self.true_w + self.true_b + self.noise * rng.standard_normal(self.n_samples)
        return x, y

    def check(self):
        super().check()
        design = np.hstack([self.x_train, np.ones((len(self.x_train), 1))])
        solution, *_ = np.linalg.lstsq(design, self.y_train, rcond=None)
        self._optimum = [solution[:-1], np.array(solution[-1])]

    def shapes(self):
        return [(self.n_features,), ()]

    def parameter_names(self):
        return ["dense/kernel", "dense/bias"]

    def initial_values(self, rng):
        return [np.zeros(self.n_features), np.array(0.0)]

    def _loss_grad(self, w, b, x, y):
        r = x @ w + b - y
        n = len(y)
        return 0.5 * float(r @ r) / n, (x.T @ r) / n, float(r.sum()) / n

    def loss_and_grad(self, params, grads, batch=None, rng=None):
        x, y = self._batch(batch)
        loss, gw, gb = self._loss_grad(params[0].astype(np.float64), float(params[1]), x, y)
        grads[0][...] = gw
        grads[1][...] = gb
        return loss

    def optimum(self):
        return self._optimum

    def evaluate(self, params):
        w, b = params[0].astype(np.float64), float(params[1])
        out = {"distance_to_optimum": distance(params, self._optimum)}
        if len(self.y_val):
            out["val_loss"] = self._loss_grad(w, b, self.x_val, self.y_val)[0]
        return out


def _digits():
    from sklearn.datasets import load_digits  # ships inside scikit-learn: no download

    data = load_digits()
    return data.data / 16.0, data.target.astype(np.int64)


def _tabular(name: str) -> tuple[np.ndarray, np.ndarray]:
    """One of scikit-learn's bundled data sets (no download): features (float64) and labels (0..K-1)."""
    if name == "digits":
        return _digits()
    from sklearn import datasets

    data = getattr(datasets, f"load_{name}")()
    return data.data.astype(np.float64), data.target.astype(np.int64)


def _softmax_xent(logits, labels):
    """Mean cross-entropy and its gradient with respect to the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probs = exp / exp.sum(axis=1, keepdims=True)
    n = len(labels)
    loss = -float(np.mean(np.log(probs[np.arange(n), labels] + 1e-300)))
    probs[np.arange(n), labels] -= 1.0
    return loss, probs / n


class _Linear(_Supervised):
    """A linear classifier on one of scikit-learn's bundled data sets, with an L2 penalty.

    Features are standardised with the training split's mean and standard deviation (the
    digits' pixels are scaled to [0, 1] instead, as they are). Weights start at 0.
    """

    metric_directions: ClassVar[dict[str, str]] = {"loss": "min", "accuracy": "max"}
    l2 = Hyper(0.0, low=0.0, doc="L2 penalty on the weights, (l2 / 2) ||W||^2")
    budget = Budget(epochs=30, batch_size=32)
    #: the data sets the problem takes
    datasets: tuple[str, ...] = ()

    def load_data(self, rng):
        return _tabular(self.dataset)

    def check(self):
        super().check()
        if self.dataset != "digits":
            mean, std = self.x_train.mean(axis=0), self.x_train.std(axis=0)
            std[std == 0] = 1.0
            self.x_train = (self.x_train - mean) / std
            self.x_val = (self.x_val - mean) / std
        self.n_features = self.x_train.shape[1]

    def parameter_names(self):
        return ["dense/kernel", "dense/bias"]

    def initial_values(self, rng):
        return [np.zeros(shape) for shape in self.shapes()]

    def _forward(self, params, x, y):
        """Loss, the weights' and the bias's gradients on (x, y), in float64."""
        raise NotImplementedError

    def _predict(self, params, x):
        raise NotImplementedError

    def loss_and_grad(self, params, grads, batch=None, rng=None):
        x, y = self._batch(batch)
        loss, gw, gb = self._forward(params, x, y)
        grads[0][...] = gw
        grads[1][...] = gb
        return loss

    def evaluate(self, params):
        out = {"accuracy": float(np.mean(self._predict(params, self.x_train) == self.y_train))}
        if len(self.y_val):
            out["val_loss"] = self._forward(params, self.x_val, self.y_val)[0]
            out["val_accuracy"] = float(np.mean(self._predict(params, self.x_val) == self.y_val))
        return out


class LogisticRegression(_Linear):
    r"""Binary logistic regression on scikit-learn's Wisconsin breast cancer data (569 tumours,
    30 features, malignant or benign).

    :math:`p = \sigma(x^T w + b)`; the loss is the mean binary cross-entropy
    :math:`-\tfrac1n \sum y \log p + (1 - y) \log(1 - p)` plus :math:`\tfrac{\lambda}{2}\|w\|^2`
    with ``l2``. Convex; with ``l2`` > 0 strongly convex. Metrics: ``accuracy`` (training set),
    ``val_loss``, ``val_accuracy``.
    """

    registry_name = "logistic_regression"
    target = Target(
        "val_accuracy", ">=", 0.95, measured=MEASURED.format(opt="Adam", lr=0.003, name="logistic_regression")
    )
    dataset = Hyper("breast_cancer", kind=str, choices=("breast_cancer",), doc="the data set (two classes)")

    def shapes(self):
        return [(self.n_features,), ()]

    def _forward(self, params, x, y):
        w, b = params[0].astype(np.float64), float(params[1])
        z = x @ w + b
        # log(1 + e^z) - y z, computed without overflow for large |z|
        loss = float(np.mean(np.logaddexp(0.0, z) - y * z)) + 0.5 * self.l2 * float(w @ w)
        residual = (0.5 * (1.0 + np.tanh(0.5 * z)) - y) / len(y)  # sigmoid(z) - y, stable
        return loss, x.T @ residual + self.l2 * w, float(residual.sum())

    def _predict(self, params, x):
        return (x @ params[0].astype(np.float64) + float(params[1]) > 0).astype(np.int64)


class SoftmaxRegression(_Linear):
    r"""Multinomial logistic (softmax) regression on one of scikit-learn's bundled data sets:
    ``digits`` (1,797 8x8 images, 10 classes, pixels scaled to [0, 1]), ``wine`` (178 wines, 13
    features, 3 cultivars) or ``breast_cancer`` (569 tumours, 30 features, 2 classes).

    The loss is the mean softmax cross-entropy plus :math:`\tfrac{\lambda}{2}\|W\|^2` with
    ``l2``; convex. Metrics: ``accuracy`` (training set), ``val_loss``, ``val_accuracy``.
    """

    registry_name = "softmax_regression"
    target = Target("val_accuracy", ">=", 0.97, measured=MEASURED.format(opt="Adam", lr=0.1, name="softmax_regression"))
    dataset = Hyper("digits", kind=str, choices=("digits", "wine", "breast_cancer"), doc="the data set")

    def check(self):
        super().check()
        self.n_classes = int(max(self.y_train.max(), self.y_val.max(initial=0))) + 1

    def shapes(self):
        return [(self.n_features, self.n_classes), (self.n_classes,)]

    def _forward(self, params, x, y):
        w, b = params[0].astype(np.float64), params[1].astype(np.float64)
        loss, dlogits = _softmax_xent(x @ w + b, y)
        loss += 0.5 * self.l2 * float(np.sum(w * w))
        return loss, x.T @ dlogits + self.l2 * w, dlogits.sum(axis=0)

    def _predict(self, params, x):
        return np.argmax(x @ params[0].astype(np.float64) + params[1].astype(np.float64), axis=1)


def glorot_uniform(rng, shape, fan_in: int, fan_out: int) -> np.ndarray:
    r"""Keras's default kernel initializer: uniform in :math:`\pm\sqrt{6 / (fan_{in} + fan_{out})}`."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape)


class DenseStack:
    """The parameters of dense layers of sizes ``self._sizes`` (inputs first), named as Keras's
    ``dense``, ``dense_1``, ...: kernels Glorot-uniform from the seeded generator, biases 0."""

    _sizes: list[int]

    def shapes(self):
        out = []
        for fan_in, fan_out in zip(self._sizes[:-1], self._sizes[1:]):
            out += [(fan_in, fan_out), (fan_out,)]
        return out

    def parameter_names(self):
        layers = [f"dense_{i}" if i else "dense" for i in range(len(self._sizes) - 1)]
        return [f"{layer}/{part}" for layer in layers for part in ("kernel", "bias")]

    def initial_values(self, rng):
        values = []
        for fan_in, fan_out in zip(self._sizes[:-1], self._sizes[1:]):
            values += [glorot_uniform(rng, (fan_in, fan_out), fan_in, fan_out), np.zeros(fan_out)]
        return values


class MLPDigits(DenseStack, _Supervised):
    r"""A multilayer perceptron on scikit-learn's handwritten digits.

    64 inputs, ``hidden`` layers (tanh or relu), 10 softmax outputs, mean cross-entropy.
    Weights start Glorot-uniform (seeded), biases at 0. Metrics as ``softmax_regression``.
    """

    registry_name = "mlp_digits"
    target = Target("val_accuracy", ">=", 0.96, measured=MEASURED.format(opt="Adam", lr=0.01, name="mlp_digits"))
    hidden = Hyper([64], kind=list, item=Hyper(kind=int, low=1), doc="sizes of the hidden layers")
    activation = Hyper("tanh", kind=str, choices=("tanh", "relu"), doc="hidden activation")

    def check(self):
        super().check()
        if not self.hidden:
            raise ValueError("MLPDigits: `hidden` must list at least one hidden layer; received hidden=[]")
        self._sizes = [64, *self.hidden, 10]

    def load_data(self, rng):
        return _digits()

    def _act(self, z):
        return np.tanh(z) if self.activation == "tanh" else np.maximum(z, 0.0)

    def _act_grad(self, z, a):
        return 1.0 - a * a if self.activation == "tanh" else (z > 0).astype(z.dtype)

    def _forward(self, params, x):
        layers = [
            (params[2 * k].astype(np.float64), params[2 * k + 1].astype(np.float64)) for k in range(len(params) // 2)
        ]
        zs, acts = [], [x]
        for k, (w, b) in enumerate(layers):
            z = acts[-1] @ w + b
            zs.append(z)
            acts.append(z if k == len(layers) - 1 else self._act(z))
        return layers, zs, acts

    def loss_and_grad(self, params, grads, batch=None, rng=None):
        x, y = self._batch(batch)
        layers, zs, acts = self._forward(params, x)
        loss, delta = _softmax_xent(acts[-1], y)
        for k in range(len(layers) - 1, -1, -1):
            grads[2 * k][...] = acts[k].T @ delta
            grads[2 * k + 1][...] = delta.sum(axis=0)
            if k:
                delta = (delta @ layers[k][0].T) * self._act_grad(zs[k - 1], acts[k])
        return loss

    def _loss_accuracy(self, params, x, y):
        logits = self._forward(params, x)[2][-1]
        return _softmax_xent(logits, y)[0], float(np.mean(np.argmax(logits, axis=1) == y))

    def evaluate(self, params):
        out = {"accuracy": self._loss_accuracy(params, self.x_train, self.y_train)[1]}
        if len(self.y_val):
            out["val_loss"], out["val_accuracy"] = self._loss_accuracy(params, self.x_val, self.y_val)
        return out
