"""optimlab under torch.distributed: 2 gloo ranks on 127.0.0.1 (spawned once for the module, every
scenario of ``scenarios.py`` in turn) against one process on the full batch.

DDP averages the two half-batch gradients into the full-batch one, ZeroRedundancyOptimizer and
FSDP2 (``fully_shard``) shard the optimizer; whatever the wrapper, the ranks must hold the same
parameters bit for bit and match the single process to float32 rounding. The decisions that span
the whole model (global-norm clipping, non-finite skipping, Prodigy's and D-Adapt's sums) and
per-tensor norms of shards are what goes wrong when an optimizer reads only its shard: before
the fixes in ``optimlab._dist`` those scenarios ended 1e-2 away from the single process.

Under FSDP2 the whole-matrix work (Muon's orthogonalisations, Shampoo's inverse roots, SOAP's
eigenbases) is done once per matrix, on one rank, and broadcast: the ranks' calls, counted,
add up to those of one process and none does them all; Shampoo's and SOAP's matrix state is
split over the ranks (each entry held once), also after a resume from a distributed checkpoint.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import optimlab
import scenarios

pytestmark = pytest.mark.slow  # ~1 minute on 2 cores, for all the scenarios together

#: float32 rounding of the averaged gradients, carried through STEPS steps (measured: <= 2.1e-7).
#: SOAP and Shampoo without matrix_eps amplify that rounding (1e-1 and 2e-2 against the
#: full-batch gradient), so those scenarios compare with the gradients summed as the ranks sum
#: them (halves=True): the same float32 numbers in, the whole matrices computed as in one
#: process, measured 0 under FSDP2; TOL bounds what a reduction in another order may round
TOL = dict(rtol=1e-5, atol=1e-6)
#: Muon orthogonalises in bfloat16: a gradient rounded differently may move one bfloat16 ulp
#: (lr * 2^-8 ~ 4e-5 a step); a shard orthogonalised on its own ends 4e-3 away
MUON_TOL = dict(rtol=0, atol=5e-4)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    torch.set_num_threads(1)
    return scenarios.run_all(list(scenarios.SCENARIOS), str(tmp_path_factory.mktemp("dist")))


@pytest.mark.parametrize("name", [n for n, spec in scenarios.SCENARIOS.items() if "raises" not in spec])
def test_matches_one_process(ranks, name):
    got = [r.get(name, "no result: the rank died") for r in ranks]
    for r, g in enumerate(got):
        assert isinstance(g, torch.Tensor), f"rank {r}:\n{g}"
    assert torch.equal(got[0], got[1]), f"ranks differ by {(got[0] - got[1]).abs().max():.3g}"
    ref = scenarios.reference(name, halves=scenarios.SCENARIOS[name].get("halves", False))
    torch.testing.assert_close(got[0], ref, **(MUON_TOL if scenarios.SCENARIOS[name]["opt"] == "Muon" else TOL))
    assert (ref - scenarios._flat(scenarios.model())).abs().max() > 1e-3  # it did train


@pytest.mark.parametrize("name", [n for n, spec in scenarios.SCENARIOS.items() if "raises" in spec])
def test_fails_on_every_rank(ranks, name):
    """An error on the rank that does a matrix's work (SOAP's eigendecomposition of non-finite
    statistics) is raised on every rank, as one process raises it."""
    error = scenarios.SCENARIOS[name]["raises"]
    with pytest.raises(error, match="eigendecomposition"):
        scenarios.reference(name)
    got = [r.get(name, "no result: the rank died") for r in ranks]
    assert all(isinstance(g, str) and f"{error.__name__}: SOAP: the eigendecomposition" in g for g in got), got


def _matrices() -> list[tuple[int, int]]:
    return [tuple(p.shape) for p in scenarios.model().parameters() if p.ndim == 2]


def _one_process_calls(name: str) -> dict[str, int]:
    """The whole-matrix computations of scenario ``name`` in one process (full batch), counted."""
    with scenarios._counting() as calls:
        scenarios.reference(name)
    return calls


@pytest.mark.parametrize("name, fn", [("fsdp-muon", "newton_schulz"), ("fsdp-shampoo", "inverse_root"),
                                      ("fsdp-shampoo-blocks", "inverse_root"), ("fsdp-soap", "eigenbasis"),
                                      ("fsdp-soap", "refresh_eigenbasis")])
def test_fsdp_shares_out_the_matrix_work(ranks, name, fn):
    """Under FSDP2 each matrix's orthogonalisation / inverse roots / eigenbases are computed on
    one rank (round robin over the matrices) and broadcast: the ranks' calls add up to one
    process's, which follow from the schedule (every factor of every matrix at every refresh),
    and no rank makes them all."""
    kw, steps = scenarios.SCENARIOS[name]["kw"], range(1, scenarios.STEPS + 1)
    if fn == "newton_schulz":  # every matrix, every step
        total = len(_matrices()) * scenarios.STEPS
    elif fn == "inverse_root":  # every factor of every block, from start_preconditioning_step on
        start, every, size = kw["start_preconditioning_step"], kw["precondition_frequency"], kw.get("block_size", 256)
        factors = sum(math.ceil(m / size) * math.ceil(n / size) * 2 for m, n in _matrices())
        total = factors * sum(1 for t in steps if t >= start and (t - start) % every == 0)
    elif fn == "eigenbasis":  # SOAP: both factors of every matrix, set up on step 1
        total = 2 * len(_matrices())
    else:  # and refreshed every precondition_frequency steps after it
        every = kw["precondition_frequency"]
        total = 2 * len(_matrices()) * sum(1 for t in steps if t > 1 and (t - 1) % every == 0)
    calls = [r.get(f"{name}:{fn}_calls") for r in ranks]
    assert _one_process_calls(name)[fn] == total
    assert sum(calls) == total and max(calls) < total, calls


@pytest.mark.parametrize("name", ["fsdp-shampoo", "fsdp-shampoo-blocks", "fsdp-soap", "fsdp-shampoo-resume-dcp",
                                  "fsdp-soap-resume-dcp"])
def test_fsdp_splits_the_matrix_state(ranks, name):
    """Shampoo's factors and roots, SOAP's factors and eigenbases: each entry is held by one
    rank (rows split over the ranks, as FSDP2 splits the parameters), also after a resume
    from a distributed checkpoint; every rank holds a part, none all of it."""
    size = scenarios.SCENARIOS[name]["kw"].get("block_size", 256)
    keys = ("factors", "eigenbases") if scenarios.SCENARIOS[name]["opt"] == "SOAP" else ("factors", "inverse_roots")
    blocks = [(min(size, m - a), min(size, n - b)) for m, n in _matrices()
              for a in range(0, m, size) for b in range(0, n, size)]
    whole = sum(m * m + n * n for m, n in blocks)
    held = [r.get(f"{name}:matrix_state") for r in ranks]
    for key in keys:
        assert all(h[key][0] == whole for h in held), (key, held)
        mine = [h[key][1] for h in held]
        assert sum(mine) == whole and 0 < min(mine) and max(mine) < whole, (key, mine)


def test_constructor_options_in_a_group():
    """ZeRO passes every keyword on as a group default: equal to the optimizer's own they are
    dropped, different they are refused (they are not per group)."""
    w = torch.nn.Parameter(torch.ones(3))
    opt = optimlab.AdamW([{"params": [w], "compile": None, "accumulate_steps": 1}])
    assert "compile" not in opt.param_groups[0] and "accumulate_steps" not in opt.param_groups[0]
    with pytest.raises(ValueError, match=r"accumulate_steps=2 in a param group.*accumulate_steps=1"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "accumulate_steps": 2})


def test_shared_storage_stays_eager():
    """compile=True never rebinds parameters that are views of another owner's buffer (as
    ZeroRedundancyOptimizer(parameters_as_bucket_view=True) keeps them): it says so, and steps them eagerly."""
    buf = torch.zeros(8)
    a, b = torch.nn.Parameter(buf[:4].view(4)), torch.nn.Parameter(buf[4:].view(4))
    a.data, b.data = buf[:4], buf[4:]
    opt = optimlab.AdamW([a, b], lr=0.1, compile=True, fused=False)
    a.grad, b.grad = torch.ones(4), torch.ones(4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
    assert any("shares its storage" in str(w.message) for w in caught)
    assert a.data_ptr() == buf.data_ptr() and torch.allclose(buf, torch.full((8,), -0.1))


def test_ddp_gradient_bucket_views_are_left_to_ddp(ranks):
    """DDP(gradient_as_bucket_view=True) with compile=True: the gradients stay DDP's bucket views
    (never rebound to the engine's flat buffer, so no copy back and forth every step); on this
    CPU the engine keeps one flat buffer per bucket (TRANSIENT_GRADS_ON_CPU is False)."""
    name = "ddp-lion-compile-grad-bucket-view"
    for r in ranks:
        assert r[f"{name}:grads_in_flat_buffers"] == (0, 1)
    assert r["ddp-adamw:grads_in_flat_buffers"] == (0, 0)  # (torch's fused kernel: no flat buffers)
