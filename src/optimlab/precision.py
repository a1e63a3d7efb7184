"""Low-precision optimizer state and parameters: the ``state_dtype``, ``state_bits`` and
``param_rounding`` options every :class:`optimlab.ChainOptimizer` takes.

What is *held* between steps shrinks; the step's maths always runs in float32 (float64 for
float64 parameters). Each step loads a cache-sized piece of a bucket into float32 working
tensors, runs the chain on them and writes them back:

* ``state_dtype=torch.bfloat16``: the moments (the state entries a transform lists in
  ``Transform.moment_state``) are held in that dtype, written back rounded to nearest.
* ``state_bits=8``: the moments are held as 8-bit codes with one float32 scale per block of
  ``BLOCK`` entries (Dettmers et al., "8-bit Optimizers via Block-wise Quantization", 2022):
  ``x ~ absmax(block) * map[code]``. The maps are dynamic-tree maps (sign, a run of zero bits
  for the decade, linear steps within it): one for signed moments (first moments, int8 codes,
  255 values in [-1, 1], 7 decades) and one for moments that are never negative (second
  moments, uint8 codes, 256 values in [0, 1], 8 decades: squares span twice the range).
  A code is the map value nearest to ``x / absmax``, so the round-trip error is at most half
  the gap between the two map values around it, times the block's absmax. Tensors under
  ``MIN_QUANTIZED`` entries stay unquantized (their scales would cost more than the codes save).
  Under a ``state_dict`` the codes and scales are plain tensors: ``exp_avg`` (int8 / uint8,
  shaped like the parameter) and ``exp_avg.absmax`` (float32, one per block).
* ``param_rounding`` (bfloat16 / float16 parameters): the step runs on a float32 copy of the
  parameter, written back with ``"stochastic"`` rounding (up or down with probabilities that
  make the rounding unbiased, so updates far below the parameter's resolution still move it on
  average), or ``"kahan"``: the rounding error is kept in ``state["kahan_comp"]`` (in the
  parameter's dtype) and added back before the next step, so the parameter is held to about
  twice its dtype's precision (Kahan summation; Zamirai et al. 2021, torch-optimi).

Which state is a moment is the transform's knowledge (``Transform.moment_state``); everything
else -- parameter copies (Schedule-Free's ``z``, ASGD's average), Shampoo's and SOAP's
matrices, Adafactor's factored statistics -- stays as it is.

Example::

    >>> opt = optimlab.AdamW(model.parameters(), lr=1e-3, state_bits=8)          # ~2 B/param
    >>> opt = optimlab.AdamW(bf16_model.parameters(), lr=1e-4, param_rounding="kahan")
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
from torch import Tensor

__all__ = ["BLOCK", "MIN_QUANTIZED", "Precision", "quantize", "dequantize", "quantization_map",
           "stochastic_round", "state_bytes"]

#: entries per quantization block (one float32 scale each: 1/64 byte per entry)
BLOCK = 256
#: moments of fewer entries stay unquantized under ``state_bits=8``
MIN_QUANTIZED = 4096
#: the per-parameter state entry of ``param_rounding="kahan"`` (the rounding error, like p)
KAHAN = "kahan_comp"
_SCALE = ".absmax"  # suffix of the scales of a quantized entry
_ROUNDINGS = ("stochastic", "kahan")


# ---------------------------------------------------------------------------------------------
# 8-bit block-wise quantization
# ---------------------------------------------------------------------------------------------
def _dynamic_map(signed: bool) -> Tensor:
    """The sorted dynamic-tree map in float64: 0 and, per sign, decade ``e`` (values in
    ``(10^-(e+1), 10^-e]``) with ``2^(bits - 1 - e)`` evenly spaced values, where ``bits`` is 7
    signed (one bit is the sign) and 8 unsigned. Signed: 1 + 2 * 127 = 255 values; unsigned:
    1 + 255 = 256. The top value is 1 (the block's absmax is held exactly)."""
    bits = 7 if signed else 8
    values = []
    for e in range(bits):
        n = 2 ** (bits - 1 - e)
        values += [10.0**-e * (0.1 + 0.9 * k / n) for k in range(1, n + 1)]
    side = torch.tensor(sorted(values), dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    return torch.cat([-side.flip(0), zero, side]) if signed else torch.cat([zero, side])


def quantization_map(signed: bool, device: torch.device | str = "cpu") -> Tensor:
    """The map's values (float32, sorted): code ``c`` stands for ``map[c + 127]`` (signed,
    int8 codes) or ``map[c]`` (unsigned, uint8 codes)."""
    return _table(bool(signed), torch.device(device))


@functools.lru_cache(maxsize=None)
def _table(signed: bool, device: torch.device) -> Tensor:
    return _dynamic_map(signed).to(torch.float32).to(device)


def _blocks(x: Tensor) -> Tensor:
    """``x`` flattened into rows of ``BLOCK`` entries (the last row zero-padded)."""
    flat = x.reshape(-1)
    pad = -flat.numel() % BLOCK
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, BLOCK)


#: mantissa bits of the lookup of :func:`_nearest`: a float32 in [0, 1] is looked up by its
#: exponent and top 8 mantissa bits (buckets 0.4 % wide, narrower than any gap of the maps)
_LOOKUP_BITS = 8
_ONE_BITS = 0x3F800000  # float32 1.0


@functools.lru_cache(maxsize=None)
def _lookup(bits: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(first, above)`` for :func:`_nearest` with the map of ``bits`` (7: the signed map's
    magnitudes, 8: the unsigned map), float32 and indexed by bucket (a float32's bits shifted
    right by ``23 - _LOOKUP_BITS``): ``first[b]``, the index among 0 and the map's positive side
    of the value nearest to bucket ``b``'s lower end, and ``above[b]``, the smallest float32 at
    or above the (exact) midpoint between that value and the next (inf after the last)."""
    side = _dynamic_map(bits == 7)
    side = side[side >= 0]
    mid = (side[1:] + side[:-1]) / 2
    up = mid.to(torch.float32)
    up = torch.where(up.double() < mid, torch.nextafter(up, torch.tensor(float("inf"))), up)
    shift = 23 - _LOOKUP_BITS
    lower = (torch.arange((_ONE_BITS >> shift) + 1, dtype=torch.int64) << shift).to(torch.int32).view(torch.float32)
    # the value nearest to the bucket's lower end: how many thresholds lie at or below it ...
    first = torch.searchsorted(up, lower, right=True)
    # ... and no bucket holds two thresholds, so one comparison finishes the job
    upper = torch.nextafter(lower * (1 + 2.0**-_LOOKUP_BITS), torch.tensor(0.0))
    assert int((torch.searchsorted(up, upper, right=True) - first).max()) <= 1
    above = torch.cat([up, up.new_full((1,), float("inf"))])[first]
    return first.to(torch.float32).to(device), above.to(device)


def _nearest(a: Tensor, first: Tensor, above: Tensor) -> Tensor:
    """For float32 ``a`` in [0, 1]: the index of the nearest value among 0 and the map's
    positive side (0 for zero, 1 for the smallest), exact up to ties (which go to the larger),
    as an integer-valued float32. A lookup on ``a``'s exponent and top mantissa bits gives
    the value nearest to its bucket's lower end and the threshold above it, one comparison the
    answer (the tables of :func:`_lookup`). Out-of-range bits (NaN) are clamped to the top
    bucket. Plain tensor ops on tables given as arguments: the compiled step runs this too,
    with the same result."""
    bucket = (a.view(torch.int32) >> (23 - _LOOKUP_BITS)).clamp_(0, first.shape[0] - 1)
    return _at(first, bucket) + (a >= _at(above, bucket)).to(torch.float32)


def _at(table: Tensor, idx: Tensor) -> Tensor:
    """``table[idx]`` for an int32 ``idx``: ``index_select`` eagerly (a third faster on a CPU
    than indexing with int64), indexing when traced (which Inductor fuses into its loop)."""
    if torch.compiler.is_compiling():
        return table[idx.long()]
    return table.index_select(0, idx.reshape(-1)).view(idx.shape)


def _quantize_blocks(blocks: Tensor, signed: bool, first: Tensor, above: Tensor) -> tuple[Tensor, Tensor]:
    """``(codes, absmax)`` of float32 ``blocks`` (rows of ``BLOCK`` entries, padding zero):
    codes shaped like them, one absmax per row (see :func:`quantize`); ``first, above``: the
    tables of :func:`_lookup` for the map."""
    absmax = blocks.abs().amax(1)
    y = blocks / absmax.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(1)
    if signed:
        return torch.copysign(_nearest(y.abs(), first, above), y).to(torch.int8), absmax
    return _nearest(y.clamp_min(0), first, above).to(torch.uint8), absmax


def _dequantize_blocks(codes: Tensor, absmax: Tensor, table: Tensor) -> Tensor:
    """The float32 values of ``codes`` (rows of ``BLOCK``) with one ``absmax`` per row;
    ``table``: the map (:func:`quantization_map`) of the codes' signedness."""
    idx = codes.to(torch.int32)  # (a new tensor: shifted in place)
    if codes.dtype == torch.int8:
        idx += 127
    return _at(table, idx) * absmax.to(torch.float32).unsqueeze(1)


def quant_tables(device: torch.device) -> tuple[Tensor, ...]:
    """What the compiled step needs to (de)quantize on ``device``: the signed and unsigned maps,
    then :func:`_lookup`'s tables for each."""
    return (_table(True, device), _table(False, device), *_lookup(7, device), *_lookup(8, device))


def quantize(x: Tensor, signed: bool = True) -> tuple[Tensor, Tensor]:
    """``(codes, absmax)``: codes shaped like ``x`` (int8 for the signed map, uint8 for the
    unsigned one) of the map value nearest to ``x / absmax``, with one float32 ``absmax`` per
    block of ``BLOCK`` entries of ``x.reshape(-1)``. Under the unsigned map negative entries
    are held as 0."""
    codes, absmax = _quantize_blocks(_blocks(x.to(torch.float32)), signed, *_lookup(7 if signed else 8, x.device))
    return codes.view(-1)[: x.numel()].view(x.shape), absmax


def dequantize(codes: Tensor, absmax: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """The values ``codes`` and ``absmax`` (from :func:`quantize`) stand for, shaped like ``codes``."""
    table = _table(codes.dtype == torch.int8, codes.device)
    vals = _dequantize_blocks(_blocks(codes), absmax, table)  # (padding: code 0, the value 0)
    return vals.view(-1)[: codes.numel()].view(codes.shape).to(dtype)


def _is_codes(st: dict, k: str) -> bool:
    v = st.get(k)
    return isinstance(v, Tensor) and v.dtype in (torch.int8, torch.uint8) and k + _SCALE in st


# ---------------------------------------------------------------------------------------------
# Rounding to 16-bit parameters
# ---------------------------------------------------------------------------------------------
_MASK32 = (1 << 32) - 1


def _hash_bits16(x: Tensor, seed: Tensor) -> Tensor:
    """16 random bits for each entry of ``x`` (int64 in ``[0, 2^16)``) in a compiled kernel: a
    32-bit integer hash (two rounds of xor-shift and multiply) of the entry's index xor
    ``seed``, drawn by the caller from torch's global generator (``torch.manual_seed`` repeats
    a run). Integer maths, which Inductor vectorises, where its CPU ``rand`` is computed one
    lane at a time (bfloat16 AdamW, 2.1 M parameters: 34 -> 7 ms a step). In int64 under
    32-bit masks: no product reaches 2^63 (no signed overflow in the generated C++)."""
    h = (torch.arange(x.numel(), device=x.device).view(x.shape) & _MASK32) ^ seed
    for _ in range(2):
        h = ((h ^ (h >> 16)) * 0x45D9F3B) & _MASK32
    return (h ^ (h >> 16)) & 0xFFFF


def stochastic_round(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` in ``dtype`` (bfloat16 / float16), rounded to one of its two neighbours there with
    probabilities proportional to closeness: unbiased, ``E[result] = x``. Uses torch's global
    random number generator (like dropout).

    float32 to bfloat16, the common case: bfloat16 is float32's upper half, so 16 random bits
    added to the bit pattern carry into the upper half -- the magnitude rounds up -- with
    probability (lower half) / 2^16, the distance to the lower neighbour over the gap; the
    lower half is then cleared (exact in bfloat16). Otherwise: the neighbour on the other side
    of ``x`` is the nearest value's bit pattern plus one (away from zero) or minus one (towards
    it), taken with probability distance over gap -- integer maths that a compiled kernel
    computes exactly as eager does, where ``nextafter`` in a 16-bit dtype would be computed in
    float32."""
    if dtype is torch.bfloat16 and x.dtype is torch.float32:
        # a finite or infinite value's pattern plus the bits stays within int32 (NaN's need
        # not: it keeps its own value); eager draws the bits from torch's generator, in place
        if torch.compiler.is_compiling():
            seed = torch.randint(0, 1 << 31, (), device=x.device)
            bits = ((x.view(torch.int32).to(torch.int64) + _hash_bits16(x, seed)) & -(1 << 16)).to(torch.int32)
        else:
            bits = torch.randint_like(x, 0, 1 << 16, dtype=torch.int32)
            bits.add_(x.view(torch.int32)).bitwise_and_(-(1 << 16))
        return torch.where(x.isnan(), x, bits.view(torch.float32)).to(dtype)
    near = x.to(dtype)
    back = near.to(x.dtype)
    bits = near.view(torch.int16)
    other = torch.where(back.abs() < x.abs(), bits + 1, bits - 1).view(dtype)
    # the chance of leaving the nearest value: distance to it over the gap (0 when exact;
    # NaN -- hence never -- for inf and NaN)
    frac = (x - back) / (other.to(x.dtype) - back)
    return torch.where(torch.rand_like(x) < frac, other, near)


# ---------------------------------------------------------------------------------------------
# The options of one optimizer
# ---------------------------------------------------------------------------------------------
class Precision:
    """An optimizer's low-precision options (checked here) and what they do to its state and
    its step (:meth:`piece` loads a piece of a bucket into working tensors and returns the
    write-back); :func:`hold_state` converts state to what they hold."""

    def __init__(self, state_dtype: torch.dtype | None = None, state_bits: int | None = None,
                 param_rounding: str | None = None) -> None:
        if state_dtype is not None and not (isinstance(state_dtype, torch.dtype) and state_dtype.is_floating_point
                                            and not state_dtype.is_complex):
            raise ValueError(f"Invalid state_dtype: {state_dtype!r} (state_dtype must be a floating-point "
                             "torch.dtype such as torch.bfloat16, or None to follow each parameter)")
        if state_bits is not None and (isinstance(state_bits, bool) or state_bits != 8):
            raise ValueError(f"Invalid state_bits: {state_bits!r} (state_bits must be 8 or None; for 16-bit "
                             "state pass state_dtype=torch.bfloat16)")
        if param_rounding is not None and param_rounding not in _ROUNDINGS:
            raise ValueError(f"Invalid param_rounding: {param_rounding!r} (param_rounding must be one of "
                             f"{_ROUNDINGS} or None)")
        self.state_dtype = state_dtype
        self.state_bits = state_bits
        self.param_rounding = param_rounding

    def __repr__(self) -> str:
        return (f"Precision(state_dtype={self.state_dtype}, state_bits={self.state_bits}, "
                f"param_rounding={self.param_rounding!r})")

    def check(self, opt) -> None:
        """Warn, once at construction, about an option that has nothing to act on."""
        name = type(opt).__name__
        if self.state_dtype is not None or self.state_bits is not None:
            if not any(t.moment_state for g in opt.param_groups for t in opt._chain(g)):
                what = "state_bits=8" if self.state_bits else f"state_dtype={self.state_dtype}"
                warnings.warn(f"{name}: {what} has nothing to act on: this optimizer's state holds no gradient "
                              "moments (parameter copies and step sizes stay full precision)",
                              RuntimeWarning, stacklevel=4)
        if self.param_rounding is not None and not any(_rounded(p) for g in opt.param_groups for p in g["params"]):
            warnings.warn(f"{name}: param_rounding={self.param_rounding!r} acts on bfloat16/float16 parameters, and "
                          "this optimizer has none (float32 parameters hold small updates already)",
                          RuntimeWarning, stacklevel=4)

    # -- what is held ------------------------------------------------------------------------
    def _target(self, p: Tensor, nonneg: bool) -> str | torch.dtype:
        """How a moment of ``p`` is held: ``"int8"`` / ``"uint8"`` (codes) or a dtype."""
        if self.state_bits == 8 and p.numel() >= MIN_QUANTIZED:
            return "uint8" if nonneg else "int8"
        return self.state_dtype or p.dtype

    # -- one piece of a step -----------------------------------------------------------------
    def piece(self, sel, params, grads, states, keys, names):
        """``(params, grads, state, names)`` of working tensors for the selection ``sel``
        (``(i, a, b)``: entries ``a:b`` of the bucket's i-th tensor; ``a`` None: all of it),
        and a function that writes them back to the parameters and the held state. ``sel``
        None: the whole bucket."""
        if sel is None:
            sel = [(i, None, None) for i in range(len(params))]
        ps, gs, nm = [], [], []
        work: dict[str, list] = {k: [] for k in keys}
        params_back: list[tuple] = []  # (parameter part, working copy, Kahan compensation or None)
        state_back: list[tuple] = []  # (held part, or (codes, absmax), working copy)
        for i, a, b in sel:
            p, g, st = params[i], grads[i], states[i]
            w = torch.promote_types(p.dtype, torch.float32)
            pv, gv = _part(p, p, a, b), _part(p, g, a, b)
            if pv.dtype != w and not pv.is_complex():
                x = pv.to(w)
                comp = _part(p, st[KAHAN], a, b) if self.param_rounding == "kahan" and KAHAN in st else None
                if comp is not None:
                    x.add_(comp)
                params_back.append((pv, x, comp))
                pv = x
            ps.append(pv)
            gs.append(gv if gv.dtype == w or gv.is_complex() else gv.to(w))
            nm.append(names[i])
            for k in keys:
                v = st.get(k)
                if _is_codes(st, k):
                    codes, absmax = _part(p, v, a, b), st[k + _SCALE]
                    if a is not None:
                        absmax = absmax[a // BLOCK: -(-b // BLOCK)]
                    v = dequantize(codes, absmax, w)
                    state_back.append(((codes, absmax), v))
                elif isinstance(v, Tensor) and v.shape == p.shape:
                    v = _part(p, v, a, b)
                    if v.dtype != w and v.is_floating_point() and not v.is_complex():
                        x = v.to(w)
                        state_back.append((v, x))
                        v = x
                work[k].append(v)

        def write_back() -> None:
            for held, x in state_back:
                if isinstance(held, tuple):
                    codes, absmax = held
                    new_codes, new_absmax = quantize(x, codes.dtype == torch.int8)
                    codes.copy_(new_codes)
                    absmax.copy_(new_absmax)
                else:
                    held.copy_(x)
            for pv, x, comp in params_back:
                if comp is not None:  # Kahan: the parameter to nearest, its rounding error kept
                    pv.copy_(x)
                    comp.copy_(x - pv.to(x.dtype))
                elif self.param_rounding == "stochastic":
                    pv.copy_(stochastic_round(x, pv.dtype))
                else:
                    pv.copy_(x)

        return (ps, gs, work, nm), write_back


def _rounded(p: Tensor) -> bool:
    """Whether ``p`` is a 16-bit floating-point parameter (``param_rounding`` acts on those)."""
    return p.dtype in (torch.bfloat16, torch.float16)


def _part(p: Tensor, t: Tensor, a: int | None, b: int | None) -> Tensor:
    """Entries ``a:b`` of ``t`` (a tensor shaped like ``p``, contiguous), or ``t`` for ``a`` None."""
    return t if a is None else t.view(-1)[a:b]


def hold_state(p: Tensor, st: dict, moments: dict[str, bool], precision: Precision | None,
               loaded: dict[str, Tensor] | None = None) -> None:
    """Bring the state ``st`` of ``p`` to what ``precision`` holds (None: the defaults, moments
    in ``p``'s dtype): moments are quantized, dequantized or cast; codes of entries that are
    no longer quantized are dequantized; the Kahan compensation is created for a 16-bit ``p``
    or, when not wanted, dropped (it is below the parameter's resolution). Idempotent.
    ``loaded``: the state as a ``state_dict`` stored it, before torch cast its tensors to
    ``p``'s dtype (the moments, codes and scales are taken from there, so nothing is lost)."""
    if loaded:
        for k, v in loaded.items():
            if k in st and isinstance(st[k], Tensor) and (k.endswith(_SCALE) or k + _SCALE in loaded or k in moments):
                st[k] = v.to(device=p.device, copy=True)
    for k in [k for k in st if isinstance(k, str) and not k.endswith(_SCALE)]:
        v = st[k]
        if not isinstance(v, Tensor) or v.shape != p.shape or p.is_complex():
            continue
        codes = _is_codes(st, k)
        if k in moments and precision is not None:
            target = precision._target(p, moments[k])
        elif codes or k in moments:
            target = p.dtype
        else:
            continue
        if isinstance(target, str):  # quantized
            want = torch.int8 if target == "int8" else torch.uint8
            if codes and v.dtype == want:
                continue
            x = dequantize(v, st.pop(k + _SCALE)) if codes else v
            st[k], st[k + _SCALE] = quantize(x, want == torch.int8)
        elif codes:
            st[k] = dequantize(v, st.pop(k + _SCALE), target)
        elif v.dtype != target:
            st[k] = v.to(target)
    kahan = precision is not None and precision.param_rounding == "kahan" and _rounded(p)
    if kahan and KAHAN not in st:
        st[KAHAN] = torch.zeros_like(p, memory_format=torch.preserve_format)
    elif not kahan and KAHAN in st:
        del st[KAHAN]


def is_held(st: dict) -> bool:
    """Whether a parameter's state holds quantized moments or a Kahan compensation."""
    return any(isinstance(k, str) and (k.endswith(_SCALE) or k == KAHAN) for k in st)


def is_aux(key: Any) -> bool:
    """Whether a state key is bookkeeping of these options (block scales, Kahan compensation),
    not state a transform reads."""
    return isinstance(key, str) and (key.endswith(_SCALE) or key == KAHAN)


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of tensor state an optimizer holds (every tensor in ``opt.state``, step counts
    included; a tensor subclass -- torchao's quantized state -- counted by its inner tensors)."""
    total = 0
    for st in opt.state.values():
        for v in st.values() if isinstance(st, dict) else ():
            total += _nbytes(v)
    return total


def _nbytes(v: Any) -> int:
    if not isinstance(v, Tensor):
        return 0
    if type(v) is not Tensor and hasattr(v, "__tensor_flatten__"):
        return sum(_nbytes(getattr(v, name)) for name in v.__tensor_flatten__()[0])
    return v.numel() * v.element_size()
