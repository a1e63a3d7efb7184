"""Small deterministic problems shared by the tests."""

from __future__ import annotations

import torch


def quadratic(dim: int = 10, cond: float = 10.0, dtype=torch.float64, seed: int = 0):
    """f(x) = 1/2 x'Ax - b'x with eigenvalues in [1, cond]; returns (f, x0, x_star)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=dtype))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), dim, dtype=dtype)
    a = q @ torch.diag(eig) @ q.T
    b = torch.randn(dim, generator=g, dtype=dtype)
    x_star = torch.linalg.solve(a, b)

    def f(x):
        return 0.5 * x @ a @ x - b @ x

    return f, torch.zeros(dim, dtype=dtype), x_star


def rosenbrock(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


ROSENBROCK_START = (-1.2, 1.0)


def cooldown(opt, steps: int, fraction: float = 0.25):
    """Yield ``steps`` times, setting every group's ``lr`` before each step: constant at first,
    then decaying linearly towards 0 over the last ``fraction`` of the run (step ``t`` gets
    ``lr * min(1, (steps - t) / (fraction * steps))``, so the last step is still positive).

    Why the convergence tests need it: at a constant step, Adam-type, sign and trust-ratio
    methods never settle on a noiseless problem -- they circle the minimiser at a radius ~ lr,
    with spikes whenever the second moment decays faster than the first -- and *where* on that
    orbit a run stops is chaotic: one rounding difference (another BLAS kernel, another CPU)
    moves it. Shrinking the step to 0 shrinks the orbit with it, so the end point lies within a
    distance set by the last steps' size, whatever the rounding."""
    base = [g["lr"] for g in opt.param_groups]
    for t in range(steps):
        scale = min(1.0, (steps - t) / (fraction * steps))
        for g, lr in zip(opt.param_groups, base):
            g["lr"] = lr * scale
        yield t


class TinyNet(torch.nn.Module):
    """A net with a matrix, a bias, a conv kernel and a 0-d scale: the shapes optimizers meet."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        self.conv = torch.nn.Conv1d(2, 3, 3, dtype=dtype)
        self.fc = torch.nn.Linear(3 * 6, 4, dtype=dtype)
        self.out = torch.nn.Linear(4, 1, dtype=dtype)
        self.scale = torch.nn.Parameter(torch.tensor(1.0, dtype=dtype))

    def forward(self, x):
        h = torch.tanh(self.conv(x)).flatten(1)
        return self.scale * self.out(torch.tanh(self.fc(h))).squeeze(-1)


def net_data(dtype=torch.float64, n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 8, generator=g, dtype=dtype)
    y = torch.randn(n, generator=g, dtype=dtype)
    return x, y


def grads_at(net: torch.nn.Module, values, x, y) -> list:
    """The mean-squared loss's gradients with ``net``'s parameters set to ``values`` (a naive
    reference's current iterate): what a reference implementation steps with."""
    with torch.no_grad():
        for p, v in zip(net.parameters(), values):
            p.copy_(v)
    net.zero_grad()
    ((net(x) - y) ** 2).mean().backward()
    return [p.grad for p in net.parameters()]


def make_net(dtype=torch.float64, seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(dtype)


def twin_params(shapes, dtype=torch.float32, seed: int = 0) -> tuple[list, list]:
    """Parameters drawn from ``seed`` and a copy of them: one optimizer steps each, and the
    test compares the two runs."""
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, dtype=dtype)) for s in shapes]
    return params, [torch.nn.Parameter(p.detach().clone()) for p in params]


def step_twins(*runs) -> None:
    """One step of each ``(params, optimizer)`` run with the same fresh random gradients."""
    grads = [torch.randn_like(p) for p in runs[0][0]]
    for params, opt in runs:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()


def padding(bucket) -> torch.Tensor:
    """A flat bucket's entries that no tensor owns (the padding between tensors), as a mask."""
    used = torch.zeros(bucket.numel, dtype=torch.bool)
    for p, off in zip(bucket.params, bucket.offs):
        used[off: off + p.numel()] = True
    return ~used


def split_groups(params: list, groups: list[dict]) -> list[dict]:
    """Split parameters round-robin into len(groups) param groups with the given overrides."""
    if len(groups) == 1:
        return [dict(params=list(params), **groups[0])]
    out = [dict(params=[], **g) for g in groups]
    for i, p in enumerate(params):
        out[i % len(groups)]["params"].append(p)
    return out


class Embeddings(torch.nn.Module):
    """Two sparse-gradient tables; EmbeddingBag's gradient has repeated (uncoalesced) indices."""

    def __init__(self, dtype):
        super().__init__()
        self.emb = torch.nn.Embedding(20, 4, sparse=True, dtype=dtype)
        self.bag = torch.nn.EmbeddingBag(10, 3, mode="sum", sparse=True, dtype=dtype)

    def forward(self, i, j):
        return torch.tanh(self.emb(i).sum(-1)) + self.bag(j).sum(-1)


def make_model(kind: str = "tinynet", dtype=torch.float64, seed: int = 0) -> torch.nn.Module:
    """``tinynet`` (matrix, biases, conv kernel, 0-d scale), ``wide``/``tall`` bias-free MLPs
    with only 2-D weights (Muon), or ``embedding`` (sparse gradients, SparseAdam)."""
    if kind == "tinynet":
        return make_net(dtype, seed)
    torch.manual_seed(seed)
    if kind == "embedding":
        return Embeddings(dtype)
    dims = {"wide": (16, 8, 4, 1), "tall": (8, 16, 4, 1)}[kind]  # weights (out, in)
    layers = []
    for a, b in zip(dims, dims[1:]):
        layers += [torch.nn.Linear(a, b, bias=False, dtype=dtype), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


def loss_fns(kind: str, dtype, steps: int) -> list:
    """One loss function of the net per step (fresh sparse batches for ``embedding``)."""
    g = torch.Generator().manual_seed(0)
    if kind == "tinynet":
        x, y = net_data(dtype)
        return [lambda net: ((net(x) - y) ** 2).mean()] * steps
    if kind == "embedding":
        def batch():
            i, j = torch.randint(0, 20, (8,), generator=g), torch.randint(0, 10, (8, 2), generator=g)
            y = torch.randn(8, generator=g, dtype=dtype)
            return lambda net: ((net(i, j) - y) ** 2).mean()
        return [batch() for _ in range(steps)]
    x = torch.randn(32, 8 if kind == "tall" else 16, generator=g, dtype=dtype)
    y = torch.randn(32, 1, generator=g, dtype=dtype)
    return [lambda net: ((net(x) - y) ** 2).mean()] * steps
