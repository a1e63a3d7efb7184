"""Tasks: real data that ships in a package or is generated locally, a model, a loss, a metric,
a default budget and a target. Nothing is downloaded.

==========================  ==================================================================
``digits-cnn``/``-mlp``      scikit-learn's 8x8 handwritten digits (1 797 images)
``mnist1d-cnn/-mlp/-logreg`` MNIST-1D from the ``mnist1d`` package's generator (Greydanus 2020);
                             published accuracies ~94 % CNN, ~68 % MLP, ~32 % logistic regression
``breast-cancer-logreg``     L2-regularised logistic regression on scikit-learn's breast cancer
                             data (standardised, unpenalised intercept); convex, optimum by scipy
``char-lm``                  a character-level GRU on ``pydoc_data.topics`` from Python's standard
                             library; metric: bits per character on held-out text
``noisy-quadratic``          DeepOBS's noisy quadratic: 100-D, eigenvalues in [0, 1] and [30, 60]
``rosenbrock`` ...           2-D test functions with known minima (``beale``, ``rastrigin``,
                             ``himmelblau``, ``styblinski-tang``)
==========================  ==================================================================

Your own model and data make a task too (:meth:`Task.from_data`); every lab function takes
the :class:`Task` itself, or -- for the command line, and for worker processes started by
*spawn* (macOS, Windows) -- a ``"module:function"`` reference to a zero-argument function that
returns it, which each worker imports and calls by name (:func:`get_task`).

Example::

    >>> task = get_task("digits-cnn")
    >>> data = task.data(seed=0); model = task.model(seed=0)
    >>> mine = get_task("my_pkg.tasks:make_task")   # imports my_pkg.tasks, calls make_task()
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..train import accuracy, save_atomic

__all__ = ["Task", "Data", "TASKS", "get_task", "task_names", "task_key", "TEST_FUNCTIONS", "cache_dir"]


@dataclasses.dataclass
class Data:
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]


@dataclasses.dataclass(frozen=True)
class Task:
    """A benchmark problem. ``metric(output, target)`` is evaluated on the validation and test
    sets; ``target`` is the value of that metric a good run reaches within the default budget
    (``higher_is_better`` says which way)."""

    name: str
    description: str
    make_data: Callable[[int], Data]
    make_model: Callable[[], nn.Module]
    loss: Callable[[nn.Module], Callable[[Tensor, Tensor], Tensor]]
    metric: Callable[[Tensor, Tensor], float]
    metric_name: str
    higher_is_better: bool
    target: float
    epochs: int
    batch_size: int | None
    optimizer: str  # a sensible default optimizer (registry name) ...
    lr: float  # ... and its learning rate
    kind: str = "learning"  # "learning", "convex", "function"
    optimum: Callable[[Data], float] | None = None  # the known optimum of the training loss
    # the "module:function" that built this task (set by get_task): how workers find it again
    ref: str | None = dataclasses.field(default=None, compare=False)

    def data(self, seed: int = 0) -> Data:
        return self.make_data(seed)

    def model(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return self.make_model()

    def loss_fn(self, model: nn.Module):
        return self.loss(model)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "metric": self.metric_name,
                "higher_is_better": self.higher_is_better, "target": self.target, "epochs": self.epochs,
                "batch_size": self.batch_size, "default_optimizer": f"{self.optimizer}:lr={self.lr:g}",
                "kind": self.kind}

    @classmethod
    def from_data(cls, name: str, *, model: Callable[[], nn.Module], loss: Callable[[Tensor, Tensor], Tensor],
                  train, val=None, test=None, metric: Callable[[Tensor, Tensor], float] | str | None = None,
                  metric_name: str | None = None, higher_is_better: bool | None = None, target: float | None = None,
                  epochs: int = 10, batch_size: int | None | str = "loader", optimizer: str = "adam",
                  lr: float = 1e-3, description: str = "") -> "Task":
        """A task on your own model and data.

        * ``model``: the model's class or a zero-argument function that builds it (called once
          per run after ``torch.manual_seed(seed)``, so every seed has its own initialisation);
        * ``loss(output, target)``: e.g. ``torch.nn.functional.cross_entropy`` or
          ``nn.MSELoss()``;
        * ``train`` / ``val`` / ``test``: ``(inputs, targets)`` tensors, a ``DataLoader`` or a
          ``Dataset`` of ``(input, target)`` pairs. A loader or dataset is **read once into
          tensors** (so keep it to what fits in memory; random augmentation is drawn once); the
          lab then batches and shuffles it itself, per seed. Without ``val``, validation uses
          ``test`` (or, without either, the training data); without ``test``, ``val``;
        * ``metric(output, target) -> float``: ``"accuracy"``, a function, or ``None`` for the
          loss itself; ``higher_is_better`` defaults to True for accuracy, else False;
        * ``target``: the metric value that counts as "reached" for time-to-target (optional);
        * ``batch_size``: default the train loader's batch size (32 for tensors), ``None`` = full batch.

        To run on worker processes the task is pickled, so build it from functions defined at
        module level (not lambdas); better still, put ``def make_task(): return
        Task.from_data(...)`` in an importable module and pass ``"module:make_task"``.

        Example::

            >>> task = Task.from_data("my-mlp", model=MyMLP, loss=F.cross_entropy, metric="accuracy",
            ...                       train=(x_train, y_train), val=(x_val, y_val), epochs=5)
            >>> records = run_all(grid([task], ["sgd:lr=0.1", "adam"], seeds=2), "runs/mine.jsonl")
        """
        if isinstance(model, nn.Module):
            raise TypeError(f"model= takes the model's class or a function that builds it, not a built model "
                            f"({type(model).__name__} instance): each seed needs its own initialisation")
        if not callable(model) or not callable(loss):
            raise TypeError("model= and loss= must be callables: a model class/factory and loss(output, target)")
        default_bs = (getattr(train, "batch_size", None) or 32) if batch_size == "loader" else batch_size
        train_t = _as_tensors(train, "train")
        val_t = _as_tensors(val, "val") if val is not None else None
        test_t = _as_tensors(test, "test") if test is not None else None
        val_t = val_t if val_t is not None else test_t if test_t is not None else train_t
        test_t = test_t if test_t is not None else val_t
        if metric is None:
            metric_fn, default_name, hib = functools.partial(_loss_metric, loss), "test loss", False
        elif metric == "accuracy":
            metric_fn, default_name, hib = accuracy, "test accuracy", True
        elif callable(metric):
            metric_fn, default_name, hib = metric, f"test {getattr(metric, '__name__', 'metric')}", False
        else:
            raise ValueError(f"metric={metric!r}: give 'accuracy', a function metric(output, target) -> float, "
                             "or None for the loss")
        return cls(name=name, description=description or f"{name}: your own model and data",
                   make_data=functools.partial(_fixed_data, Data(train_t, val_t, test_t)),
                   make_model=model, loss=functools.partial(_fixed_loss, loss), metric=metric_fn,
                   metric_name=metric_name or default_name,
                   higher_is_better=hib if higher_is_better is None else higher_is_better,
                   target=target, epochs=epochs, batch_size=default_bs, optimizer=optimizer, lr=lr)


# --- your own data: module-level helpers, so a Task from picklable parts pickles ---------------------
def _fixed_data(data: Data, seed: int) -> Data:
    return data


def _fixed_loss(loss, model):
    return loss


def _loss_metric(loss, output: Tensor, target: Tensor) -> float:
    return float(loss(output, target).detach())


def _as_tensors(data, what: str) -> tuple[Tensor, Tensor]:
    """``(inputs, targets)`` from tensors, a DataLoader (or any iterable of batches) or a
    Dataset of pairs, read once and concatenated."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
    else:
        if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
            data = torch.utils.data.DataLoader(data, batch_size=1024)
        try:
            batches = list(data)
        except TypeError:
            raise TypeError(f"{what}= takes (inputs, targets) tensors, a DataLoader or a Dataset, "
                            f"not {type(data).__name__}") from None
        if not batches:
            raise ValueError(f"{what}= is empty")
        if not all(isinstance(b, (tuple, list)) and len(b) == 2 and all(isinstance(t, Tensor) for t in b)
                   for b in batches):
            raise ValueError(f"every batch of {what}= must be an (inputs, targets) pair of tensors; "
                             f"got {type(batches[0]).__name__}")
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{what}=: {len(x)} inputs but {len(y)} targets (need the same number, at least 1)")
    return x.detach().cpu(), y.detach().cpu()


def cache_dir() -> str:
    """Where generated data sets are cached (``$OPTIMLAB_CACHE`` or ~/.cache/optimlab)."""
    return os.environ.get("OPTIMLAB_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "optimlab"))


def _split(x: Tensor, y: Tensor, fractions=(0.7, 0.15), seed: int = 0) -> Data:
    """A fixed shuffled train/val/test split (the split does not depend on the run's seed)."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    a = int(fractions[0] * len(x))
    b = a + int(fractions[1] * len(x))
    return Data((x[:a], y[:a]), (x[a:b], y[a:b]), (x[b:], y[b:]))


def _ce(model):
    return F.cross_entropy


# --- digits --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _digits() -> Data:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    return _split(x, torch.tensor(d.target, dtype=torch.long))


def _digits_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 16 x 4 x 4
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32 x 2 x 2
        nn.Flatten(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def _digits_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


# --- MNIST-1D ------------------------------------------------------------------------------------
def _mnist1d() -> Data:
    """MNIST-1D (5 000 sequences of length 40) from the package's generator with its default
    arguments, cached on disk; the package's test split is our test split."""
    path = os.path.join(cache_dir(), "mnist1d-5000-seed42.pt")
    if os.path.exists(path):
        d = torch.load(path)
    else:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        raw = make_dataset(args)  # generated locally; never the package's download
        d = {k: torch.tensor(raw[k]) for k in ("x", "y", "x_test", "y_test")}
        save_atomic(d, path)
    x, y = d["x"].float(), d["y"].long()
    n_val = 500
    return Data((x[n_val:], y[n_val:]), (x[:n_val], y[:n_val]), (d["x_test"].float(), d["y_test"].long()))


_mnist1d_cached = functools.lru_cache(maxsize=None)(_mnist1d)


class _Unsqueeze(nn.Module):
    def forward(self, x):
        return x.unsqueeze(1)


def _mnist1d_cnn() -> nn.Module:
    # the paper's small CNN: three stride-2 convolutions of 25 channels, then a linear layer
    return nn.Sequential(
        _Unsqueeze(),
        nn.Conv1d(1, 25, 5, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(25, 25, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(25, 25, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(25 * 5, 10))


def _mnist1d_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(40, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))


# --- breast cancer (convex) -----------------------------------------------------------------------
BREAST_CANCER_L2 = 1e-2  # lambda in mean BCE + lambda/2 ||w||^2 (intercept unpenalised)


@functools.lru_cache(maxsize=None)
def _breast_cancer() -> Data:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = torch.tensor(d.data, dtype=torch.float64)
    y = torch.tensor(d.target, dtype=torch.float64)
    data = _split(x, y, fractions=(0.7, 0.0))
    mu, sd = data.train[0].mean(0), data.train[0].std(0)
    z = lambda t: ((t[0] - mu) / sd, t[1])  # noqa: E731  standardise with training statistics
    # val = the training set itself: the convex objective is what we track
    return Data(z(data.train), z(data.train), z(data.test))


def _logreg_loss(model):
    def loss(out, y):
        return F.binary_cross_entropy_with_logits(out.reshape(-1), y) + 0.5 * BREAST_CANCER_L2 * model.weight.pow(2).sum()
    return loss


def breast_cancer_optimum(data: Data | None = None) -> float:
    """The minimum of the training objective, by scipy's L-BFGS-B to gradient tolerance 1e-12."""
    import numpy as np
    from scipy.optimize import minimize

    x, y = (data or _breast_cancer()).train
    xn, yn = x.numpy(), y.numpy()

    def f(wb):
        w, b = wb[:-1], wb[-1]
        z = xn @ w + b
        val = np.mean(np.logaddexp(0, z) - yn * z) + 0.5 * BREAST_CANCER_L2 * w @ w
        s = 1 / (1 + np.exp(-z)) - yn
        return val, np.concatenate([xn.T @ s / len(yn) + BREAST_CANCER_L2 * w, [s.mean()]])

    res = minimize(f, np.zeros(xn.shape[1] + 1), jac=True, method="L-BFGS-B", options=dict(gtol=1e-12, ftol=1e-15, maxiter=10000))
    return float(res.fun)


# --- character-level language model ---------------------------------------------------------------
CHAR_LM_CONTEXT = 64


@functools.lru_cache(maxsize=None)
def _char_text() -> tuple[str, str]:
    from pydoc_data import topics  # ships with CPython: ~465 k characters of documentation

    text = "".join(topics.topics[k] for k in sorted(topics.topics))
    vocab = "".join(sorted(set(text)))
    return text, vocab


def _char_windows(ids: Tensor, n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - CHAR_LM_CONTEXT - 1, (n,), generator=g)
    w = torch.stack([ids[s:s + CHAR_LM_CONTEXT + 1] for s in starts.tolist()])
    return w[:, :-1], w[:, 1:]


@functools.lru_cache(maxsize=None)
def _char_data() -> Data:
    text, vocab = _char_text()
    lookup = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    cut1, cut2 = int(0.9 * len(ids)), int(0.95 * len(ids))  # held-out text is contiguous, unseen
    return Data(_char_windows(ids[:cut1], 4096, 0), _char_windows(ids[cut1:cut2], 512, 1),
                _char_windows(ids[cut2:], 512, 2))


class CharGRU(nn.Module):
    def __init__(self, vocab: int, embed: int = 48, hidden: int = 192):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = nn.GRU(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x):
        h, _ = self.rnn(self.embed(x))
        return self.head(h)


def _seq_ce(model):
    def loss(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    return loss


def bits_per_char(out: Tensor, y: Tensor) -> float:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)).item() / math.log(2)


# --- noisy quadratic (DeepOBS) --------------------------------------------------------------------
NQ_DIM = 100


@functools.lru_cache(maxsize=None)
def _nq_hessian() -> Tensor:
    g = torch.Generator().manual_seed(42)
    eig = torch.cat([torch.rand(90, generator=g), 30 + 30 * torch.rand(10, generator=g)]).double()
    q, _ = torch.linalg.qr(torch.randn(NQ_DIM, NQ_DIM, generator=g, dtype=torch.float64))
    return q @ torch.diag(eig) @ q.T


def _nq_data(seed: int = 0) -> Data:
    """Samples x_i ~ N(0, I), given as both inputs and targets (so metrics can recover theta)."""
    g = torch.Generator().manual_seed(100)

    def mk(n):
        x = torch.randn(n, NQ_DIM, generator=g, dtype=torch.float64)
        return x, x

    return Data(mk(1000), mk(500), mk(500))


class _NoisyQuadratic(nn.Module):
    """theta, started at 3 * N(0, I); the output for a batch is the residuals theta - x_i."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.theta = nn.Parameter(3 * torch.randn(NQ_DIM, generator=g, dtype=torch.float64))

    def forward(self, x):
        return self.theta - x


def _nq_loss(model):
    h = _nq_hessian()

    def loss(out, y):  # mean over the batch of 1/2 r' H r
        return 0.5 * ((out @ h) * out).sum(-1).mean()
    return loss


def _nq_excess(out: Tensor, y: Tensor) -> float:
    """Excess expected loss 1/2 theta' H theta (the expected loss minus its minimum, reached at
    theta = 0); theta = residual + sample."""
    theta = out[0] + y[0]
    return float(0.5 * theta @ _nq_hessian() @ theta)


# --- test functions --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TestFunction:
    name: str
    f: Callable[[Tensor], Tensor]
    start: tuple[float, float]
    minima: tuple[tuple[float, float], ...]
    f_min: float
    bounds: tuple[tuple[float, float], tuple[float, float]]  # plotting window
    lr: float
    steps: int


def _rosenbrock(t):
    return (1 - t[0]) ** 2 + 100 * (t[1] - t[0] ** 2) ** 2


def _beale(t):
    x, y = t[0], t[1]
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def _rastrigin(t):
    return 20 + (t**2 - 10 * torch.cos(2 * math.pi * t)).sum()


def _himmelblau(t):
    x, y = t[0], t[1]
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def _styblinski_tang(t):
    return 0.5 * (t**4 - 16 * t**2 + 5 * t).sum()


_ST = -2.903534027771177
TEST_FUNCTIONS: dict[str, TestFunction] = {
    tf.name: tf for tf in [
        TestFunction("rosenbrock", _rosenbrock, (-1.2, 1.0), ((1.0, 1.0),), 0.0, ((-2, 2), (-1, 3)), 1e-2, 3000),
        TestFunction("beale", _beale, (1.0, 1.0), ((3.0, 0.5),), 0.0, ((-4.5, 4.5), (-4.5, 4.5)), 1e-2, 3000),
        TestFunction("rastrigin", _rastrigin, (0.3, -0.4), ((0.0, 0.0),), 0.0, ((-1.5, 1.5), (-1.5, 1.5)), 1e-2, 1000),
        TestFunction("himmelblau", _himmelblau, (0.0, 0.0),
                     ((3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848127)), 0.0,
                     ((-5, 5), (-5, 5)), 1e-2, 1000),
        TestFunction("styblinski-tang", _styblinski_tang, (0.0, 0.0), ((_ST, _ST),), 2 * _styblinski_tang(torch.tensor([_ST], dtype=torch.float64)).item(),
                     ((-5, 5), (-5, 5)), 1e-2, 1000),
    ]
}


class _FunctionModel(nn.Module):
    def __init__(self, tf: TestFunction):
        super().__init__()
        self.tf = tf
        self.theta = nn.Parameter(torch.tensor(tf.start, dtype=torch.float64))

    def forward(self, x):
        return self.tf.f(self.theta).reshape(1).expand(len(x))


def _function_task(tf: TestFunction) -> Task:
    dummy = (torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    return Task(
        name=tf.name,
        description=f"the {tf.name} function from {tf.start}; minimum {tf.f_min:g} at {tf.minima[0]}",
        make_data=lambda seed: Data(dummy, dummy, dummy),
        make_model=lambda: _FunctionModel(tf),
        loss=lambda model: (lambda out, y: out.mean()),
        metric=lambda out, y: float(out.mean()) - tf.f_min,
        metric_name="f - f*",
        higher_is_better=False,
        target=1e-4,
        epochs=tf.steps,
        batch_size=None,
        optimizer="adam",
        lr=tf.lr * 5 if tf.name != "rosenbrock" else 2e-2,
        kind="function",
    )


# --- the registry ------------------------------------------------------------------------------------
TASKS: dict[str, Task] = {}


def _add(task: Task) -> None:
    TASKS[task.name] = task


_add(Task("digits-cnn", "scikit-learn's 8x8 digits, a CNN (2 conv + pool, 2 fully connected layers)",
          lambda seed: _digits(), _digits_cnn, _ce, accuracy, "test accuracy", True, 0.95, 20, 32, "adam", 3e-3))
_add(Task("digits-mlp", "scikit-learn's 8x8 digits, an MLP with one hidden layer of 128",
          lambda seed: _digits(), _digits_mlp, _ce, accuracy, "test accuracy", True, 0.95, 20, 32, "adam", 1e-3))
_add(Task("mnist1d-cnn", "MNIST-1D (generated locally), the paper's 3-layer 1-D CNN",
          lambda seed: _mnist1d_cached(), _mnist1d_cnn, _ce, accuracy, "test accuracy", True, 0.90, 100, 100, "adam", 1e-2))
_add(Task("mnist1d-mlp", "MNIST-1D (generated locally), an MLP with two hidden layers of 100",
          lambda seed: _mnist1d_cached(), _mnist1d_mlp, _ce, accuracy, "test accuracy", True, 0.62, 60, 100, "adam", 1e-2))
_add(Task("mnist1d-logreg", "MNIST-1D (generated locally), multinomial logistic regression",
          lambda seed: _mnist1d_cached(), lambda: nn.Linear(40, 10), _ce, accuracy, "test accuracy", True, 0.28, 60, 100,
          "adam", 1e-2))
_add(Task("breast-cancer-logreg", "L2-regularised logistic regression on scikit-learn's breast cancer data",
          lambda seed: _breast_cancer(), lambda: nn.Linear(30, 1, dtype=torch.float64), _logreg_loss,
          lambda out, y: accuracy(out, y), "test accuracy", True, 0.95, 100, None, "sgd", 1.0, kind="convex",
          optimum=lambda data: breast_cancer_optimum(data)))
_add(Task("char-lm", "a character-level GRU on Python's own documentation (pydoc_data.topics)",
          lambda seed: _char_data(), lambda: CharGRU(len(_char_text()[1])), _seq_ce, bits_per_char,
          "test bits per character", False, 3.0, 3, 32, "adam", 3e-3))
_add(Task("noisy-quadratic", "DeepOBS's noisy quadratic: 100-D, eigenvalues in [0, 1] (90) and [30, 60] (10)",
          _nq_data, _NoisyQuadratic, _nq_loss, _nq_excess, "excess loss", False, 1.0, 200, 100, "sgd", 1e-2,
          kind="convex", optimum=lambda data: 0.0))
for _tf in TEST_FUNCTIONS.values():
    _add(_function_task(_tf))
BUILTIN_TASKS = frozenset(TASKS)  # what every process has; a task registered later exists only where it was added


def get_task(name: "str | Task") -> Task:
    """The task called ``name``: a built-in (or registered in :data:`TASKS`) name, or a
    ``"module:function"`` reference -- the module is imported (also from the current folder)
    and the zero-argument function called, once per process. A :class:`Task` is returned as is.
    Raises ``KeyError`` for an unknown name, ``ValueError`` for a reference that cannot be
    resolved, with the reason and the fix in one line."""
    if isinstance(name, Task):
        return name
    if not isinstance(name, str):
        raise TypeError(f"a task is a name, a 'module:function' string or a Task, not {type(name).__name__}")
    if name in TASKS:
        return TASKS[name]
    if ":" in name:
        return _resolve(name)
    close = difflib.get_close_matches(name, TASKS, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown task {name!r}{hint} (known: {', '.join(TASKS)}; or your own as module:function)")


@functools.lru_cache(maxsize=None)
def _resolve(ref: str) -> Task:
    module_name, _, func_name = ref.partition(":")
    module_name, func_name = module_name.strip(), func_name.strip()
    if not module_name or not func_name.isidentifier():
        raise ValueError(f"task {ref!r} is not module:function, e.g. my_pkg.tasks:make_task")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ValueError(f"task {ref!r}: importing {module_name} failed: {e}") from None
        if os.getcwd() in sys.path or "" in sys.path:
            raise ValueError(f"task {ref!r}: no module named {module_name!r}; check the name, and that its folder "
                             "is the current one or on PYTHONPATH") from None
        sys.path.append(os.getcwd())  # `optimlab` run as a program does not look in the current folder
        return _resolve.__wrapped__(ref)
    except Exception as e:  # a syntax error, or an error while the module runs
        raise ValueError(f"task {ref!r}: importing {module_name} failed: {type(e).__name__}: {e}") from None
    factory = getattr(module, func_name, None)
    if not callable(factory):
        names = [n for n in vars(module) if callable(vars(module)[n]) and not n.startswith("_")]
        close = difflib.get_close_matches(func_name, names, n=1)
        hint = f"; did you mean {module_name}:{close[0]}?" if close else ""
        raise ValueError(f"task {ref!r}: module {module_name} has no function {func_name!r}{hint}")
    try:
        task = factory()
    except Exception as e:
        raise ValueError(f"task {ref!r}: {func_name}() raised {type(e).__name__}: {e}") from None
    if not isinstance(task, Task):
        raise ValueError(f"task {ref!r}: {func_name}() returned {type(task).__name__}, not an optimlab.lab.Task; "
                         "return Task.from_data(...)")
    return dataclasses.replace(task, ref=ref)


def task_key(task: "str | Task") -> str:
    """How runs and records name a task: the string given, or a Task's reference or name."""
    if isinstance(task, Task):
        return task.ref or task.name
    return task


def task_names() -> list[str]:
    return list(TASKS)
