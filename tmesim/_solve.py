"""The one time loop: ``solve`` serves scenario runs, gradients, fits and benchmarks.

    solve(problem, values, y0=None, n_steps=N, start=k0, save=SaveAt(steps, fn))

advances the state from step ``start`` by ``n_steps`` steps of the problem's
stepper in one compiled call (diffrax's ``diffeqsolve`` and jax-cfd's
``trajectory`` are the models):

- an integer step clock: step k runs from t = k·dt to (k + 1)·dt, with t
  computed from k, so a run continued from any step repeats the
  uninterrupted one bit for bit;
- events (radiotherapy, injections) applied inside the loop from the
  problem's schedule arrays: the state stored for step k is the state after
  the events of step k;
- saving at the given steps (traced: a fit saves at its measurement times)
  through ``SaveAt.fn`` (observables, or the whole fields);
- a status carried through the loop (``Status``): the first non-finite value,
  negative cell density or value outside its bounds is reported with the
  step, field and voxel, and the state stays the last good one (the
  remaining steps of the call are computed and discarded: see ``advance``);
- reverse-mode memory bounded by nested checkpointing of the step scan,
  chosen apart from the saving: ``checkpoints = L`` splits the steps into L
  nested levels of about n^(1/L) each, every level and every step
  rematerialised, so a gradient stores about L·n^(1/L) states (one per
  segment boundary) instead of n, plus one state per RKL stage and cell
  sub-step of the step being differentiated, for about L extra forward
  passes.

Everything a user may fit or sweep is in ``values`` (a float pytree), never
in the static ``problem``, so new values never recompile and batch with vmap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._stepper import Stepper

NEGATIVE_TOLERANCE = 1e-6  # volume fraction: below −this a cell density counts as negative


class Problem:
    """What ``solve`` needs of a problem; subclasses are frozen, hashable dataclasses.

    stepper: the ``Stepper``; inputs(values, k): the stepper's parameters at
    step k; initial_state(values): the fields at step 0; event_aux(values):
    data the events need, computed once per solve; has_event(values, k) and
    apply_events(fields, values, k, aux): events scheduled for step k;
    check_values(values): a host-side check before the run (raises);
    values_ok(values): the same check traced (flags the status).
    """

    stepper: Stepper

    def inputs(self, values, k):
        return values

    def initial_state(self, values):
        raise ValueError(f"{type(self).__name__} has no initial state: pass y0")

    def event_aux(self, values):
        return None

    def has_event(self, values, k):
        return None

    def apply_events(self, fields, values, k, aux):
        return fields

    def check_values(self, values, where: str = "values") -> None:
        pass

    def values_ok(self, values):
        return jnp.asarray(True)


@dataclass(frozen=True)
class StepperProblem(Problem):
    """A bare ``Stepper`` as a problem: the values are the stepper's parameters."""

    stepper: Stepper

    def check_values(self, values, where: str = "values") -> None:
        """Diffusion coefficients may not exceed the design values the plan was built for."""
        D = values.get("diffusion") if isinstance(values, dict) else None
        if D is None or isinstance(D, jax.core.Tracer):
            return
        design = np.array([s.diffusion for s in self.stepper.table])
        over = np.asarray(D) > design * (1 + 1e-6) + 1e-12
        if over.any():
            names = [self.stepper.table.names[i] for i in np.flatnonzero(over)]
            raise ValueError(
                f"{where}: diffusion of {names} exceeds the design value the time-stepping plan "
                f"was built for ({design[over]} um^2/min); build the Stepper with the larger value"
            )


@partial(jax.tree_util.register_dataclass, data_fields=["steps"], meta_fields=["fn"])
@dataclass(frozen=True)
class SaveAt:
    """What to save and when: ``fn(problem, fields, values, step)`` at the absolute ``steps``.

    steps: (S,) integers (traced values allowed); a step equal to the solve's
    start saves the initial state; steps outside [start, start + n_steps]
    leave zeros; after a failure (``Status``) later steps save the last good
    state. fn: a module-level function (it is a static argument of the
    compiled loop: a new lambda per call would recompile) returning a pytree;
    None saves the fields (F, X, Y, Z).
    """

    steps: object
    fn: Callable | None = None


class Status(NamedTuple):
    """Outcome of a solve (int32 arrays; batched under vmap).

    code: OK, NONFINITE, NEGATIVE or OUT_OF_BOUNDS; step: the step whose state
    failed (0 for bounds); channel and voxel: where (flat index into X, Y, Z).
    """

    code: jax.Array
    step: jax.Array
    channel: jax.Array
    voxel: jax.Array

    OK = 0
    NONFINITE = 1
    NEGATIVE = 2
    OUT_OF_BOUNDS = 3


class Solution(NamedTuple):
    """fields: the state after the last good step; saved: ``SaveAt`` results
    (leading axis S); status: ``Status``."""

    fields: jax.Array
    saved: object
    status: Status

    @property
    def ok(self):
        return self.status.code == Status.OK

    def message(self, problem: Problem) -> str:
        """What went wrong, where and when, in words ('' when the solve succeeded)."""
        code = int(self.status.code)
        if code == Status.OK:
            return ""
        if code == Status.OUT_OF_BOUNDS:
            return "a value lies outside the bounds the plan was sized for (nothing was run)"
        st = problem.stepper
        grid = st.grid
        name = st.table.names[int(self.status.channel)]
        index = np.unravel_index(int(self.status.voxel), grid.shape)
        where = ", ".join(f"{axis} = {grid.centers(a)[index[a]]:g} um"
                          for a, axis in enumerate(grid.axis_names))
        step = int(self.status.step)
        what = "a non-finite value (NaN or inf)" if code == Status.NONFINITE else \
            "a negative density"
        return (f"{what} in {name} at voxel {tuple(int(i) for i in index)} ({where}) at step "
                f"{step} (t = {step * st.dt:g} min, day {step * st.dt / 1440.0:g})")


def checkpoint_levels(n_steps: int, levels: int) -> tuple[int, ...]:
    """Segment sizes of ``levels`` nested scans covering at least n_steps (outermost first)."""
    if n_steps <= 0:
        return (0,)
    levels = max(1, min(int(levels), max(1, math.ceil(math.log2(n_steps)))))
    inner = max(1, math.ceil(n_steps ** (1.0 / levels)))
    sizes = [inner] * (levels - 1)
    span = inner ** (levels - 1)
    return (math.ceil(n_steps / span), *sizes)


def _guard(stepper: Stepper, blocks, status: Status, step, ran):
    """Status after a step: the first non-finite value or negative cell density, located."""
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(b)) for b in blocks]))
    cells = [b for g, b in zip(stepper.groups, blocks) if g.method == "cell"]
    low = jnp.min(jnp.stack([jnp.min(b) for b in cells])) if cells else jnp.asarray(0.0)
    negative = low < -NEGATIVE_TOLERANCE
    failed = ran & (~finite | negative)

    def locate(_):
        f = stepper.merge(blocks)
        kinds = np.array([s.kind == "cell" for s in stepper.table])
        kinds = kinds.reshape((-1,) + (1,) * len(stepper.grid.shape))
        negative = jnp.asarray(kinds) & (f < -NEGATIVE_TOLERANCE)
        bad = jnp.where(finite, negative, ~jnp.isfinite(f))  # the failure the code names
        # the first bad channel, then its first bad voxel, by minima: on a grid split over
        # devices (``SlabStepper``) each is one all-reduce of a number, where an argmax
        # over the flattened fields gathered the whole mask onto every device
        n_ch, n_vox = bad.shape[0], int(np.prod(stepper.grid.shape))
        ch_ids = jnp.arange(n_ch, dtype=jnp.int32)
        channel = jnp.min(jnp.where(jnp.any(bad, axis=tuple(range(1, bad.ndim))), ch_ids, n_ch))
        voxels = jnp.arange(n_vox, dtype=jnp.int32).reshape(stepper.grid.shape)
        voxel = jnp.min(jnp.where(bad[channel], voxels, n_vox))
        return channel, voxel

    channel, voxel = jax.lax.cond(failed, locate, lambda _: (jnp.int32(0), jnp.int32(0)), None)
    code = jnp.where(finite, Status.NEGATIVE, Status.NONFINITE).astype(jnp.int32)
    new = Status(code, jnp.asarray(step, jnp.int32), channel, voxel)
    status = jax.tree_util.tree_map(lambda a, b: jnp.where(failed, a, b), new, status)
    return status, failed


@partial(jax.jit, static_argnames=("problem", "fn", "n_steps", "levels"))
def _solve(problem: Problem, fn, n_steps: int, levels: int, values, y0, start, save_steps):
    st = problem.stepper
    dtype = y0.dtype
    start = jnp.asarray(start, jnp.int32)
    stop = start + n_steps
    aux = problem.event_aux(values)
    zero = jnp.int32(0)
    bounds_ok = problem.values_ok(values)
    status = Status(jnp.where(bounds_ok, Status.OK, Status.OUT_OF_BOUNDS).astype(jnp.int32),
                    zero, zero, zero)

    def save_value(fields, step):
        return fields if fn is None else fn(problem, fields, values, step)

    steps = jnp.asarray(save_steps, jnp.int32).reshape(-1)
    shapes = jax.eval_shape(save_value, y0, start)
    saved = jax.tree_util.tree_map(lambda s: jnp.zeros((steps.shape[0],) + s.shape, s.dtype),
                                   shapes)

    # a step listed twice is written to its first slot and copied at the end
    first = jnp.argmax(steps[None, :] == steps[:, None], axis=1) if steps.shape[0] else None

    def save(saved, blocks, step):
        if first is None:
            return saved
        hit = steps == step

        def write(saved):
            value = save_value(st.merge(blocks), step)
            slot = jnp.argmax(hit)
            return jax.tree_util.tree_map(
                lambda buf, v: jax.lax.dynamic_update_index_in_dim(buf, v, slot, 0), saved, value)

        return jax.lax.cond(jnp.any(hit), write, lambda s: s, saved)

    def events(blocks, k):
        hit = problem.has_event(values, k)
        if hit is None:
            return blocks
        return jax.lax.cond(
            hit, lambda b: st.split(problem.apply_events(st.merge(b), values, k, aux)),
            lambda b: b, blocks)

    def step(carry, k):
        blocks, status, saved = carry
        ok = status.code == Status.OK
        run = (k < stop) & ok

        def advance(b):
            t = k.astype(dtype) * st.dt
            return events(st.step_blocks(b, problem.inputs(values, k), t), k + 1)

        # the nested levels may round the loop up: steps past the stop do nothing
        new = jax.lax.cond(k < stop, advance, lambda b: b, blocks)
        status, failed = _guard(st, new, status, k + 1, run)
        # A stopped or failing run keeps its last good state by one select, not by a
        # cond: under vmap the status differs between members, and a cond with a batched
        # predicate runs both branches and selects every input of each (the organoid at
        # 24³: 115 ms a member and step, 41 as computed and selected).
        accept = ok & ~failed
        blocks = jax.tree_util.tree_map(lambda x, y: jnp.where(accept, x, y), new, blocks)
        saved = jax.lax.cond(k < stop, lambda s: save(s, blocks, k + 1), lambda s: s, saved)
        return blocks, status, saved

    step = jax.checkpoint(step, prevent_cse=False)  # inside scans: no CSE across iterations anyway

    def level(carry, k0, sizes):
        if len(sizes) == 1:
            def body(c, j):
                return step(c, k0 + j), None
            return jax.lax.scan(body, carry, jnp.arange(sizes[0], dtype=jnp.int32))[0]
        span = int(np.prod(sizes[1:]))
        segment = jax.checkpoint(partial(level, sizes=sizes[1:]), prevent_cse=False)

        def body(c, i):
            return segment(c, k0 + i * span), None

        return jax.lax.scan(body, carry, jnp.arange(sizes[0], dtype=jnp.int32))[0]

    blocks = st.split(y0)
    saved = save(saved, blocks, start)
    carry = (blocks, status, saved)
    if n_steps > 0:
        carry = level(carry, start, checkpoint_levels(n_steps, levels))
    blocks, status, saved = carry
    if first is not None and steps.shape[0] > 1:  # one step cannot be listed twice
        saved = jax.tree_util.tree_map(lambda buf: buf[first], saved)
    return Solution(st.merge(blocks), saved, status)


@partial(jax.jit, static_argnums=0)
def start_state(problem: Problem, values):
    """The state of step 0: the initial fields after the events scheduled for step 0."""
    fields = problem.initial_state(values)
    hit = problem.has_event(values, 0)
    if hit is None:
        return fields
    aux = problem.event_aux(values)
    return jax.lax.cond(hit, lambda f: problem.apply_events(f, values, 0, aux), lambda f: f,
                        fields)


def solve(problem: Problem, values, y0=None, *, n_steps: int, start=0, save: SaveAt | None = None,
          checkpoints: int = 2) -> Solution:
    """Advance ``n_steps`` steps from step ``start``; one compiled call (see the module docstring).

    problem: static structure (``Setup.problem``, or ``StepperProblem(stepper)``);
    values: float pytree (``Setup.values``); y0: the state at step ``start``
    after its events (default: ``start_state``, for start = 0); n_steps: a
    Python int (it fixes the loop's length); start: the step clock's start
    (traced: chunks of one run share the compiled loop); save: ``SaveAt``;
    checkpoints: nesting levels of the reverse-mode checkpointing (1: store
    every step's state; 2: about 2√n states; each level costs one more
    forward pass in reverse mode).
    Values outside the problem's bounds raise ValueError here when concrete,
    and set ``Status.OUT_OF_BOUNDS`` (nothing runs) when traced.
    """
    if not isinstance(n_steps, (int, np.integer)) or n_steps < 0:
        raise ValueError(f"n_steps must be a non-negative Python int (it fixes the compiled "
                         f"loop's length), got {n_steps!r}")
    problem.check_values(values)
    if y0 is None:
        if not isinstance(start, jax.core.Tracer) and int(start) != 0:
            raise ValueError(f"solve(start={int(start)}): pass y0, the state at that step "
                             f"(without y0 the run starts from step 0's state)")
        y0 = start_state(problem, values)
    saving = SaveAt(jnp.zeros((0,), jnp.int32)) if save is None else save
    sol = _solve(problem, saving.fn, int(n_steps), int(checkpoints), values, jnp.asarray(y0),
                 start, saving.steps)
    return sol if save is not None else sol._replace(saved=None)


def simulate(stepper: Stepper, fields, params, n_steps: int, save_every: int | None = None):
    """Advance ``fields`` by ``n_steps`` steps of a bare stepper (``solve`` underneath).

    Returns ``(final, snapshots)`` with snapshots of shape
    (n_steps // save_every, F, X, Y, Z), the state after every ``save_every``
    steps. ``params`` are the stepper's parameters (its values). A run that
    fails (``Status``) raises FloatingPointError with the field, voxel and
    step when called outside a transformation; inside ``jit`` or ``grad`` use
    ``solve``, which returns the status.
    """
    save_every = n_steps if save_every is None else save_every
    if n_steps < 1 or save_every < 1 or n_steps % save_every:
        raise ValueError(
            f"n_steps ({n_steps}) must be a positive multiple of save_every ({save_every})"
        )
    steps = jnp.arange(save_every, n_steps + 1, save_every, dtype=jnp.int32)
    problem = StepperProblem(stepper)
    sol = solve(problem, params, fields, n_steps=n_steps, save=SaveAt(steps))
    if not isinstance(sol.status.code, jax.core.Tracer) and not sol.ok:
        raise FloatingPointError(f"simulate: {sol.message(problem)}")
    return sol.fields, sol.saved
