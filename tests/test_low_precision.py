"""Low-precision state and parameters (optimlab.precision): the quantizer against closed-form
bounds and a brute-force nearest search, stochastic rounding's mean, Kahan summation against a
plain bfloat16 add, every option against a naive per-tensor reference, state_dict round trips
across options, the compiled path, bytes per parameter, and pure-bfloat16 training."""

import io
import math
import warnings

import pytest
import torch

import optimlab
from optimlab.core import PIECE
from optimlab.precision import (BLOCK, MIN_QUANTIZED, dequantize, quantization_map, quantize, state_bytes,
                                stochastic_round)
from problems import padding, step_twins, twin_params


def _gaps(y: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Half the gap between the two map values around each ``y`` (0 where ``y`` is on the map)."""
    hi = torch.searchsorted(table, y).clamp(max=len(table) - 1)
    lo = (hi - 1).clamp(min=0)
    lo = torch.where(table[hi] == y, hi, lo)
    return (table[hi] - table[lo]) / 2


# ---------------------------------------------------------------------------------------------
# The quantizer
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signed", [True, False])
def test_maps(signed):
    m = quantization_map(signed)
    assert len(m) == (255 if signed else 256)
    assert (m[1:] > m[:-1]).all()
    assert m[-1] == 1 and (m == 0).sum() == 1
    if signed:
        assert torch.equal(m, -m.flip(0))
    else:
        assert m[0] == 0 and 0 < m[1] <= 1e-7  # second moments span twice the decades


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("n", [BLOCK * 7, 5000, 1])
def test_round_trip_within_half_a_step(signed, n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g) * torch.exp(3 * torch.randn(n, generator=g))  # heavy-tailed
    if not signed:
        x = x.abs()
    codes, absmax = quantize(x.view(-1, 1) if n > 1 else x, signed)
    assert codes.dtype == (torch.int8 if signed else torch.uint8) and absmax.shape == (math.ceil(n / BLOCK),)
    back = dequantize(codes, absmax).view(-1)
    scale = absmax.repeat_interleave(BLOCK)[:n]
    table = quantization_map(signed)
    bound = scale * _gaps(x / scale, table)
    assert ((back - x).abs() <= bound + 1e-6 * scale).all()
    # the nearest map value: a brute-force search agrees (up to ties)
    y = x / scale
    idx = codes.view(-1).long() + (127 if signed else 0)
    best = (y[:, None] - table[None, :]).abs().min(1).values
    assert torch.allclose((y - table[idx]).abs(), best, atol=1e-7)
    # each block's absmax entry is held exactly; requantizing changes nothing
    assert torch.allclose(back.abs().view(-1)[x.abs().argmax()], x.abs().max())
    assert all(torch.equal(a, b) for a, b in zip(quantize(back.view_as(codes), signed), (codes, absmax)))


def test_unsigned_map_holds_negatives_as_zero():
    codes, absmax = quantize(torch.tensor([-1.0, 2.0]), signed=False)
    assert dequantize(codes, absmax).tolist() == [0.0, 2.0]


# ---------------------------------------------------------------------------------------------
# Rounding to 16-bit parameters
# ---------------------------------------------------------------------------------------------
def _rounder(how):
    """stochastic_round as the eager path runs it, or traced and compiled as in a flat kernel."""
    if how == "eager":
        return stochastic_round
    return torch.compile(stochastic_round, dynamic=False, fullgraph=True)


@pytest.mark.parametrize("dtype,how", [(torch.bfloat16, "eager"), (torch.bfloat16, "compiled"),
                                       (torch.float16, "eager")])
def test_stochastic_rounding_is_unbiased(dtype, how):
    """Each result is one of the two neighbours of x in ``dtype``, the mean over many draws is
    x, and an exact value stays -- eager (torch's generator) and compiled (a hash of each
    entry's index and a drawn seed)."""
    rnd = _rounder(how)
    torch.manual_seed(0)
    n = 200_000
    values = torch.tensor([1.0 + 1e-3, -0.3 + 1e-4, 5e-3 + 7e-7])
    for v in values:
        x = v.expand(n).contiguous()
        r = rnd(x, dtype)
        near = x.to(dtype)
        gap = (torch.nextafter(near, torch.full_like(near, math.inf)).float() - near.float()).abs()[0]
        assert ((r.float() - v).abs() <= gap).all()  # one of the two neighbours
        # mean of n Bernoulli choices between the neighbours: std <= gap / (2 sqrt n)
        assert abs(r.float().mean().item() - v.item()) < 6 * gap.item() / (2 * math.sqrt(n))
    exact = torch.tensor([1.0, -2.5, 0.0])
    assert torch.equal(rnd(exact, dtype).float(), exact)


@pytest.mark.parametrize("how", ["eager", "compiled"])
def test_stochastic_rounding_to_bfloat16_at_the_edges(how):
    """Infinities stay, NaN stays NaN, signed zeros and subnormals round between their own
    neighbours, and a float32 above bfloat16's largest finite value goes to it or to infinity;
    the same seed gives the same result."""
    f32 = torch.finfo(torch.float32)
    bf_max = torch.finfo(torch.bfloat16).max
    x = torch.tensor([math.inf, -math.inf, math.nan, 0.0, -0.0, f32.max, -f32.max, bf_max, 1e-40, -1e-40,
                      f32.tiny * 1.01, -3.0, 1.0 + 2**-9]).repeat(500)
    rnd = _rounder(how)
    torch.manual_seed(3)
    r = rnd(x, torch.bfloat16)
    torch.manual_seed(3)
    assert torch.equal(r.view(torch.int16), rnd(x, torch.bfloat16).view(torch.int16))
    assert r.dtype == torch.bfloat16
    nan = x.isnan()
    assert r[nan].isnan().all() and not r[~nan].isnan().any()
    # the neighbours: x's pattern with the lower half cleared (towards zero), and the next
    # pattern up in magnitude (away from zero; infinity after the largest finite value)
    bits = x[~nan].view(torch.int32).to(torch.int64)
    low = (bits & -(1 << 16))
    high = torch.where(bits & 0xFFFF != 0, low + (1 << 16), low)
    as_float = lambda b: b.to(torch.int32).view(torch.float32)  # noqa: E731
    got = r[~nan].float()
    assert ((got == as_float(low)) | (got == as_float(high))).all()
    assert torch.equal(got.signbit(), x[~nan].signbit())
    assert (got[x[~nan].abs() == math.inf].abs() == math.inf).all()


def test_compiled_rounding_bits_are_the_eager_hash_and_look_uniform():
    """The compiled kernel's random bits: the same integers as the hash computed eagerly (no
    overflow or vectorisation artefact), uniform over 16 bits, uncorrelated between neighbours,
    and a new seed gives new bits."""
    from optimlab.precision import _hash_bits16

    x = torch.zeros(1 << 18)
    seed = torch.tensor(123_456_789)
    bits = _hash_bits16(x, seed)
    assert torch.equal(torch.compile(_hash_bits16, dynamic=False)(x, seed), bits)
    assert int(bits.min()) >= 0 and int(bits.max()) < 1 << 16
    for part in (bits & 0xFF, bits >> 8):  # 256 bins each: chi-square, 255 degrees of freedom
        counts = torch.bincount(part, minlength=256).double()
        expected = x.numel() / 256
        assert ((counts - expected) ** 2 / expected).sum() < 255 + 6 * math.sqrt(2 * 255)
    u = bits.double()
    assert abs(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1]) < 0.01
    assert (_hash_bits16(x, seed + 1) != bits).float().mean() > 0.99


@pytest.mark.parametrize("compile", [False, True])
def test_kahan_and_stochastic_keep_updates_a_bfloat16_add_loses(compile):
    """SGD steps of 1e-3 on weights at 1.0 (bfloat16 spacing 2^-7 there): a plain bfloat16 add
    rounds every one away; Kahan's compensation accumulates them, stochastic rounding keeps them
    on average -- on the eager path and in the compiled kernel."""
    out = {}
    for rounding in (None, "kahan", "stochastic"):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.ones(5000, dtype=torch.bfloat16))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            opt = optimlab.SGD([p], lr=1e-3, param_rounding=rounding, compile=compile)
        for _ in range(100):
            p.grad = torch.ones_like(p)
            opt.step()
        out[rounding] = p.detach().float(), opt.state.get(p, {}).get("kahan_comp")
        assert _compiled_params(opt) == (compile and rounding is not None) * 1
    assert (out[None][0] == 1).all()
    p, comp = out["kahan"]
    assert comp.dtype == torch.bfloat16
    assert ((p + comp.float()) - 0.9).abs().max() < 1e-4  # twice bfloat16's precision
    assert (p - 0.9).abs().max() <= 2**-8
    assert abs(out["stochastic"][0].mean().item() - 0.9) < 1e-3


# ---------------------------------------------------------------------------------------------
# The options against a naive per-tensor reference
# ---------------------------------------------------------------------------------------------
def _naive(name, p, g, st, t, hp):
    """One step of a deliberately plain per-tensor implementation, in float32."""
    lr = hp["lr"]
    if name == "adamw":
        b1, b2 = hp["betas"]
        m = st.setdefault("exp_avg", torch.zeros_like(p))
        v = st.setdefault("exp_avg_sq", torch.zeros_like(p))
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        u = (m / (1 - b1**t)) / (v.sqrt() / math.sqrt(1 - b2**t) + hp["eps"])
        return p - lr * (u + hp["weight_decay"] * p)
    if name == "sgd":
        b = st.setdefault("momentum_buffer", torch.zeros_like(p))
        b.mul_(hp["momentum"] if t > 1 else 0).add_(g)
        return p - lr * b
    if name == "lion":
        b1, b2 = hp["betas"]
        m = st.setdefault("exp_avg", torch.zeros_like(p))
        u = torch.sign(b1 * m + (1 - b1) * g)
        m.mul_(b2).add_(g, alpha=1 - b2)
        return p - lr * (u + hp["weight_decay"] * p)
    if name == "rmsprop":
        v = st.setdefault("square_avg", torch.zeros_like(p))
        v.mul_(hp["alpha"]).addcmul_(g, g, value=1 - hp["alpha"])
        return p - lr * g / (v.sqrt() + hp["eps"])
    raise AssertionError(name)


_SIGNED = {"exp_avg": True, "exp_avg_sq": False, "momentum_buffer": True, "square_avg": False}
_CASES = {
    "adamw": dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
    "sgd": dict(lr=1e-2, momentum=0.9),
    "lion": dict(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1),
    "rmsprop": dict(lr=1e-3, alpha=0.99, eps=1e-8),
}


def _held(x, option, signed):
    """What the option holds of a float32 moment, back in float32."""
    if option == "state_bits" and x.numel() >= MIN_QUANTIZED:
        return dequantize(*quantize(x, signed))
    if option == "state_dtype":
        return x.bfloat16().float()
    return x


@pytest.mark.parametrize("name", sorted(_CASES))
@pytest.mark.parametrize("option", ["state_bits", "state_dtype"])
def test_options_match_a_naive_reference(name, option):
    """Tensors: one sliced into pieces (> 2 * PIECE entries), one quantized with a partial last
    block, one small (never quantized). Gradients are fixed, so the state follows exactly."""
    shapes = [(2 * PIECE // 512 + 3, 512), (65, 99), (10,)]
    g = torch.Generator().manual_seed(1)
    params = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]
    hp = _CASES[name]
    kw = {"state_bits": 8} if option == "state_bits" else {"state_dtype": torch.bfloat16}
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = optimlab.create(name, ps, **hp, **kw)
    ref = [p.clone() for p in params]
    ref_state = [{} for _ in params]
    for t, gs in enumerate(grads, 1):
        for p, gr in zip(ps, gs):
            p.grad = gr
        opt.step()
        for i, gr in enumerate(gs):
            ref[i] = _naive(name, ref[i], gr, ref_state[i], t, hp)
            for k, v in ref_state[i].items():
                ref_state[i][k] = _held(v, option, _SIGNED[k])
    for p, r, st, rst in zip(ps, ref, (opt.state[p] for p in ps), ref_state):
        _agree(p.detach(), r, 5 * hp["lr"])
        for k, v in rst.items():
            held = st[k]
            if held.dtype in (torch.int8, torch.uint8):
                held = dequantize(held, st[k + ".absmax"])
            else:
                assert held.dtype == (torch.bfloat16 if option == "state_dtype" else torch.float32)
            _agree(held.float(), v, (v.abs().max() * 0.02).item())


def _agree(got, want, flip):
    """Equal to rounding, except where the last bit of a float32 result put a moment on the other
    side of a rounding midpoint of its held form (a one-code difference, a few entries at most),
    and then by less than ``flip``."""
    off = ~torch.isclose(got, want, rtol=1e-5, atol=1e-7)
    assert off.sum() <= max(2, off.numel() // 10_000), off.sum()
    assert ((got - want)[off].abs() <= flip).all()


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("rounding", ["stochastic", "kahan"])
def test_param_rounding_matches_a_float32_step(rounding, compile):
    """bfloat16 AdamW: one step computed in float32 from the same start, then rounded (eager
    and compiled)."""
    g = torch.Generator().manual_seed(2)
    p0 = torch.randn(300, 20, generator=g).bfloat16()
    grad = torch.randn(300, 20, generator=g).bfloat16()
    hp = _CASES["adamw"]
    p = torch.nn.Parameter(p0.clone())
    opt = optimlab.AdamW([p], **hp, param_rounding=rounding, compile=compile)
    p.grad = grad
    opt.step()
    assert _compiled_params(opt) == compile * 1
    exact = _naive("adamw", p0.float(), grad.float(), {}, 1, hp)
    got = p.detach().float()
    assert opt.state[p]["exp_avg"].dtype == torch.bfloat16  # state follows the parameter
    if rounding == "kahan":
        torch.testing.assert_close(got + opt.state[p]["kahan_comp"].float(), exact, rtol=2e-5, atol=1e-7)
        assert torch.equal(got, exact.bfloat16().float()) or (got != exact.bfloat16().float()).float().mean() < 1e-3
    else:
        near = exact.bfloat16()
        other = torch.nextafter(near, torch.where(near.float() > exact, -math.inf, math.inf).bfloat16())
        # one of the two bfloat16 neighbours of the exact value (bar a float32 last-bit straddle)
        assert ((got == near.float()) | (got == other.float())).float().mean() > 1 - 1e-3
        assert 0.05 < (got == other.float()).float().mean() < 0.95  # and not always the nearest


# ---------------------------------------------------------------------------------------------
# state_dict across options; compiled; memory
# ---------------------------------------------------------------------------------------------
def _trained(kw, dtype=torch.float32, steps=3):
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.Tanh(), torch.nn.Linear(96, 8)).to(dtype)
    opt = optimlab.AdamW(model.parameters(), lr=1e-2, **kw)
    x = torch.randn(32, 64, dtype=dtype)
    for _ in range(steps):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return model, opt, x


def _through_disk(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _moments(opt):
    out = []
    for st in opt.state.values():
        for k in ("exp_avg", "exp_avg_sq"):
            v = st[k]
            out.append(dequantize(v, st[k + ".absmax"]) if v.dtype in (torch.int8, torch.uint8) else v.float())
    return out


@pytest.mark.parametrize("a, b", [({}, {"state_bits": 8}), ({"state_bits": 8}, {}),
                                  ({}, {"state_dtype": torch.bfloat16}), ({"state_dtype": torch.bfloat16}, {}),
                                  ({"state_bits": 8}, {"state_dtype": torch.bfloat16})])
@pytest.mark.parametrize("compile", [None, True], ids=["default", "compiled"])
def test_state_dict_loads_across_options(a, b, compile):
    a, b = {**a, "compile": compile}, {**b, "compile": compile}
    model, opt, x = _trained(a)
    sd = _through_disk(opt.state_dict())
    other = optimlab.AdamW(model.parameters(), lr=1e-2, **b)
    other.load_state_dict(sd)
    for before, after, p in zip(_moments(opt), _moments(other), (p for p in model.parameters() for _ in range(2))):
        if b.get("state_bits") and p.numel() >= MIN_QUANTIZED:
            signed = before.min() < 0
            expect = dequantize(*quantize(before, signed))
        elif b.get("state_dtype"):
            expect = before.bfloat16().float()
        else:
            expect = before
        assert torch.equal(after, expect)
    # and the same options continue the same trajectory
    same = optimlab.AdamW(model.parameters(), lr=1e-2, **a)
    same.load_state_dict(_through_disk(opt.state_dict()))
    assert all(torch.equal(u, v) for u, v in zip(_moments(same), _moments(opt)))


def test_float32_state_of_bfloat16_parameters_survives_a_round_trip():
    """torch casts loaded state to the parameter's dtype; the moments held in float32 are not."""
    model, opt, _ = _trained({"state_dtype": torch.float32, "param_rounding": "kahan"}, dtype=torch.bfloat16)
    other = optimlab.AdamW(model.parameters(), lr=1e-2, state_dtype=torch.float32, param_rounding="kahan")
    other.load_state_dict(_through_disk(opt.state_dict()))
    for p in model.parameters():
        for k in ("exp_avg", "exp_avg_sq"):
            assert other.state[p][k].dtype == torch.float32 and torch.equal(other.state[p][k], opt.state[p][k])
        assert torch.equal(other.state[p]["kahan_comp"], opt.state[p]["kahan_comp"])


def _compiled_params(opt) -> int:
    """How many parameters the compiled flat kernel stepped (0: none, or no engine)."""
    engine = opt._engine
    return 0 if engine is None else sum(len(b.params) for lay in engine._layouts.values() for b in lay.buckets)


def _held_params(opt):
    """Each parameter as held, in float32: plus its Kahan compensation where it has one."""
    return [p.detach().float() + opt.state[p]["kahan_comp"].float() if "kahan_comp" in opt.state[p]
            else p.detach().float() for g in opt.param_groups for p in g["params"]]


@pytest.mark.parametrize("kw, dtype", [({"state_dtype": torch.bfloat16}, torch.float32),
                                       ({"param_rounding": "kahan"}, torch.bfloat16),
                                       ({"state_dtype": torch.float32, "param_rounding": "kahan"}, torch.bfloat16)])
def test_compile_true_compiles_the_options(kw, dtype):
    """The compiled kernel does what the eager path does with the options -- moments held in
    their dtype, the step in float32, parameters written back rounded (Kahan: plus the error
    kept) -- so the two runs hold the same dtypes and the same values, bar the compiled kernel's
    float32 rounding where it tips a held 16-bit value across a midpoint: one bfloat16 step
    (2^-8 relative) of a moment moves an Adam update by less than 2^-8 of it (~lr); allowed:
    4x that per step."""
    steps, lr = 3, 1e-2
    _, eager, _ = _trained(kw, dtype, steps)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # nothing falls back to eager
        _, compiled, _ = _trained({**kw, "compile": True}, dtype, steps)
    assert _compiled_params(compiled) == 4 and _compiled_params(eager) == 0
    for u, v in zip(eager.state.values(), compiled.state.values()):
        assert {k: x.dtype for k, x in u.items()} == {k: x.dtype for k, x in v.items()}
    for a, b in zip(_held_params(eager), _held_params(compiled)):
        assert (a - b).abs().max() <= 4 * steps * lr * 2**-8
    for u, v in zip(_moments(eager), _moments(compiled)):
        torch.testing.assert_close(u, v, rtol=2**-6, atol=1e-6)


@pytest.mark.parametrize("kw, dtype", [({"state_bits": 8}, torch.float32),
                                       ({"state_bits": 8, "param_rounding": "kahan"}, torch.bfloat16)])
def test_compile_true_compiles_8_bit_state(kw, dtype):
    """8-bit moments in the compiled kernel: the flat codes and scales are the tensors' own
    blocks (every tensor starts on a block; the padding of its last block is held as 0), each
    block dequantized, stepped and requantized in the one pass -- the same codes as the eager
    path's (the same lookup), bar where the compiled kernel's float32 rounding of a moment tips
    it across a midpoint: at most a few codes, one step each. Quantized and small (unquantized)
    parameters are both compiled; nothing falls back to eager. (bfloat16 models: two steps --
    from the third on, a parameter rounded differently changes the bfloat16 forward pass and so
    the gradients, and the runs drift apart as two bfloat16 runs do.)"""
    steps = 4 if dtype == torch.float32 else 2
    _, eager, _ = _trained(kw, dtype, steps)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _, compiled, _ = _trained({**kw, "compile": True}, dtype, steps)
    assert _compiled_params(compiled) == 4 and _compiled_params(eager) == 0
    quantized = 0
    for u, v in zip(eager.state.values(), compiled.state.values()):
        assert {k: x.dtype for k, x in u.items()} == {k: x.dtype for k, x in v.items()}
        for k in ("exp_avg", "exp_avg_sq"):
            if u[k].dtype in (torch.int8, torch.uint8):
                quantized += 1
                diff = (u[k].int() - v[k].int()).abs()
                assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
                torch.testing.assert_close(u[k + ".absmax"], v[k + ".absmax"], rtol=1e-5, atol=0)
    assert quantized == 2  # the 64 x 96 weight's two moments (the others are under MIN_QUANTIZED)
    for a, b in zip(_held_params(eager), _held_params(compiled)):
        torch.testing.assert_close(a, b, rtol=0, atol=4 * steps * 1e-2 * 2**-8)


def test_compiled_8_bit_blocks_ignore_the_padding():
    """Tensors whose sizes are not multiples of the block: garbage written into the flat
    buffers' padding (moments and their codes) never reaches a block's scale."""
    params, copies = twin_params([(4100,), (300, 17), (5000,)])
    ours = optimlab.AdamW(params, lr=1e-2, state_bits=8, compile=True)
    ref = optimlab.AdamW(copies, lr=1e-2, state_bits=8)
    for step in range(4):
        step_twins((params, ours), (copies, ref))
        (b,) = [b for lay in ours._engine._layouts.values() for b in lay.buckets]
        assert all(o % BLOCK == 0 for o in b.offs)
        pad = padding(b)
        for flat in b.flat_state:
            if flat.dtype in (torch.int8, torch.uint8):
                flat[pad] = 100  # codes of large values in the padding
        if b.flat_grad is not None:
            b.flat_grad[pad] = 1e3
    for p, q in zip(params, copies):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5)
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ours.state[p][k + ".absmax"], ref.state[q][k + ".absmax"], rtol=1e-5, atol=0)


def test_bytes_per_parameter():
    p = torch.nn.Parameter(torch.zeros(1 << 20))
    per_param = {}
    for name, kw in (("fp32", {}), ("bf16", {"state_dtype": torch.bfloat16}), ("8-bit", {"state_bits": 8})):
        opt = optimlab.AdamW([p], lr=1e-3, fused=False, **kw)
        p.grad = torch.randn_like(p)
        opt.step()
        per_param[name] = state_bytes(opt) / p.numel()
    assert per_param["fp32"] == pytest.approx(8, abs=1e-3)
    assert per_param["bf16"] == pytest.approx(4, abs=1e-3)
    assert per_param["8-bit"] == pytest.approx(2 + 8 / BLOCK, abs=1e-3) and per_param["8-bit"] <= 2.2


def test_options_are_checked_and_listed():
    w = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="state_bits"):
        optimlab.AdamW(w, state_bits=4)
    with pytest.raises(ValueError, match="param_rounding"):
        optimlab.AdamW(w, param_rounding="up")
    with pytest.raises(ValueError, match="state_dtype"):
        optimlab.AdamW(w, state_dtype=torch.int8)
    with pytest.raises(ValueError, match="differentiable"):
        optimlab.AdamW(w, state_bits=8, differentiable=True)
    with pytest.warns(RuntimeWarning, match="nothing to act on"):
        optimlab.Rprop(w, state_bits=8)
    with pytest.warns(RuntimeWarning, match="bfloat16/float16 parameters"):
        optimlab.AdamW(w, param_rounding="kahan")
    assert optimlab.describe("adamw")["low_precision"] == ("state_dtype", "state_bits", "param_rounding")
    assert optimlab.describe("rprop")["low_precision"] == ("param_rounding",)
    assert optimlab.describe("lbfgs")["low_precision"] == ()


# ---------------------------------------------------------------------------------------------
# Pure bfloat16 training
# ---------------------------------------------------------------------------------------------
def _bf16_fit(dtype, rounding=None, steps=200):
    """A teacher-student MLP whose weights start in [0.5, 1): there bfloat16's spacing is 2^-8,
    and Adam's steps (lr 1e-4, at most ~3 lr in size) are below half of it, so a plain
    bfloat16 add moves no weight at all."""
    g = torch.Generator().manual_seed(4)
    w1 = 0.5 + 0.5 * torch.rand(32, 16, generator=g)
    w2 = 0.5 + 0.5 * torch.rand(1, 32, generator=g)
    x = torch.randn(256, 16, generator=g)
    target = torch.tanh(x @ (w1 - 0.01).T / 4) @ (w2 - 0.01).T
    params = [torch.nn.Parameter(w.to(dtype)) for w in (w1, w2)]
    opt = optimlab.AdamW(params, lr=1e-4, weight_decay=0.0, param_rounding=rounding)
    xd, td = x.to(dtype), target.to(dtype)

    def loss():
        return (torch.tanh(xd @ params[0].T / 4) @ params[1].T - td).float().square().mean()

    torch.manual_seed(0)
    start = loss().item()
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
    return start, loss().item()


def test_pure_bfloat16_training_does_not_stall():
    start, fp32 = _bf16_fit(torch.float32)
    assert fp32 < 0.2 * start  # the float32 run makes real progress
    plain_start, plain = _bf16_fit(torch.bfloat16)
    assert plain == plain_start  # stalled: every update rounded away
    for rounding in ("kahan", "stochastic"):
        _, end = _bf16_fit(torch.bfloat16, rounding)
        assert end < 0.5 * plain, rounding


_EIGHT_BIT = ["adabelief", "adadelta", "adagrad", "adam", "adamax", "adamw", "adan", "ademamix", "adopt", "lamb",
              "lars", "lion", "madgrad", "nadam", "novograd", "radam", "rmsprop", "signum", "yogi", "prodigy",
              "dadapt-adam", "schedule-free-adamw"]


@pytest.mark.parametrize("name", _EIGHT_BIT)
def test_8_bit_state_compiled_equals_eager_for_every_optimizer(name):
    """Every optimizer with moments, state_bits=8, compile=True against compile=False: the same
    parameters (to float32 rounding) and the same codes bar a few one-step flips; elementwise
    and layer-wise chains (LAMB, LARS, NovoGrad: rows of 64 inside blocks of 256), quantized
    and small tensors, sizes that are not multiples of the block."""
    import optimlab.registry as registry

    shapes = [(4100,), (70, 90), (5000,), (33,), (64, 65)]
    kw = {"lr": 1e-3} if name not in ("prodigy", "dadapt-adam") else {}
    if name == "sgd":
        kw["momentum"] = 0.9

    def run(compile):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            opt = registry.create(name, params, state_bits=8, compile=compile, **kw)
        g = torch.Generator().manual_seed(1)
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        return params, opt

    eager_params, eager = run(False)
    params, compiled = run(True)
    assert _compiled_params(compiled) == len(shapes)  # all of them, the quantized ones too
    codes = 0
    for p, q in zip(params, eager_params):
        # float32 rounding; where a code flipped, that entry's step differs by a fraction of it
        off = (p - q).abs() > 1e-6 + 1e-5 * q.abs()
        assert (p - q).abs().max() <= 5e-4 and off.float().mean() < 1e-3
        for k, v in compiled.state[p].items():
            if isinstance(v, torch.Tensor) and v.dtype in (torch.int8, torch.uint8):
                codes += 1
                diff = (v.int() - eager.state[q][k].int()).abs()
                assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3, k
    assert codes >= 3  # the three tensors of 4096 entries or more hold codes
