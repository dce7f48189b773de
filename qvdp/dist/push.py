"""The "push" backend of gather_rows: rows stored by SMs over NVLink into every peer's output, for the
GPUs of one host.

The outputs live in torch symmetric memory. Allocate them once, collectively, with `symmetric_empty`, and
pass them as `out=` on every call. Each rank stores its rows straight into their final rows of every
peer's output: no NCCL, no padding, no staging copy, no second pass. One host call enqueues the whole
gather (csrc/push.cu, when the extension is built); otherwise (or with QVDP_PUSH_IMPL=triton) the same
steps run as Triton kernels, one launch each. The QVDP_PUSH_* settings are read once, when this module is
imported (module attributes IMPL, PIPELINED_RELAY, PIECE_ROWS, BLOCKS_PER_SM, MARK, OWN_COPY after that).

Flag barriers order the steps: each rank stores the call's epoch into its slot of every peer's flag row
(system-scope release), then spins on its own row (system-scope acquire).

Relay (3+ GPUs): when one rank owns most rows (one image, a skewed batch), each large run is split into
shares, one per other rank. The owner stores each share once, to its helper, and the helpers forward the
shares to the remaining peers. The owner's NVLink egress becomes the run's size instead of (W-1) times it.

Barriers per call:
- direct plan: 2 (entry, exit);
- relay plan, several output buffers: 3 (entry, after the shares, exit);
- relay plan, one output buffer: the pipelined relay (the default; QVDP_PUSH_PIPELINE=0 turns it off): 2.
  One launch of copy units: the owner's stores of each piece (8 rows by default) to its helper set the
  piece's ready mark there (a release store after the block's barrier), and the helper's forwards of the
  piece wait for that mark. The owner's copy into its own output is interleaved with its relayed pieces.

The entry barrier orders the call after every rank's earlier work on its current stream. A caller that
reads the previous result on another stream must order that read before the next gather.

A rank that never arrives ends the wait after QVDP_PUSH_TIMEOUT_S seconds (default 300; read when the
group's first symmetric buffer is made). The waiting ranks then go on with incomplete rows, and count the
timeout in `push_errors(group)`.
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist

from .plan import ShardPlan

RELAY_MIN = 64      # runs shorter than this are sent whole (the relay adds a barrier)
ROWS = 16           # rows per program of the copy kernel (H200 sweep, session 8: 16 x 1024, 4 warps)
COLS = 1024
WARPS = 4
_DTYPES = {torch.bfloat16: 2, torch.float16: 2, torch.float32: 4}
READY_SLOTS = 1 << 16   # ready marks per rank for the pipelined relay (pieces x 4 KB column spans)
SPAN_BYTES = 4096       # csrc/push.cu kSpan
# The settings below are read from the environment once, at import; tests and diagnostics change the module
# attributes. They are part of the fast paths' keys (_settings).
# The pipelined relay (csrc/push.cu push_gather_pipelined: one launch of copy units ordered by ready marks)
# for relay plans; QVDP_PUSH_PIPELINE=0 gives the relay in two barrier-separated stages instead. On by
# default since session 13: on 4 x H200 it took 130 / 223 us back to back for one image / skewed against the
# two-stage relay's 161 / 288 (benchmarks/NOTES.md, session 13).
PIPELINED_RELAY = os.environ.get("QVDP_PUSH_PIPELINE", "1")
# Rows per piece of the pipelined relay (1-16; QVDP_PUSH_PIECE_ROWS): the unit of its ready marks. 4 since
# session 19: on 4 x H100 (diag_push, back to back) one image 142.7 us at 4 rows against 156.0 at 16, 145.7 at
# 8, 147.3 at 2, 150.0 at 1; skewed 225.0 against 268.1 / 233.6 / 248.7 / 250.2. A 16-row unit takes 230
# registers per thread (one 256-thread block per SM), a 4-row unit 55 (four blocks per SM; 40 and six since
# the launch bounds of csrc/push.cu, s19f: 142.1 / 219.1 us). 8 since session 20 (with "release" marks and the
# owner's copy mixed in, 4 x H200, s20c: one image 113.6 / 114.0 us at 8 rows against 120.9 / 119.7 at 4 and
# 116.2 / 115.6 at 2, skewed 192.0 / 192.0 against 193.9 / 194.4 and 192.7 / 190.9), with launch bounds for 8
# rows (64 registers, four blocks per SM).
PIECE_ROWS = int(os.environ.get("QVDP_PUSH_PIECE_ROWS", "8"))
# Resident blocks per SM of the pipelined relay's launch (0: as many as fit; QVDP_PUSH_BPS; diagnostics:
# capping them made the relay slower, session 19).
BLOCKS_PER_SM = int(os.environ.get("QVDP_PUSH_BPS", "0"))
# How the pipelined relay marks a piece ready (QVDP_PUSH_MARK; csrc/push.cu push_units_kernel): "release" (a
# block barrier, then one thread's release store) or "fence" (a sequentially consistent system fence before
# it, as before session 20; diagnostics). On 4 x H200 (s20a, diag_push back to back) one image 124.9 us
# against 132.4, skewed 203.1 against 216.3 (benchmarks/NOTES.md; a mark per warp, also tried, was level).
MARK = os.environ.get("QVDP_PUSH_MARK", "release")
# Where the owner's copy into its own output goes among its relay units (QVDP_PUSH_OWN; pipelined_units):
# "mixed" since session 20: on 4 x H200 (s20b, diag_push back to back, "release" marks) one image 119.8 us
# against 124.8 with the copy last, skewed 193.4 against 202.0; bench_gather one call 1.03x / 1.10x the floor
# against 1.11x / 1.10x (benchmarks/NOTES.md).
OWN_COPY = os.environ.get("QVDP_PUSH_OWN", "mixed")
# "triton": the Triton kernels even where the CUDA form is built (QVDP_PUSH_IMPL).
IMPL = os.environ.get("QVDP_PUSH_IMPL", "auto")


def _settings():
    """What changes what a call enqueues, part of the fast paths' keys: (pipelined relay on, rows per piece,
    resident blocks per SM, implementation, ready-mark kind, owner's copy placement)."""
    if not 1 <= PIECE_ROWS <= ROWS or not 0 <= BLOCKS_PER_SM <= 32:
        raise ValueError(f"QVDP_PUSH_PIECE_ROWS must be in 1..{ROWS} and QVDP_PUSH_BPS in 0..32, got "
                         f"{PIECE_ROWS}, {BLOCKS_PER_SM}")
    if MARK not in ("release", "fence") or OWN_COPY not in ("last", "mixed"):
        raise ValueError(f"QVDP_PUSH_MARK must be 'release' or 'fence' and QVDP_PUSH_OWN 'last' or 'mixed', got "
                         f"{MARK!r}, {OWN_COPY!r}")
    return PIPELINED_RELAY, PIECE_ROWS, BLOCKS_PER_SM, IMPL, MARK, OWN_COPY


_STATES = {}        # group key -> _GroupState
_KERNELS = {}


def _group_key(group):
    return "world" if group is None or group is dist.group.WORLD else id(group)


def _group_name(group):
    return (dist.group.WORLD if group is None else group).group_name


class _GroupState:
    """Per process group: the flag rows (symmetric int64 [W]), their peer addresses, the barrier epoch,
    the timeout counter, and the registry of symmetric output buffers."""

    def __init__(self, group, device):
        import torch.distributed._symmetric_memory as symm_mem
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        name = _group_name(group)
        if hasattr(symm_mem, "enable_symm_mem_for_group"):  # needed before torch 2.9, deprecated after
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                symm_mem.enable_symm_mem_for_group(name)
        self.flags = symm_mem.empty(self.world, dtype=torch.int64, device=device)
        self.flags.zero_()
        self.flags_hdl = symm_mem.rendezvous(self.flags, name)
        self.flag_peers = _peer_table(self.flags_hdl, self.world, (self.world,), torch.int64, device)
        self.ready = symm_mem.empty(READY_SLOTS, dtype=torch.int64, device=device)  # relay piece marks
        self.ready.zero_()
        self.ready_hdl = symm_mem.rendezvous(self.ready, name)
        self.ready_peers = _peer_table(self.ready_hdl, self.world, (READY_SLOTS,), torch.int64, device)
        self.errors = torch.zeros(1, dtype=torch.int32, device=device)
        self.epoch = 0
        self.timeout_ns = _timeout_ns()  # QVDP_PUSH_TIMEOUT_S when the group's first buffer is made
        self.calls = {}     # validated calls of the CUDA form: key -> (plan, extension, arguments but the local
        #                     outputs, buffers); no local tensor is kept alive
        self.buffers = {}   # data_ptr -> (tensor, handle, peer base table int64 [W] on device)
        torch.cuda.synchronize(device)
        dist.barrier(group=group)  # every flag row is zero before anyone signals


def _peer_addresses(hdl, world, shape, dtype):
    return [hdl.get_buffer(r, shape, dtype).data_ptr() for r in range(world)]


def _peer_table(hdl, world, shape, dtype, device):
    return torch.tensor(_peer_addresses(hdl, world, shape, dtype), dtype=torch.int64, device=device)


def _state(group, device=None):
    key = _group_key(group)
    st = _STATES.get(key)
    if st is None:
        if device is None:
            return None
        st = _STATES[key] = _GroupState(group, device)
    return st


def symmetric_empty(rows: int, width: int, dtype=torch.bfloat16, group=None, device=None) -> torch.Tensor:
    """A [rows, width] output buffer in torch symmetric memory, for gather_rows(..., out=buf).

    Collective: every rank of `group` (NCCL, GPUs of one host) calls it with the same arguments. Allocate
    once with rows >= the largest plan's total_rows; each gather writes rows [0, total_rows). Needs
    peer access over NVLink (torch symmetric memory); raises RuntimeError where that is unavailable."""
    from .gather import group_backend
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("symmetric_empty needs an initialised torch.distributed process group")
    if group_backend(group) != "nccl":
        raise ValueError(f"symmetric_empty needs an NCCL group of CUDA ranks, got backend {group_backend(group)!r}")
    if not (isinstance(rows, int) and isinstance(width, int)) or rows < 1 or width < 1:
        raise ValueError(f"rows and width must be positive ints, got rows={rows!r}, width={width!r}")
    if dtype not in _DTYPES:
        raise TypeError(f"dtype must be one of {sorted(str(d) for d in _DTYPES)}, got {dtype}")
    import torch.distributed._symmetric_memory as symm_mem
    device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    st = _state(group, device)
    buf = symm_mem.empty(rows, width, dtype=dtype, device=device)
    hdl = symm_mem.rendezvous(buf, _group_name(group))
    ptrs = _peer_addresses(hdl, st.world, (rows, width), dtype)
    if ptrs[st.rank] != buf.data_ptr():
        raise RuntimeError("symmetric memory returned a different local address for this rank's buffer")
    st.buffers[buf.data_ptr()] = (buf, hdl, torch.tensor(ptrs, dtype=torch.int64, device=device))
    return buf


def push_errors(group=None) -> int:
    """How many flag-barrier waits of this rank timed out (a peer never arrived). Synchronises."""
    st = _state(group)
    return 0 if st is None else int(st.errors.item())


def symmetric_buffer_for(t, group=None):
    """(buffer, handle, peer table) when `t` starts at the base of a buffer from symmetric_empty for `group`."""
    st = _state(group)
    if st is None or not isinstance(t, torch.Tensor):
        return None
    return st.buffers.get(t.data_ptr())


# ---- plans ----------------------------------------------------------------------------------------------
def relay_shares(runs, world):
    """Per run (owner, local start, out start, rows, shares): shares None for a run sent whole (fewer
    than RELAY_MIN rows, or no second helper), else [(helper, out start, rows)]: the run split evenly
    among the non-owner ranks, each share first stored to its helper, which forwards it to the others."""
    for s, ls, os_, n in runs:
        helpers = [r for r in range(world) if r != s]
        if n < RELAY_MIN or len(helpers) < 2:
            yield s, ls, os_, n, None
            continue
        base, extra = divmod(n, len(helpers))
        shares, o = [], os_
        for i, h in enumerate(helpers):
            c = base + (i < extra)
            if c:
                shares.append((h, o, c))
            o += c
        yield s, ls, os_, n, shares


def use_relay(plan: ShardPlan) -> bool:
    """Relay when it cuts the largest NVLink egress of any rank by a quarter or more (one owner of most
    rows); balanced plans send directly (the same bytes, one barrier fewer)."""
    w = plan.world_size
    if w < 3:
        return False
    direct = max((w - 1) * plan.rows(r) for r in range(w))
    egress = [0] * w
    for s, ls, os_, n, shares in relay_shares(plan.all_runs(), w):
        if shares is None:
            egress[s] += (w - 1) * n
        else:
            egress[s] += n
            for h, o, c in shares:
                egress[h] += (w - 2) * c
    return max(egress) <= 0.75 * direct


def prefer_push(plan: ShardPlan, one_buffer: bool = True) -> bool:
    """Whether "auto" (with out=) takes the push gather over NCCL for this plan. Measured (bench_gather,
    diag_push; benchmarks/NOTES.md, sessions 9, 13, 19 and 20, 2 and 4 x H200, 2 and 4 x H100):
    - on 2 GPUs push runs 16-25% under the floor on balanced plans, and at the link's one-way rate where one
      rank owns most rows; where one rank owns every row (one image), NCCL's single broadcast into `out` won
      in one call in five of six runs (sessions 18-20, on 2 x H100 and on two GPUs of 4 x H100 and 4 x H200
      boxes: 0.91-1.07x the floor against push's 1.12-1.21x; push won once, 1.12x against 1.32x, s19c), so
      "auto" takes NCCL there (s20f, 2 x H200: 0.81x against push's 1.13x);
    - on 4 GPUs it wins on the direct (non-relay) plans: 4 x 720p at 0.86x the floor back to back,
      against NCCL's 1.00x;
    - relay plans on 3+ GPUs: the pipelined relay (one output buffer: layout "concat", or a list of one).
      Session 20 (release marks, the owner's copy mixed in, 8-row pieces), 4 x H200, one call as
      bench_gather times it, two runs (s20d / s20e): one image 1.09x / 1.09x the floor against NCCL's
      grouped broadcasts' 1.52x / 1.45x, skewed 1.10x / 1.15x against 1.48x / 1.41x; back to back the relay
      is level with NCCL's single broadcast for one image (115-127 vs 112 us) and ahead for skewed (193-208
      vs 239 us; diag_push s20d).
      tune=True measures the choice on the machine at hand."""
    if plan.world_size == 2:
        return min(plan.rows(0), plan.rows(1)) > 0
    return not use_relay(plan) or (one_buffer and pipelined_mode(plan))


def push_items(plan: ShardPlan, rank: int, relay: bool | None = None):
    """(relay, stage1, stage2): copy items (dst rank, src row, dst row, rows) of this rank.
    stage1 sources are this rank's local rows (own rows into its own output, small runs and whole runs
    to every peer, shares to their helpers); stage2 sources are this rank's output rows (the shares it
    forwards). Without relay, stage2 is empty."""
    w = plan.world_size
    relay = use_relay(plan) if relay is None else relay
    s1 = [(rank, ls, os_, n) for ls, os_, n in plan.runs(rank)]
    s2 = []
    for s, ls, os_, n, shares in relay_shares(plan.all_runs(), w):
        peers = [r for r in range(w) if r != s]
        if shares is None or not relay:
            if s == rank:
                s1 += [(d, ls, os_, n) for d in peers]
            continue
        for h, o, c in shares:
            if s == rank:
                s1.append((h, ls + (o - os_), o, c))
            if h == rank:
                s2 += [(d, o, o, c) for d in peers if d != h]
    return relay, s1, s2


def pipelined_units(plan: ShardPlan, rows: int = ROWS, own: str = "mixed") -> dict:
    """{rank: [unit]} of the pipelined relay, every unit (dst rank, src row, dst row, rows <= `rows`,
    src (-1: the rank's local rows, else that rank's output buffer), wait slot (-1: none), notify mask,
    notify slot); each rank's list in depth order: units that never wait (its own rows, whole runs, and each
    relayed piece stored to its helper, which is notified), then the helper's forwards of those pieces to
    the other ranks (each waits for its piece's mark). Slots are unique within the call. Relayed pieces are
    interleaved over the helpers in piece order, forwards over their destinations. own: where the owner's
    copy of a relayed run into its own output goes among its units: "last" (after every relayed piece) or
    "mixed" (its pieces interleaved with the relayed ones, one per relayed piece)."""
    w = plan.world_size
    depth = {r: ([], []) for r in range(w)}
    slots = iter(range(1 << 30))
    for s, ls, os_, n, shares in relay_shares(plan.all_runs(), w):
        peers = [r for r in range(w) if r != s]
        for k in range(0, n, rows):  # the owner's own copy
            p = k // rows
            key = (0, p // (w - 1) * rows, w - 1 + p % (w - 1)) if own == "mixed" and shares else (1, os_ + k)
            depth[s][0].append((key, (s, ls + k, os_ + k, min(rows, n - k), -1, -1, 0, -1)))
        if shares is None:  # sent whole: a store to every peer
            for k in range(0, n, rows):
                for d in peers:
                    depth[s][0].append(((1, os_ + k, d), (d, ls + k, os_ + k, min(rows, n - k), -1, -1, 0, -1)))
            continue
        for i, (h, o, cnt) in enumerate(shares):
            for k in range(0, cnt, rows):
                c, lr, oo, sl = min(rows, cnt - k), ls + (o - os_) + k, o + k, next(slots)
                depth[s][0].append(((0, k, i), (h, lr, oo, c, -1, -1, 1 << h, sl)))
                for d in peers:
                    if d != h:
                        depth[h][1].append(((k, d), (d, oo, oo, c, h, sl, 0, -1)))
    return {r: [u for dep in depth[r] for _, u in sorted(dep, key=lambda e: e[0])] for r in range(w)}


def pipelined_mode(plan: ShardPlan) -> bool:
    """Whether the push gather runs this plan as the pipelined relay (relay plans, unless QVDP_PUSH_PIPELINE=0)."""
    return PIPELINED_RELAY != "0" and use_relay(plan)


def _round_robin(per: dict, rank: int, world: int) -> list:
    """Items of every destination, one from each in turn, destinations in the order rank+1, rank+2, ..."""
    order = sorted((d for d in per if per[d]), key=lambda d: (d - rank - 1) % world)
    out = []
    for i in range(max((len(per[d]) for d in order), default=0)):
        out += [per[d][i] for d in order if i < len(per[d])]
    return out


def _chunks(items, device, rows=ROWS, rank=0, world=1):
    """int64 [n, 4] table of chunks of <= `rows` rows (n may be 0), ordered round-robin over the
    destinations, starting at rank+1: blocks run roughly in table order, so every peer's link is busy
    at once instead of all ranks storing into the same peer first (4 GPUs: 3 senders into one GPU;
    4 x 720p on 4 x H200: -12% against destination after destination, benchmarks/NOTES.md session 9)."""
    per = {}
    for d, r0, d0, n in items:
        for k in range(0, n, rows):
            per.setdefault(d, []).append((d, r0 + k, d0 + k, min(rows, n - k)))
    out = _round_robin(per, rank, max(world, 1))
    return torch.tensor(out, dtype=torch.int64, device=device).reshape(-1, 4)


def _pipelined_table(plan, rank, device, width_bytes, rows, own="mixed"):
    """int64 [n, 8] units of this rank (pipelined_units with pieces of `rows` rows, the owner's copy placed
    as `own` says), or None when the call's ready marks (one per piece and span) do not fit READY_SLOTS."""
    spans = -(-width_bytes // SPAN_BYTES)
    units = plan.memo(("push-units", rows, own), lambda: pipelined_units(plan, rows, own))
    nslots = 1 + max((u[7] for us in units.values() for u in us), default=-1)
    if nslots * spans > READY_SLOTS or plan.world_size > 63:
        return None
    return plan.memo(("push-units-table", rank, str(device), rows, own),
                     lambda: torch.tensor(units[rank], dtype=torch.int64, device=device).reshape(-1, 8))


def _device_items(plan, rank, device):
    def build():
        relay, s1, s2 = push_items(plan, rank)
        w = plan.world_size
        return relay, _chunks(s1, device, ROWS, rank, w), _chunks(s2, device, ROWS, rank, w)
    return plan.memo(("push", rank, str(device), ROWS), build)


# ---- kernels --------------------------------------------------------------------------------------------
def copy_kernel():
    if "copy" in _KERNELS:
        return _KERNELS["copy"]
    import triton
    import triton.language as tl

    @triton.jit
    def _push_rows(SRC, PEERS, CHUNKS, dst_col, WIDTH: tl.constexpr, SRC_STRIDE: tl.constexpr,
                   DST_STRIDE: tl.constexpr, ELT: tl.constexpr, ALIGNED: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
        # CHUNKS int64 [n, 4]: destination rank, source row, destination row, rows (<= ROWS).
        # PEERS int64 [W]: base address of the destination buffer on every rank. Raw bits are copied.
        c = tl.program_id(0)
        cb = tl.program_id(1)
        d = tl.load(CHUNKS + c * 4 + 0)
        r0 = tl.load(CHUNKS + c * 4 + 1)
        d0 = tl.load(CHUNKS + c * 4 + 2)
        n = tl.load(CHUNKS + c * 4 + 3)
        base = tl.load(PEERS + d)
        if ELT == 2:
            sp = SRC.to(tl.pointer_type(tl.int16))
            dp = base.to(tl.pointer_type(tl.int16))
        else:
            sp = SRC.to(tl.pointer_type(tl.int32))
            dp = base.to(tl.pointer_type(tl.int32))
        rows = tl.arange(0, ROWS)
        cols = cb * COLS + tl.arange(0, COLS)
        m = (rows < n)[:, None] & (cols < WIDTH)[None, :]
        v = tl.load(sp + (r0 + rows)[:, None] * SRC_STRIDE + cols[None, :], mask=m)
        # the destination base comes from an int64 table: tell the compiler it is 16-byte aligned (every
        # CUDA allocation is; dst_col and DST_STRIDE keep it so when they are multiples of 16 bytes)
        dst = dp + (d0 + rows)[:, None] * DST_STRIDE + dst_col + cols[None, :]
        if ALIGNED:
            dst = tl.multiple_of(dst, [16, 16])  # bytes
        tl.store(dst, v, mask=m)

    _KERNELS["copy"] = _push_rows
    return _push_rows


def barrier_kernel():
    if "barrier" in _KERNELS:
        return _KERNELS["barrier"]
    import triton
    import triton.language as tl
    from triton.language.extra.cuda import globaltimer

    @triton.jit
    def _flag_barrier(FLAGS, ERRORS, rank, epoch, timeout_ns, WORLD: tl.constexpr):
        # FLAGS int64 [W]: addresses of every rank's int64 [W] flag row. Signal: store the epoch into slot
        # `rank` of every row (release, system scope). Wait until every slot of this rank's row holds the
        # epoch or a later one (acquire); give up after timeout_ns and count it in ERRORS.
        for i in tl.static_range(WORLD):
            p = tl.load(FLAGS + i).to(tl.pointer_type(tl.int64))
            tl.atomic_xchg(p + rank, epoch, sem="release", scope="sys")
        me = tl.load(FLAGS + rank).to(tl.pointer_type(tl.int64))
        t0 = globaltimer()
        late = 0
        for i in tl.static_range(WORLD):
            v = tl.atomic_add(me + i, 0, sem="acquire", scope="sys")
            while (v < epoch) & (late == 0):
                v = tl.atomic_add(me + i, 0, sem="acquire", scope="sys")
                if globaltimer() - t0 > timeout_ns:
                    late = 1
        if late != 0:
            tl.atomic_add(ERRORS, 1)

    _KERNELS["barrier"] = _flag_barrier
    return _flag_barrier


def _timeout_ns():
    return int(float(os.environ.get("QVDP_PUSH_TIMEOUT_S", "300")) * 1e9)


def _native():
    """The CUDA form from csrc/push.cu when the extension is built (one host call per gather), else None."""
    if IMPL == "triton":
        return None
    try:
        from .. import _C
    except Exception:  # noqa: BLE001
        return None
    return _C if hasattr(_C, "push_gather") else None


def flag_barrier(st: _GroupState, impl: str = "auto"):
    """One flag barrier on the current stream ("auto": the CUDA kernel when built, else Triton's)."""
    st.epoch += 1
    nat = _native() if impl != "triton" else None
    if nat is not None:
        nat.push_flag_barrier(st.flag_peers, st.errors, st.rank, st.world, st.epoch, st.timeout_ns)
        return
    barrier_kernel()[(1,)](st.flag_peers, st.errors, st.rank, st.epoch, st.timeout_ns, WORLD=st.world, num_warps=1)


def _launch(src, peers, chunks, dst_stride, dst_col, width):
    if chunks.shape[0] == 0:
        return
    grid = (chunks.shape[0], -(-width // COLS))
    elt = src.element_size()
    aligned = (dst_col * elt) % 16 == 0 and (dst_stride * elt) % 16 == 0
    copy_kernel()[grid](src, peers, chunks, dst_col, WIDTH=width, SRC_STRIDE=src.stride(0), DST_STRIDE=dst_stride,
                        ELT=elt, ALIGNED=aligned, ROWS=ROWS, COLS=COLS, num_warps=WARPS)


# ---- the gather -----------------------------------------------------------------------------------------
def check_push_out(out, local_outputs, plan: ShardPlan, group, layout: str):
    """Validate `out` for the push backend (before any communication); return [(buffer, peers)] per output
    buffer, one for layout "concat", one per local output for "list"."""
    st = _state(group)
    if st is None:
        raise ValueError("backend 'push' needs out= buffers from qvdp.dist.symmetric_empty(..., group=group)")
    ref = local_outputs[0]
    widths = [t.shape[1] for t in local_outputs]
    if layout == "concat":
        outs, want = ([out] if isinstance(out, torch.Tensor) else out), [sum(widths)]
    else:
        outs, want = out, widths
    if not isinstance(outs, (list, tuple)) or len(outs) != len(want):
        raise TypeError(f"out must be {'one tensor' if layout == 'concat' else f'a list of {len(want)} tensors'} "
                        f"from symmetric_empty for layout {layout!r}")
    res = []
    for i, (o, w) in enumerate(zip(outs, want)):
        reg = symmetric_buffer_for(o, group)
        if reg is None:
            raise ValueError(f"out[{i}] is not (the start of) a buffer from qvdp.dist.symmetric_empty for this group")
        if o.ndim != 2 or o.shape[1] != w or o.stride(1) != 1 or o.stride(0) != w:
            raise ValueError(f"out[{i}] must be a contiguous [rows >= {plan.total_rows}, {w}] buffer, "
                             f"got shape {tuple(o.shape)} strides {o.stride()}")
        if o.shape[0] < plan.total_rows:
            raise ValueError(f"out[{i}] has {o.shape[0]} rows; the plan gathers {plan.total_rows}")
        if o.dtype != ref.dtype or o.device != ref.device:
            raise TypeError(f"out[{i}] is {o.dtype} on {o.device}; the local outputs are {ref.dtype} on {ref.device}")
        res.append((o, reg[2]))
    if ref.element_size() not in (2, 4) or ref.dtype not in _DTYPES:
        raise TypeError(f"backend 'push' gathers {sorted(str(d) for d in _DTYPES)}, got {ref.dtype}")
    return res


def _sig(t):
    return t.data_ptr(), t.shape, t.stride(), t.dtype, t.device


def _call_key(local_outputs, plan, group, layout, out, backend):
    outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
    return (_group_key(group), id(plan), layout, backend, _settings(), tuple(_sig(t) for t in local_outputs),
            tuple(_sig(o) if isinstance(o, torch.Tensor) else id(o) for o in outs))


def push_fast_path(local_outputs, plan: ShardPlan, group, layout: str, out, backend: str = "push"):
    """The same call as an earlier, validated one (same group, plan object, layout, and local and out
    tensors with the same address, shape, strides, dtype and device): enqueue it again without
    re-validating or re-planning (~10-20 µs less host time per call). None when there is no such call."""
    run = push_runner(local_outputs, plan, group, layout, out, backend)
    return None if run is None else run(local_outputs)


def push_runner(local_outputs, plan: ShardPlan, group, layout: str, out, backend: str = "push"):
    """After a validated call of the CUDA form with these arguments: a function runner(local_outputs) that
    enqueues the same call for local tensors of the same address, shape, strides, dtype and device, and
    returns the same result views (gather_rows keeps it for repeats of the call); None when there is no such
    call."""
    st = _STATES.get(_group_key(group))
    if st is None or not st.calls or not isinstance(local_outputs, (list, tuple)) \
            or not all(isinstance(t, torch.Tensor) for t in local_outputs):
        return None
    try:
        hit = st.calls.get(_call_key(local_outputs, plan, group, layout, out, backend))
    except TypeError:
        return None
    if hit is None:
        return None
    _plan, nat, args, bufs = hit
    views = result_views(bufs, plan, layout)
    if args[0] == "pipelined":
        _, a, tail = args

        def run(local):
            st.epoch = nat.push_gather_pipelined(local[0], *a, st.epoch, *tail)
            return views
        return run
    b, timeout = args[:-1], args[-1]

    def run_items(local):
        st.epoch = nat.push_gather(list(local), *b, st.epoch, timeout)
        return views
    return run_items


def result_views(bufs, plan: ShardPlan, layout: str):
    """The gather's result: views [total_rows, width] of the output buffers (one tensor for "concat")."""
    views = [b[:plan.total_rows] for b in bufs]
    return views[0] if layout == "concat" else views


def _remember(st, key, entry):
    """Keep a validated call for the fast path (at most 64)."""
    if len(st.calls) >= 64:
        st.calls.clear()
    st.calls[key] = entry


def gather_rows_push(local_outputs, plan: ShardPlan, group, layout: str, out, backend: str = "push"):
    """The push gather; returns views [total_rows, width] of the out buffers (list or one tensor).
    backend: what the caller asked for ("push" or "auto"), part of the fast path's key."""
    bufs = check_push_out(out, local_outputs, plan, group, layout)
    st = _state(group)
    relay, s1, s2 = _device_items(plan, st.rank, bufs[0][0].device)
    pairs = []  # (source, destination buffer, its peer table, destination column)
    col = 0
    for i, t in enumerate(local_outputs):
        b, peers = bufs[0] if layout == "concat" else bufs[i]
        pairs.append((t, b, peers, col if layout == "concat" else 0))
        col += t.shape[1]
    nat = _native()
    eb = local_outputs[0].element_size()
    pipelined = nat is not None and len(pairs) == 1 and pairs[0][3] == 0 and \
        pairs[0][0].shape[1] == bufs[0][0].shape[1] and pipelined_mode(plan)
    _, rows, bps, _, mark, own = _settings()
    table = _pipelined_table(plan, st.rank, bufs[0][0].device, bufs[0][0].shape[1] * eb, rows, own) \
        if pipelined else None
    if table is not None:  # the pipelined relay: 2 barriers, copy units ordered by ready marks
        t, b, peers, _ = pairs[0]
        head = (peers, b, b.stride(0) * eb, table, st.ready_peers, st.flag_peers, st.errors, st.rank, st.world)
        tail = (st.timeout_ns, rows, bps, mark == "fence")  # the arguments after the epoch
        st.epoch = nat.push_gather_pipelined(t, *head, st.epoch, *tail)
        _remember(st, _call_key(local_outputs, plan, group, layout, out, backend),
                  (plan, nat, ("pipelined", head, tail), [b for b, _ in bufs]))
        return result_views([b for b, _ in bufs], plan, layout)
    if nat is not None:  # one host call enqueues the barriers and copies (csrc/push.cu)
        args = ([p for _, _, p, _ in pairs],
                [b.stride(0) * eb for _, b, _, _ in pairs], [c * eb for _, _, _, c in pairs],
                s1, [b for b, _ in bufs], [p for _, p in bufs], s2, relay,
                st.flag_peers, st.errors, st.rank, st.world, st.timeout_ns)
        st.epoch = nat.push_gather(list(local_outputs), *args[:-1], st.epoch, args[-1])
        _remember(st, _call_key(local_outputs, plan, group, layout, out, backend),
                  (plan, nat, args, [b for b, _ in bufs]))
        return result_views([b for b, _ in bufs], plan, layout)
    flag_barrier(st, "triton")  # every peer is past its earlier use of its output
    for t, b, peers, c in pairs:
        _launch(t, peers, s1, b.stride(0), c, t.shape[1])
    flag_barrier(st, "triton")  # every row (or, with the relay, every share) has landed
    if relay:
        for b, peers in bufs:  # forward the shares this rank holds, all columns at once
            _launch(b, peers, s2, b.stride(0), 0, b.shape[1])
        flag_barrier(st, "triton")
    return result_views([b for b, _ in bufs], plan, layout)
