"""Calibration: ``tmesim fit PROBLEM`` and ``tmesim.fit``.

The objective is PEtab's negative log-likelihood (NLL) of the measurements
(``tmesim._petab``) plus the priors' negative log densities, as a function of
the estimated parameters on their scale (log, log10, logit or lin): the
optimiser's coordinates. One call of the objective runs every condition of the
problem through ``tmesim.solve`` (conditions that share their structure under
one ``vmap``), so a loss and its exact gradient are one compiled program, and
new parameter values never recompile (``Objective.traces`` counts the traces).

The fit, in stages, each written to the result file when it completes a step
(so a fit killed at any moment resumes from its last iteration):

1. ``optimise``: multi-start L-BFGS (optax, zoom line search) or Adam from
   a Latin hypercube on the parameter scale, prior draws, or the nominal
   values perturbed by a factor (a start where the objective is not finite is
   drawn again); ``batch`` starts to a compiled call (under ``vmap``; with
   ``devices``, the batch split over them by ``over_devices``), ``workers``
   calls at once on threads (on a CPU: one start a call, one call a core),
   this thread keeping the state and writing the file. A step whose
   update or value is not finite, or (L-BFGS) that does not lower the value,
   is rejected: the start keeps its point and L-BFGS restarts its memory
   there. Bounds are held by an active set. A start stops after two
   rejections in a row, when its largest projected gradient entry is below
   ``tolerance``, or after ``iterations``.
2. ``polish``: trust-region Newton steps from the best start, each with the
   Hessian by differences of the exact gradient (``_polish``).
3. ``laplace``: the Hessian of the NLL at the best point by central
   differences of the exact gradient (2P gradients; the polish's last one
   when it has it), its inverse the covariance on the parameter scale
   (Laplace's approximation); Wald intervals.
4. ``profiles``: for each profiled parameter, points on both sides of the
   optimum at which the others are re-optimised (started on the path the
   Laplace Hessian predicts, then trust-region steps from that Hessian with
   SR1 updates); the 95% interval is where the profile rises
   by χ²₁(0.95)/2 = 1.92; a profile that stays below that on a side is
   flagged: not identifiable there. A profile point with a lower NLL than
   the optimum's (by more than LOWER) means the polish stopped at a local
   minimum: the profiles stop there (the points under way are dropped), and
   the fit goes back to stage 2 from the lowest finished point, up to
   ``restarts`` times, and lays the profiles out again from there.
5. ``done``: the simulated observables of every condition on a fine time
   grid and at the measurement times (residuals), and the fitted parameter set
   as a TOML file a scenario can name (``parameters_file``).

With ``hierarchical``, noise parameters that are the whole noise formula of
their measurements are not coordinates: ``Objective.evaluate`` sets each to its
closed-form optimum given the model (pyPESTO's hierarchical optimisation).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._devices import each_process, everywhere, first_process, over_devices, select_devices
from ._observables import OBSERVABLES, observables
from ._parameters import set_values
from ._petab import FitProblem, ProblemError, load_problem, noise_placeholder
from ._run import Interrupted, RunError, _check_stop, _together, agreed, build, tell
from ._scenario import MIN_PER_DAY, load_scenario
from ._solve import SaveAt, solve

CHI2_95 = 3.841458820694124  # χ²₁ quantile at 0.95: a profile interval is Δ NLL ≤ CHI2_95 / 2
RESULT_FORMAT = 2  # 2: per-start iterations and optimiser state (starts run in parallel)
STAGES = ("optimise", "polish", "laplace", "profiles", "done")
REJECTIONS = 2  # consecutive rejected steps after which a start stops (the second from a
#                 fresh memory: a scaled steepest descent whose line search failed too)
LINESEARCH_STEPS = 12  # zoom line-search evaluations per L-BFGS iteration at most
POLISH_RADIUS = 0.05  # first trust region of the polish: ‖step / (upper − lower)‖
LOWER = 1e-3  # a profile point this far below the optimum's NLL shows a lower minimum
POLISH_DECREASE = 1e-6  # the polish stops when its model predicts a smaller NLL decrease
POLISH_STALL = (5, 1e-3)  # ... or when its last 5 steps lowered the NLL by less than 1e-3
PLOT_EVERY_DAYS = 0.25


class FitError(RunError):
    """A fit that cannot go on (its result file, or a problem it cannot evaluate)."""


# --------------------------------------------------------------------------
# parameter scales
def to_scale(x, scale, xp=np):
    if scale == "log":
        return xp.log(x)
    if scale == "log10":
        return xp.log10(x)
    if scale == "logit":
        return xp.log(x) - xp.log1p(-x)
    return x


def from_scale(z, scale, xp=np):
    if scale == "log":
        return xp.exp(z)
    if scale == "log10":
        return 10.0 ** z
    if scale == "logit":
        return 1.0 / (1.0 + xp.exp(-z))
    return z


def _prior_nll(kind, a, b, x, z):
    """Negative log density of a PEtab prior at the linear value x (scaled value z)."""
    if kind.startswith("parameterScale"):
        v, kind = z, kind[len("parameterScale"):].lower()
    else:
        v = x
    if kind == "uniform":
        return jnp.where((v >= a) & (v <= b), jnp.log(b - a), jnp.inf)
    if kind == "normal":
        return 0.5 * jnp.log(2 * jnp.pi * b * b) + 0.5 * ((v - a) / b) ** 2
    if kind == "laplace":
        return jnp.log(2 * b) + jnp.abs(v - a) / b
    # logNormal: log x ~ N(a, b)
    return 0.5 * jnp.log(2 * jnp.pi * b * b) + jnp.log(x) + 0.5 * ((jnp.log(x) - a) / b) ** 2


# --------------------------------------------------------------------------
@dataclass
class _Group:
    """Conditions that share their structure: one vmapped solve."""

    problem: object
    conditions: list  # condition indices
    values: dict  # stacked values (leading axis: conditions)
    steps: np.ndarray  # (S,) save steps: every condition's measurement steps
    n_steps: int
    members: np.ndarray  # measurement indices, in the order of ``flat``
    flat: np.ndarray  # index into (C * S) of each member


class Objective:
    """The NLL of a ``FitProblem`` as a function of the estimated parameters on their scale.

    ``nll(theta)``: scalar; ``value_and_grad_batch(thetas)``: (B,), (B, P), one
    compiled call; ``predict(theta)``: simulated observables (see ``predictions``).
    ``traces`` counts how often the NLL has been traced (compiled). With ``devices``
    (a list), each batch is split over them (``tmesim.over_devices``).
    """

    def __init__(self, fp: FitProblem, devices=None):
        self.fp = fp
        dtype = fp.settings["dtype"]
        if dtype == "float64" and not jax.config.jax_enable_x64:
            jax.config.update("jax_enable_x64", True)
        self.dtype = jnp.float64 if dtype == "float64" else jnp.float32
        ms = fp.measurements
        closed = _closed_form(fp) if fp.settings["hierarchical"] else {}
        est = tuple(q for q in fp.estimated if q.id not in closed)
        self.estimated = est
        self.ids = tuple(q.id for q in est)
        self.scales = tuple(q.scale for q in est)
        self.lower = np.array([to_scale(q.lower, q.scale) for q in est])
        self.upper = np.array([to_scale(q.upper, q.scale) for q in est])
        self.nominal = np.array([to_scale(q.nominal, q.scale) for q in est])
        self.model = tuple(i for i, q in enumerate(est) if q.model)
        self.fixed = {q.id: q.nominal for q in fp.parameters if not q.estimate}
        fixed_model = {k: v for k, v in self.fixed.items() if any(
            q.id == k and q.model for q in fp.parameters)}
        widen = []
        for q in est:
            if q.model:
                widen.append(f"bounds.{q.id}=[{q.lower!r}, {q.upper!r}]")
        self.dt = fp.scenario.dt
        steps = np.rint(ms.time_min / self.dt).astype(np.int64)
        self.steps = steps
        groups: dict = {}
        for ci, cond in enumerate(fp.conditions):
            sc = load_scenario(fp.scenario_path, fp.overrides + tuple(widen) + cond.overrides
                               + (f'run.dtype="{dtype}"',))
            setup = build(sc, split=False).setup
            try:
                values = set_values(setup.values, fixed_model)
                setup.problem.check_values(values, f"{fp.texts['parameters'][0]}: fixed values")
            except (KeyError, ValueError) as err:
                raise ProblemError(f"condition {cond.id!r}: {err}") from None
            leaves, tree = jax.tree_util.tree_flatten(values)
            key = (setup.problem, tree, tuple(np.shape(x) for x in leaves))
            groups.setdefault(key, []).append((ci, values))
        self.groups = []
        for (problem, _, _), members in groups.items():
            cis = [ci for ci, _ in members]
            # one set of save steps for all members (not batched: under vmap the solve's
            # conditional write at a save step stays a cond, see ``batched``)
            table = np.unique(steps[np.isin(ms.condition, cis)])
            idx, flat = [], []
            for c, ci in enumerate(cis):
                for m in np.flatnonzero(ms.condition == ci):
                    idx.append(m)
                    flat.append(c * len(table) + int(np.searchsorted(table, steps[m])))
            stacked = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *[v for _, v in members])
            self.groups.append(_Group(problem, cis, stacked, table, int(table.max()),
                                      np.array(idx), np.array(flat)))
        self.order = np.concatenate([g.members for g in self.groups])
        where = np.empty(len(self.order), int)
        where[self.order] = np.arange(len(self.order))
        # noise parameter id -> (distribution, its measurements' positions in ``order``)
        self.closed = {pid: (kind, where[rows]) for pid, (kind, rows) in closed.items()}
        self.names = sorted({n for o in fp.observables for n in
                             (*o.formula.names, *o.noise.names) if n in OBSERVABLES})
        self._noise = self._noise_tables()
        self.traces = 0
        self._jit_vg = _FirstCallLock(_compiled(batched(jax.value_and_grad(self.nll)), devices))

    # -- pieces ---------------------------------------------------------------
    def _noise_tables(self):
        """Per measurement (in ``order``) and K: constant part and parameter references."""
        ms = self.fp.measurements
        width = max((len(p) for p in ms.noise), default=0)
        const = np.zeros((len(ms), width))
        refs = []  # (k, position in order, parameter id)
        for pos, m in enumerate(self.order):
            for k, v in enumerate(ms.noise[m]):
                if isinstance(v, str):
                    refs.append((k, pos, v))
                else:
                    const[pos, k] = v
        return const, refs

    def linear(self, theta):
        """Linear values {id: x} of the estimated parameters, plus the fixed ones."""
        out = {}
        for i, (q, s) in enumerate(zip(self.estimated, self.scales)):
            # exp(log(bound)) may round past the bound, which the plan refuses (an infinite
            # NLL at every point on that bound): the value is clipped, its derivative kept
            x = from_scale(theta[i], s, jnp)
            out[q.id] = x + jax.lax.stop_gradient(jnp.clip(x, q.lower, q.upper) - x)
        return {**{k: jnp.asarray(v, self.dtype) for k, v in self.fixed.items()}, **out}

    def simulate(self, theta):
        """Model observables at every measurement (in ``order``) and whether every solve ran."""
        x = self.linear(theta)
        model = {self.ids[i]: x[self.ids[i]] for i in self.model}
        ckpt = self.fp.settings["checkpoints"]
        got = {n: [] for n in self.names}
        ok = jnp.asarray(True)
        for g in self.groups:
            def one(values, g=g):
                v = set_values(values, model)
                sol = solve(g.problem, v, n_steps=g.n_steps,
                            save=SaveAt(jnp.asarray(g.steps, jnp.int32), observables),
                            checkpoints=ckpt)
                return {n: sol.saved[n] for n in self.names}, sol.ok

            saved, good = batched(one)(g.values)
            ok = ok & jnp.all(good)
            for n in self.names:
                got[n].append(saved[n].reshape(-1)[g.flat])
        return {n: jnp.concatenate(v) for n, v in got.items()}, ok

    def evaluate(self, theta, sim=None, closed=None):
        """(prediction h, sigma, per-measurement NLL) in ``order``, from simulated observables.

        ``closed``: a dict that receives the closed-form noise parameters' values."""
        fp = self.fp
        ms = fp.measurements
        if sim is None:
            sim, _ = self.simulate(theta)
        x = self.linear(theta)
        obs = ms.observable[self.order]
        const, refs = self._noise
        h = jnp.zeros(len(self.order), self.dtype)
        sel_of = [np.flatnonzero(obs == oi) for oi in range(len(fp.observables))]
        for o, sel in zip(fp.observables, sel_of):
            if len(sel):
                env = {n: sim[n][sel] for n in self.names} | x
                h = h.at[sel].set(jnp.broadcast_to(o.formula(env, jnp), sel.shape))
        m = jnp.asarray(ms.value[self.order], self.dtype)
        # residuals and the Jacobian term on each observable's transformed scale
        res, jac = jnp.zeros_like(h), jnp.zeros_like(h)
        for o, sel in zip(fp.observables, sel_of):
            y, mm = h[sel], m[sel]
            if o.transformation == "log":
                y, mm, j = jnp.log(y), jnp.log(mm), jnp.log(mm)
            elif o.transformation == "log10":
                y, mm, j = jnp.log10(y), jnp.log10(mm), jnp.log(mm * math.log(10.0))
            else:
                j = jnp.zeros_like(y)
            res, jac = res.at[sel].set(mm - y), jac.at[sel].set(j)
        for pid, (kind, pos) in self.closed.items():
            # the noise parameter's optimum given the model: the RMS (normal) or mean
            # absolute (Laplace) residual of its measurements, held within its bounds
            q = fp.parameter(pid)
            r = res[pos]
            if kind == "normal":
                x[pid] = jnp.sqrt(jnp.clip(jnp.mean(r * r), q.lower ** 2, q.upper ** 2))
            else:
                x[pid] = jnp.clip(jnp.mean(jnp.abs(r)), q.lower, q.upper)
            if closed is not None:
                closed[pid] = x[pid]
        sigma = jnp.ones(len(self.order), self.dtype)
        for oi, (o, sel) in enumerate(zip(fp.observables, sel_of)):
            if not len(sel):
                continue
            env = {n: sim[n][sel] for n in self.names} | x
            for k in range(const.shape[1]):
                col = jnp.asarray(const[sel, k], self.dtype)
                for kk, pos, pid in refs:
                    if kk == k:
                        col = jnp.where(jnp.asarray(sel == pos), x[pid], col)
                env[f"noiseParameter{k + 1}_{o.id}"] = col
            sigma = sigma.at[sel].set(jnp.broadcast_to(o.noise(env, jnp), sel.shape))
        terms = jnp.zeros_like(h)
        for o, sel in zip(fp.observables, sel_of):
            r, s, j = res[sel], sigma[sel], jac[sel]
            if o.distribution == "normal":
                t = 0.5 * jnp.log(2 * jnp.pi * s * s) + 0.5 * (r / s) ** 2 + j
            else:
                t = jnp.log(2 * s) + jnp.abs(r) / s + j
            terms = terms.at[sel].set(t)
        return h, sigma, terms

    def nll(self, theta):
        """The objective: NLL of the measurements plus the priors' (inf where not evaluable).

        Each coordinate is clipped to its bounds first, so the objective is constant
        outside them along that coordinate and a line search may step past a bound
        (the optimiser then projects the point back onto the box) instead of meeting
        an infinite value there. On a bound the derivative is the one from inside.
        """
        self.traces += 1
        lo, hi = jnp.asarray(self.lower, theta.dtype), jnp.asarray(self.upper, theta.dtype)
        # on a bound the derivative is the inside one (jnp.clip's would be halved there)
        theta = jnp.where((theta >= lo) & (theta <= hi), theta, jnp.clip(theta, lo, hi))
        sim, ok = self.simulate(theta)
        _, sigma, terms = self.evaluate(theta, sim)
        total = jnp.sum(terms)
        x = self.linear(theta)
        for i, pid in enumerate(self.ids):
            q = self.fp.parameter(pid)
            if q.prior is not None:
                kind, (a, b) = q.prior
                total = total + _prior_nll(kind, a, b, x[pid], theta[i])
        good = ok & jnp.all(sigma > 0) & jnp.isfinite(total)
        return jnp.where(good, total, jnp.inf)

    def value_and_grad_batch(self, thetas):
        return self._jit_vg(jnp.asarray(thetas, self.dtype))

    def predictions(self, theta, every_days: float = PLOT_EVERY_DAYS) -> dict:
        """Per condition: times (days) and every observable of the observable table on a grid
        of ``every_days`` up to the condition's last measurement, and at the measurements."""
        theta = jnp.asarray(theta, self.dtype)
        ms = self.fp.measurements
        out = {}
        x = self.linear(theta)
        model = {self.ids[i]: x[self.ids[i]] for i in self.model}
        every = max(1, round(every_days * MIN_PER_DAY / self.dt))
        for g in self.groups:
            grid = np.arange(0, g.n_steps + every, every)
            grid = np.minimum(grid, g.n_steps)

            @jax.jit
            def run(values, model=model, g=g, grid=grid):
                def one(v):
                    v = set_values(v, model)
                    return solve(g.problem, v, n_steps=g.n_steps,
                                 save=SaveAt(jnp.asarray(grid, jnp.int32), observables)).saved
                return batched(one)(values)

            saved = jax.device_get(run(g.values))
            for c, ci in enumerate(g.conditions):
                env = {n: np.asarray(saved[n][c]) for n in self.names}
                env |= {k: float(v) for k, v in x.items()}
                series = {}
                for o in self.fp.observables:  # observable formulas read no noise parameters
                    series[o.id] = np.broadcast_to(np.asarray(o.formula(env, np)),
                                                   grid.shape).copy()
                last = ms.time_min[ms.condition == ci].max()
                keep = grid * self.dt <= last + self.dt
                out[self.fp.conditions[ci].id] = (grid[keep] * self.dt / MIN_PER_DAY,
                                                  {k: v[keep] for k, v in series.items()})
        return out


def _closed_form(fp: FitProblem) -> dict:
    """The estimated noise parameters that can be set to their optimum in closed form
    (hierarchical optimisation, as in pyPESTO): {id: (distribution, positions)}, positions
    into the measurements in table order (``Objective`` maps them to its own order).

    A parameter qualifies when it has no prior, enters no observable formula, and every
    measurement whose noise it sets has it as the whole noise formula (``sigma_x``, or
    ``noiseParameter1_obs`` with ``sigma_x`` in the measurement's noiseParameters), under
    one noise distribution. For a normal noise the optimum is the RMS residual of those
    measurements, for a Laplace noise their mean absolute residual (on the observable's
    transformed scale), held within the parameter's bounds.
    """
    ms = fp.measurements
    out = {}
    for q in fp.estimated:
        if q.model or q.prior is not None:
            continue
        rows, kinds, whole = [], set(), True
        for oi, o in enumerate(fp.observables):
            mine = np.flatnonzero(ms.observable == oi)
            if q.id in o.formula.names:
                whole = False
            elif o.noise.text.strip() == q.id:
                rows.append(mine)
                kinds.add(o.distribution)
            elif q.id in o.noise.names:
                whole = False
            else:
                k = noise_placeholder(o.noise.text.strip(), o.id)
                uses = [m for m in mine if q.id in ms.noise[m]]
                if uses and k is not None and all(ms.noise[m][k - 1] == q.id
                                                  and ms.noise[m].count(q.id) == 1
                                                  for m in uses):
                    rows.append(np.array(uses))
                    kinds.add(o.distribution)
                elif uses:
                    whole = False
        if whole and rows and len(kinds) == 1:
            out[q.id] = (kinds.pop(), np.sort(np.concatenate(rows)))
    return out


# --------------------------------------------------------------------------
# starting points
def starting_points(obj: Objective, n: int, seed: int, sampling: str, spread: float = 2.0):
    """(n, P) points on the parameter scale: the nominal values first, then a Latin hypercube
    between the bounds (``lhs``), draws from each parameter's initialization (else objective)
    prior, uniform on the scale without one (``prior``)."""
    rng = np.random.default_rng(seed)
    P = len(obj.ids)
    lo, hi = obj.lower, obj.upper
    pts = np.empty((n, P))
    pts[0] = obj.nominal
    m = n - 1
    if m:
        if sampling == "lhs":
            u = (rng.permuted(np.tile(np.arange(m), (P, 1)), axis=1).T + rng.random((m, P))) / m
            pts[1:] = lo + u * (hi - lo)
        else:
            for i, pid in enumerate(obj.ids):
                q = obj.fp.parameter(pid)
                prior = q.init_prior or q.prior
                draws = rng.uniform(lo[i], hi[i], m)
                if prior is not None:
                    kind, (a, b) = prior
                    scaled = kind.startswith("parameterScale")
                    k = kind[len("parameterScale"):].lower() if scaled else kind
                    if k == "uniform":
                        d = rng.uniform(a, b, m)
                    elif k == "normal":
                        d = rng.normal(a, b, m)
                    elif k == "laplace":
                        d = rng.laplace(a, b, m)
                    else:
                        d = np.exp(rng.normal(a, b, m))
                    if not scaled:
                        with np.errstate(all="ignore"):
                            d = to_scale(d, q.scale)
                    draws = np.where(np.isfinite(d), d, draws)
                pts[1:, i] = np.clip(draws, lo[i], hi[i])
    return pts


def perturbed_points(obj: Objective, n: int, seed: int, factor: float) -> np.ndarray:
    """(n, P): the nominal linear values times factor^U(−1, 1) each (log-uniform), clipped to the
    bounds; the synthetic recovery test's 'starts perturbed by up to 2x'."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, len(obj.ids)))
    for i, pid in enumerate(obj.ids):
        q = obj.fp.parameter(pid)
        x = q.nominal * factor ** rng.uniform(-1, 1, n)
        out[:, i] = np.clip(to_scale(np.clip(x, q.lower, q.upper), q.scale), obj.lower[i],
                            obj.upper[i])
    return out


# --------------------------------------------------------------------------
def _all_equal(a: np.ndarray) -> bool:
    """Whether every member (along axis 0) of ``a`` equals the first."""
    return bool(np.all(a == a[:1]))


def _compiled(fn, devices=None):
    """``jax.jit(fn)`` of a batched ``fn``; with ``devices``, its batch split over them
    (``over_devices``: one program, each device its share of the members), and in a job
    of several processes its outputs gathered to every process (``everywhere``), so that
    each takes the same decisions from them."""
    if not devices:
        return jax.jit(fn)
    call = over_devices(fn, devices)
    return lambda *args: everywhere(call(*args))


def batched(fn):
    """``jax.vmap(fn)``, except over a batch of one, where ``fn`` runs on the one member.

    Under ``vmap`` a ``lax.cond`` whose predicate is batched becomes a select that runs
    both branches: the line search's two phases (each a loss-and-gradient evaluation) and
    the solve's conditional writes of the observables at the measurement steps would run
    at every trial and every step. A batch of one (a fit's default on a CPU, a problem
    with one condition) keeps its conds.

    A concrete leaf whose members are all equal (a condition table's value that the
    conditions share) goes in once, unbatched: a batched scalar that enters the cells'
    transport pass made XLA's CPU code for the pass 4 times slower (the organoid at
    24³: 69 against 16 ms a member), so conditions that differ in one value ran the
    whole model 2.4 times slower than one by one."""

    def call(*args):
        leaves, tree = jax.tree_util.tree_flatten(args)
        if {x.shape[0] for x in leaves} == {1}:
            out = fn(*jax.tree_util.tree_map(lambda x: x[0], args))
            return jax.tree_util.tree_map(lambda x: jnp.expand_dims(x, 0), out)
        # NumPy only: a jnp operation on a constant would be staged into the trace
        shared = [not isinstance(x, jax.core.Tracer) and _all_equal(np.asarray(x))
                  for x in leaves]
        if all(shared):
            shared[0] = False  # vmap needs one batched input to know the batch size
        leaves = [x[0] if s else x for x, s in zip(leaves, shared)]
        axes = jax.tree_util.tree_unflatten(tree, [None if s else 0 for s in shared])
        return jax.vmap(fn, in_axes=axes)(*jax.tree_util.tree_unflatten(tree, leaves))

    return call


class Optimiser:
    """One compiled step for a batch of points: L-BFGS (zoom line search) or Adam, masked
    coordinates held fixed, non-finite steps rejected, finished members frozen.

    Bounds: a coordinate on a bound whose gradient points out of the box is held
    there for the step (an active set, as in projected quasi-Newton methods); when
    the active set changes, L-BFGS's memory restarts, since its curvature pairs were
    gathered in another subspace. The carried state is (optax state, active set).
    """

    def __init__(self, obj: Objective, kind: str, learning_rate: float, devices=None):
        self.obj, self.kind = obj, kind
        if kind == "lbfgs":
            self.opt = optax.lbfgs(
                memory_size=10,
                linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=LINESEARCH_STEPS,
                                                          initial_guess_strategy="one"))
        else:
            self.opt = optax.adam(learning_rate)
        self._step = _FirstCallLock(_compiled(batched(self._one), devices))
        self._init = _FirstCallLock(jax.jit(jax.vmap(self._fresh)))

    def _fresh(self, theta):
        return self.opt.init(theta), jnp.zeros(theta.shape, bool)

    def init(self, thetas):
        with jax.numpy_dtype_promotion("standard"):
            state = self._init(jnp.asarray(thetas, self.obj.dtype))
        # strong types: the update returns strongly typed scalars where init made weak ones,
        # and a weak type in the carried state would compile the step a second time
        return jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x)), state)

    def _one(self, theta, state, value, grad, mask, done, rejected):
        nll = self.obj.nll
        state, active = state
        lower = jnp.asarray(self.obj.lower, theta.dtype)
        upper = jnp.asarray(self.obj.upper, theta.dtype)
        now = _held(theta, grad, lower, upper)
        fresh, _ = self._fresh(theta)
        state = jax.tree_util.tree_map(
            lambda old, f: jnp.where(jnp.any(now != active), f, old), state, fresh)
        m = mask * ~now
        g = grad * m
        if self.kind == "lbfgs":
            updates, new_state = self.opt.update(g, state, theta, value=value, grad=g,
                                                 value_fn=nll)
            new_value = optax.tree_utils.tree_get(new_state, "value")
            new_grad = optax.tree_utils.tree_get(new_state, "grad")
            new_theta = self._project(optax.apply_updates(theta, updates * m))
            # a step that does not lower the value (a line search that found no decrease
            # returns the same point) is rejected: the memory restarts, and a second such
            # step in a row, from steepest descent, stops the start
            lower_value = new_value < value
            evaluations = optax.tree_utils.tree_get(new_state, "num_linesearch_steps")
        else:
            updates, new_state = self.opt.update(g, state, theta)
            new_theta = self._project(optax.apply_updates(theta, updates * m))
            new_value, new_grad = jax.value_and_grad(nll)(new_theta)
            lower_value, evaluations = True, 1
        good = (jnp.all(jnp.isfinite(new_theta)) & jnp.isfinite(new_value)
                & jnp.all(jnp.isfinite(new_grad)) & lower_value)
        keep = done | ~good

        def pick(new, old):
            return jnp.where(keep, old, new)

        # a rejected step restarts the optimiser's memory at the kept point: retrying with
        # the same state would repeat the same step (the update is deterministic)
        state = jax.tree_util.tree_map(
            lambda new, old, f: jnp.where(done, old, jnp.where(good, new, f)),
            new_state, state, fresh)
        rejected = jnp.where(done, rejected, jnp.where(good, 0, rejected + 1))
        return (pick(new_theta, theta), (state, jnp.where(done, active, now)),
                pick(new_value, value), pick(new_grad, grad), rejected,
                jnp.where(done, 0, evaluations).astype(jnp.int32))

    def _project(self, theta):
        return jnp.clip(theta, jnp.asarray(self.obj.lower, theta.dtype),
                        jnp.asarray(self.obj.upper, theta.dtype))

    def step(self, thetas, state, values, grads, mask, done, rejected):
        # optax's L-BFGS mixes int32 and int64 counters under x64: standard promotion
        # for it, whatever the caller's setting (the tests run strict)
        with jax.numpy_dtype_promotion("standard"):
            return self._step(thetas, state, values, grads, mask, done, rejected)


class _FirstCallLock:
    """A jitted function whose first call (the trace and compile) holds a lock: worker
    threads that call it at once compile it once."""

    def __init__(self, fn):
        self.fn, self.lock, self.ready = fn, threading.Lock(), False

    def __call__(self, *args):
        if not self.ready:
            with self.lock:
                out = self.fn(*args)
                self.ready = True
                return out
        return self.fn(*args)


class _Workers:
    """``n`` threads that run compiled calls while the calling thread keeps the fit's state
    and writes its file: on a CPU, where one call does not use every core, ``n`` starts or
    profile points advance at once. ``completed`` yields finished calls as they come,
    acting on a stop request (SIGINT, SIGTERM) at once; ``cancel`` tells the calls that
    loop (a profile point's optimisation) to return early.

    In a job of several processes (``jax.distributed``) each call ends by gathering its
    outputs from every process (``over_devices``), and the processes must make their
    gathers in the same order: the calls run one at a time on the calling thread, in the
    order submitted, and a stop request waits for the next write of the file (``_written``),
    where the processes agree on it."""

    def __init__(self, n: int):
        self.job = jax.process_count() > 1
        self.n = 1 if self.job else n
        self.pool = None if self.job else ThreadPoolExecutor(n, thread_name_prefix="tmesim-fit")
        self.cancel = threading.Event()

    def submit(self, fn, *args):
        if self.job:
            future = Future()
            future.set_result(jax.block_until_ready(fn(*args)))
            return future
        # done when computed, not when dispatched: a wait on an unready result would hold
        # the calling thread, and a stop request, for the whole call
        return self.pool.submit(lambda: jax.block_until_ready(fn(*args)))

    def completed(self, futures):
        if self.job:
            yield from futures
            return
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            _check_stop()
            yield from done

    def close(self):
        self.cancel.set()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def default_workers() -> int:
    """One thread per core this process may use on a CPU backend, else 1."""
    if jax.default_backend() != "cpu":
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------
# the result file
def _atomic_write(path: str, write) -> None:
    """Write a file through a temporary beside it (``write(temporary_path)``), fsync'd,
    renamed over ``path``; the folder fsync'd. A failure leaves ``path`` as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".partial", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def _strings(values):
    return np.array([str(v).encode() for v in values], dtype=h5py.string_dtype())


@dataclass
class FitState:
    """Everything a fit has computed so far (what the result file holds)."""

    stage: str
    starts: np.ndarray  # (S, P) starting points (scale)
    theta: np.ndarray  # (S, P) current points
    value: np.ndarray  # (S,)
    grad: np.ndarray  # (S, P) gradient at theta (carried by the optimiser: kept for a resume)
    history: np.ndarray  # (S, I+1) NLL per iteration (NaN: not reached)
    iterations: np.ndarray  # (S,) iterations each start has taken
    done: np.ndarray  # (S,) bool
    rejected: np.ndarray  # (S,) int
    opt_leaves: list | None  # optimiser state per start, each leaf (S, ...): a started,
    #                         unfinished start (iterations > 0, not done) resumes from it
    best: np.ndarray | None = None
    best_value: float = math.nan
    hessian: np.ndarray | None = None  # at ``best`` (None: not computed there yet)
    best_grad: np.ndarray | None = None  # (P,) gradient at ``best`` (the polish carries it)
    polish_radius: float = POLISH_RADIUS  # trust region of the polish (scaled by the bounds)
    polish_iterations: int = 0
    polish_history: np.ndarray | None = None  # (iterations + 1,) NLL after each polish step
    profile_points: np.ndarray | None = None  # (J, 4): parameter index, side, scaled value, done
    profile_values: np.ndarray | None = None  # (J,) NLL (NaN: not done)
    profile_theta: np.ndarray | None = None  # (J, P)
    seconds: float = 0.0
    evaluations: np.ndarray | None = None  # (S,) loss-and-gradient evaluations per start
    restarts: int = 0  # times the polish started again from a lower profile point

    def __post_init__(self):
        if self.evaluations is None:
            self.evaluations = np.zeros(len(self.starts), np.int64)


def _write_state(path: str, fp: FitProblem, obj: Objective, st: FitState, status: str,
                 message: str, final: dict | None = None) -> None:
    def fill(h5):
        from . import __version__

        m = h5.create_group("meta")
        m.attrs.update({"format": RESULT_FORMAT, "kind": "tmesim fit", "tmesim": __version__,
                        "jax": jax.__version__, "device": str(jax.devices()[0]),
                        "problem": os.path.abspath(fp.path), "name": fp.name,
                        "stage": st.stage, "status": status, "message": message,
                        "seconds": st.seconds, "command": " ".join(sys.argv)})
        src = m.create_group("files")
        for role, (p, text) in fp.texts.items():
            d = src.create_dataset(role, data=text)
            d.attrs["path"] = os.path.abspath(p)
        g = h5.create_group("parameters")
        est = obj.estimated
        g["id"] = _strings(obj.ids)
        g["scale"] = _strings(obj.scales)
        g["lower"] = np.array([q.lower for q in est])
        g["upper"] = np.array([q.upper for q in est])
        g["nominal"] = np.array([q.nominal for q in est])
        s = h5.create_group("starts")
        s["initial"] = st.starts
        s["theta"] = st.theta
        s["value"] = st.value
        s["grad"] = st.grad
        s["history"] = st.history
        s["done"] = st.done
        s["rejected"] = st.rejected
        s["iterations"] = st.iterations
        s["evaluations"] = st.evaluations
        if st.opt_leaves is not None:
            o = s.create_group("optimiser_state")
            for i, leaf in enumerate(st.opt_leaves):
                o[f"{i:03d}"] = np.asarray(leaf)
        if st.best is not None:
            b = h5.create_group("best")
            b["theta"] = st.best
            b["value"] = np.array([st.best_value])
            b["linear"] = np.array([float(from_scale(z, sc)) for z, sc in zip(st.best, obj.scales)])
            if st.best_grad is not None:
                b["grad"] = st.best_grad
        if st.hessian is not None:
            h5["laplace/hessian"] = st.hessian
        if st.polish_history is not None:
            h5["polish/history"] = st.polish_history
            h5["polish/iterations"] = np.array([st.polish_iterations])
            h5["polish/radius"] = np.array([st.polish_radius])
            h5["polish/restarts"] = np.array([st.restarts])
        if st.profile_points is not None:
            h5["profiles/points"] = st.profile_points
            h5["profiles/value"] = st.profile_values
            h5["profiles/theta"] = st.profile_theta
        if final:
            for key, v in final.items():
                h5[key] = v

    def write(tmp):
        with h5py.File(tmp, "w") as h5:
            fill(h5)

    _atomic_write(path, write)


def _mark(path: str, status: str, message: str) -> None:
    """Set the status of the result file as last written (its state is kept: what was
    computed after that write is lost either way); no file yet, nothing to do. In a job
    of several processes, process 0 does it (the one that writes)."""
    if not first_process() or not os.path.exists(path):
        return

    def write(tmp):
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "r+") as h5:
            h5["meta"].attrs.update({"status": status, "message": message})

    with _suppress():  # best effort: a full disk must not hide the error being reported
        _atomic_write(path, write)


def _read_state(path: str, fp: FitProblem, obj: Objective) -> FitState:
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise FitError(f"{path}: cannot open the fit result to resume it ({err})") from None
    with h5:
        if h5.get("meta") is None or h5["meta"].attrs.get("kind") != "tmesim fit":
            raise FitError(f"{path}: not a tmesim fit result")
        if h5["meta"].attrs.get("format") != RESULT_FORMAT:
            raise FitError(f"{path}: a fit result of format {h5['meta'].attrs.get('format')}, "
                           f"this tmesim resumes format {RESULT_FORMAT}; start a new fit "
                           f"(--overwrite)")
        for role, (_, text) in fp.texts.items():
            stored = h5["meta/files"].get(role)
            if stored is None or stored.asstr()[()] != text:
                raise FitError(f"{path}: was made from a different {role} file than "
                               f"{fp.texts[role][0]}; start a new fit (--overwrite) or restore it")
        s = h5["starts"]
        leaves = None
        if "optimiser_state" in s:
            o = s["optimiser_state"]
            leaves = [o[k][...] for k in sorted(o)]
        st = FitState(str(h5["meta"].attrs["stage"]), s["initial"][...], s["theta"][...],
                      s["value"][...], s["grad"][...], s["history"][...],
                      s["iterations"][...], s["done"][...], s["rejected"][...], leaves,
                      seconds=float(h5["meta"].attrs["seconds"]),
                      evaluations=s["evaluations"][...] if "evaluations" in s else None)
        if "best" in h5:
            st.best = h5["best/theta"][...]
            st.best_value = float(h5["best/value"][0])
            if "grad" in h5["best"]:
                st.best_grad = h5["best/grad"][...]
        if "laplace/hessian" in h5:
            st.hessian = h5["laplace/hessian"][...]
        if "polish/history" in h5:
            st.polish_history = h5["polish/history"][...]
            st.polish_iterations = int(h5["polish/iterations"][0])
            st.polish_radius = float(h5["polish/radius"][0])
            if "restarts" in h5["polish"]:  # results written before restarts have none
                st.restarts = int(h5["polish/restarts"][0])
        if "profiles/points" in h5:
            st.profile_points = h5["profiles/points"][...]
            st.profile_values = h5["profiles/value"][...]
            st.profile_theta = h5["profiles/theta"][...]
    return st


def _digest(st: FitState) -> np.ndarray:
    """A digest of everything a fit's result holds, as int32s (``each_process`` compares
    it: the processes of a job must resume from the same state)."""
    h = hashlib.sha256()
    for key, value in sorted(vars(st).items()):
        h.update(key.encode())
        for leaf in value if isinstance(value, list) else [value]:
            h.update(np.asarray(leaf).tobytes() if leaf is not None else b"None")
    return np.frombuffer(h.digest()[:16], np.int32)


# --------------------------------------------------------------------------
class _Progress:
    """Progress lines: the time since the fit began, and an ETA of the stage under way from
    its own pace (``stage(done0)`` when a stage begins with that fraction already done)."""

    def __init__(self, stream, every: float = 10.0):
        self.stream, self.every, self.last, self.t0 = stream, every, -math.inf, time.monotonic()
        self.stage()

    def stage(self, done0: float = 0.0):
        self.t_stage, self.done0 = time.monotonic(), done0

    def __call__(self, text: str, done: float | None = None, force: bool = False):
        if self.stream is None:
            return
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        eta = ""
        if done is not None and 0 < done < 1 and done > self.done0:
            rate = (done - self.done0) / (now - self.t_stage)
            eta = f", ETA {(1 - done) / rate / 60:.1f} min"
        self.stream = tell(self.stream, f"tmesim fit: {text} ({(now - self.t0) / 60:.1f} min{eta})")


def fit(problem, output: str, *, overwrite: bool = False, progress=sys.stderr,
        settings: dict | None = None, starts: np.ndarray | None = None,
        summarise: bool = False) -> str:
    """Fit a calibration problem (a path or a ``FitProblem``); write the result to ``output``.

    An existing ``output`` from the same problem files is resumed from its last
    iteration (a finished one is left as it is) unless ``overwrite``.
    settings: [fit] settings replacing the problem file's; starts: (S, P) starting
    points on the parameter scale instead of the sampled ones; summarise: a finished
    ``output`` gets its summary (intervals, identifiability, notes), simulated observables
    and parameter file made again by this version, from its stored starts, polish, Hessian
    and profiles, nothing fitted again. Returns ``output``.
    """
    fp = problem if isinstance(problem, FitProblem) else agreed(load_problem, problem, settings)
    with _writer_lock(output):
        return _fit(fp, output, overwrite, progress, settings, starts, problem, summarise)


@contextlib.contextmanager
def _writer_lock(output: str):
    """Hold ``OUTPUT.lock`` (flock) for the fit: a second fit into the same result is refused
    instead of both replacing the file in turn. In a job of several processes, process 0
    (the one that writes) holds it, and a refusal stops every process."""
    fd = None
    try:
        fd = _written(_lock, output)
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _lock(output: str) -> int:
    path = output + ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        other = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        raise FitError(f"{output}: another tmesim fit is writing this result "
                       f"(process {other or 'unknown'}, holding {path}); wait for it or "
                       f"choose another -o") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _written(write, *args, signals: bool = False):
    """``write(*args)`` (the result file, its lock, the parameter file) on the process that
    writes: the one process, or a job's process 0. In a job every process calls this at
    the same point and they agree: an error in the writing process stops every one, and
    with ``signals`` so does a stop request (SIGINT, SIGTERM) on any of them."""
    result, error = None, None
    if first_process():
        try:
            result = write(*args)
        except Exception as err:  # noqa: BLE001 -- raised again by _together
            error = err
    _together(error, signals)
    return result


def _fit(fp, output, overwrite, progress, settings, starts, problem, again=False):
    if isinstance(problem, FitProblem) and settings:
        fp = FitProblem(**{**fp.__dict__, "settings": fp.settings | settings})
    cfg = fp.settings
    try:
        devices = select_devices(cfg["devices"], f"{fp.path}: [fit] devices")
    except ValueError as err:
        raise ProblemError(str(err)) from None
    obj = agreed(Objective, fp, devices)
    opt = Optimiser(obj, cfg["optimizer"], cfg["learning_rate"], devices)
    say = _Progress(progress if first_process() else None)
    P = len(obj.ids)
    t_start = time.monotonic()
    exists = os.path.exists(output)
    if len(set(each_process([exists])[:, 0])) > 1:
        raise FitError(f"{output}: some processes of the job see this result and some do "
                       f"not: it must be on a filesystem every process reads")
    if again and (overwrite or not exists):
        raise FitError(f"{output}: summarise needs a finished result to summarise again"
                       + (", not overwrite" if overwrite else f"; there is none at {output}"))
    if exists and not overwrite:
        st = agreed(_read_state, output, fp, obj)  # on every process, before any writes
        if len({tuple(d) for d in each_process(_digest(st))}) > 1:
            raise FitError(f"{output}: the processes of the job read different results "
                           f"here (a copy on each host?): it must be one file every "
                           f"process reads")
        if again and st.stage != "done":
            raise FitError(f"{output}: stage {st.stage}, not finished: nothing to summarise "
                           f"again (resume it with the same command, without summarise)")
        if st.stage == "done":
            if not again:
                say(f"{output} is finished", force=True)
                return output
            say(f"{output}: its summary made again (nothing is fitted again)", force=True)
        else:
            say(f"resuming {output} at stage {st.stage} ({int(st.iterations.sum())} "
                f"iterations of {len(st.iterations)} starts taken)", force=True)
    else:
        if not P:
            say("nothing is estimated: the NLL of the tables' parameter set, its simulated "
                "observables and residuals", force=True)
        pts = starts if starts is not None else starting_points(
            obj, cfg["starts"] if P else 1, cfg["seed"], cfg["sampling"])
        pts = np.asarray(pts, float)
        if pts.ndim != 2 or pts.shape[1] != P:
            raise ValueError(f"starts: expected shape (S, {P}), got {pts.shape}")
        S = len(pts)
        st = FitState("optimise", pts, pts.copy(), np.full(S, np.nan), np.full((S, P), np.nan),
                      np.full((S, cfg["iterations"] + 1), np.nan), np.zeros(S, np.int64),
                      np.zeros(S, bool), np.zeros(S, np.int32), None)
    elapsed0 = st.seconds

    def save(status="running", message="", final=None):
        # the time spent fitting: a summary made again adds none
        st.seconds = elapsed0 + (0.0 if again else time.monotonic() - t_start)
        # written; then SIGINT or SIGTERM (stop_on_signals) stops the fit here, resumable
        _written(_write_state, output, fp, obj, st, status, message, final,
                 signals=status == "running")

    workers = _Workers(cfg["workers"] or default_workers())
    if devices:
        say(f"each compiled call split over {len(devices)} devices "
            f"({', '.join(str(d) for d in devices)})", force=True)
    try:
        _stages(obj, opt, st, workers, fp, cfg, save, say, devices)
    except Interrupted as err:
        _mark(output, "interrupted", f"{err} in stage {st.stage}")
        raise Interrupted(err.signum, f"{output}: {err} in stage {st.stage}; the file keeps "
                          f"every finished iteration (resume: the same tmesim fit command)"
                          ) from None
    except KeyboardInterrupt:
        _mark(output, "interrupted", f"in stage {st.stage}")
        raise
    except Exception as err:
        _mark(output, "failed", f"in stage {st.stage}: {err}")
        raise
    finally:
        workers.close()
    summary = summarise(obj, st)
    final = _final_datasets(obj, st, summary)
    save("complete", "", final)
    _written(write_parameter_file, obj, st, summary, parameter_file_path(output))
    say(f"done: NLL {st.best_value:.6g}; result {output}", force=True)
    return output


def _stages(obj, opt, st: FitState, workers: _Workers, fp, cfg, save, say, devices=None):
    # batch 0: one point per compiled call on a CPU (vmap shares the compile there, not the
    # work, and every member would wait for the slowest line search), all at once elsewhere
    B = cfg["batch"] or (1 if jax.default_backend() == "cpu" else len(st.starts))
    n = len(devices or [None])
    B = -(-B // n) * n  # a batch splits evenly over the devices
    if st.stage == "optimise":
        _optimise(obj, opt, st, B, workers, cfg, save, say)
        finite = np.isfinite(st.value)
        if not finite.any():
            raise FitError(f"{fp.path}: no start reached a finite objective: every simulation "
                           f"failed or left the bounds")
        i = int(np.nanargmin(np.where(finite, st.value, np.inf)))
        st.best, st.best_value = st.theta[i].copy(), float(st.value[i])
        st.best_grad, st.hessian = st.grad[i].copy(), None
        st.stage, st.opt_leaves = "polish", None
        save()
    while st.stage != "done":
        if st.stage == "polish":
            if len(st.best):
                _polish(obj, st, B, workers, cfg, save, say)
            else:
                st.hessian = np.zeros((0, 0))
            st.stage = "laplace"
            save()
        if st.stage == "laplace":
            if st.hessian is None:
                st.hessian = laplace_hessian(obj, st.best, B, workers, st.best_grad)
            st.stage = "profiles"
            save()
        _profiles(obj, opt, st, B, workers, cfg, save, say)
        if _restart_from_profiles(st, cfg["restarts"]):
            say(f"a profile point has a lower NLL ({st.best_value:.8g}): polishing again from "
                f"there (restart {st.restarts} of {cfg['restarts']})", force=True)
            save()
        else:
            st.stage = "done"


def _lower_profile_point(st: FitState, most: int) -> int | None:
    """The row of the lowest finished profile point, when its NLL is below the best's by
    more than LOWER and fewer than ``most`` restarts have been made; else None."""
    values = st.profile_values if st.profile_values is not None else np.zeros(0)
    finite = np.isfinite(values)
    if st.restarts >= most or not finite.any():
        return None
    k = int(np.argmin(np.where(finite, values, np.inf)))
    return k if values[k] < st.best_value - LOWER else None


def _restart_from_profiles(st: FitState, most: int) -> bool:
    """Make the lowest profile point the best one and go back to the polish, when
    ``_lower_profile_point`` finds one; the profiles are dropped (laid out again from the
    new optimum)."""
    k = _lower_profile_point(st, most)
    if k is None:
        return False
    values = st.profile_values
    st.best, st.best_value = st.profile_theta[k].copy(), float(values[k])
    st.best_grad = st.hessian = None
    st.polish_iterations, st.polish_history, st.polish_radius = 0, None, POLISH_RADIUS
    st.profile_points = st.profile_values = st.profile_theta = None
    st.restarts += 1
    st.stage = "polish"
    return True


REDRAWS = 10  # a start whose objective is not finite is drawn again this often at most


def _starting_values(obj, st: FitState, B: int, workers: _Workers, cfg, save, say):
    """The value and gradient at every start not yet evaluated. A start where the objective
    is not finite (a simulation that fails there) is replaced by a uniform draw on the
    parameter scale within the bounds, up to REDRAWS times (seeded by the fit's seed, the
    start and the attempt, so a resumed fit draws the same points)."""
    S, P = st.starts.shape
    todo = [s for s in range(S) if st.iterations[s] == 0 and not st.done[s]
            and np.isnan(st.value[s])]
    attempts = dict.fromkeys(todo, 0)
    running: dict = {}
    while todo or running:
        while todo and len(running) < workers.n:
            idx, todo = np.array(todo[:B]), todo[B:]
            pad = np.concatenate([idx, np.full(B - len(idx), idx[-1])])
            running[workers.submit(obj.value_and_grad_batch, st.theta[pad])] = idx
        future = next(workers.completed(running))
        idx = running.pop(future)
        value, grad = (np.asarray(x)[: len(idx)] for x in future.result())
        for k, s in enumerate(idx):
            st.evaluations[s] += 1
            if np.isfinite(value[k]) or attempts[s] >= REDRAWS:
                st.value[s], st.grad[s], st.history[s, 0] = value[k], grad[k], value[k]
                st.done[s] = not np.isfinite(value[k])
                continue
            attempts[s] += 1
            rng = np.random.default_rng([cfg["seed"], s, attempts[s]])
            st.starts[s] = st.theta[s] = obj.lower + rng.random(P) * (obj.upper - obj.lower)
            say(f"start {s + 1}: the objective is not finite there; drawn again "
                f"({attempts[s]} of {REDRAWS})", force=True)
            todo.append(s)
        save()


def _optimise(obj, opt, st: FitState, B: int, workers: _Workers, cfg, save, say):
    """Every unfinished start, B to a compiled call, ``workers.n`` calls at once; this thread
    records each step and writes the file after it."""
    _starting_values(obj, st, B, workers, cfg, save, say)
    S, P = st.starts.shape
    # a start already at a stationary point takes no step (with nothing estimated, all do)
    fresh = (st.iterations == 0) & ~st.done
    st.done[fresh] = _stopped(obj, st.theta[fresh], st.grad[fresh], st.rejected[fresh],
                              cfg["tolerance"])
    iters = cfg["iterations"]
    if st.history.shape[1] < iters + 1:  # resumed with more iterations than it began with
        st.history = np.pad(st.history, ((0, 0), (0, iters + 1 - st.history.shape[1])),
                            constant_values=np.nan)
    say.stage(np.where(st.done, iters, st.iterations).sum() / (S * iters))
    todo = [s for s in range(S) if not st.done[s]]
    queue = [np.array(todo[k:k + B]) for k in range(0, len(todo), B)]
    mask = jnp.ones((B, P), obj.dtype)

    def begin(theta, carried, leaves):
        """The optimiser state: fresh, or (a resumed start) as the interrupted run had it."""
        state = opt.init(theta)
        if carried.any():
            flat, tree = jax.tree_util.tree_flatten(state)
            state = jax.tree_util.tree_unflatten(tree, [
                jnp.asarray(np.where(carried.reshape((-1,) + (1,) * (x.ndim - 1)), y, x),
                            x.dtype) for x, y in zip(flat, leaves)])
        return state

    def launch(idx):
        pad = np.concatenate([idx, np.full(B - len(idx), idx[-1])])
        carried = st.iterations[pad] > 0
        leaves = None
        if carried.any():
            shapes = [np.shape(x)[1:] for x in jax.tree_util.tree_leaves(
                opt.init(st.theta[:1]))]
            if st.opt_leaves is None or [x.shape[1:] for x in st.opt_leaves] != shapes:
                raise FitError("the stored optimiser state does not match this optimiser "
                               "(another optimizer setting?)")
            leaves = [x[pad] for x in st.opt_leaves]
        # the value and gradient as stored (recomputed by another compiled program they
        # could differ in the last bits, and a resumed fit would not repeat the original)
        args = (jnp.asarray(st.theta[pad], obj.dtype), begin(st.theta[pad], carried, leaves),
                jnp.asarray(st.value[pad], obj.dtype), jnp.asarray(st.grad[pad], obj.dtype),
                mask, jnp.asarray(st.done[pad]), jnp.asarray(st.rejected[pad], jnp.int32))
        return workers.submit(opt.step, *args), (idx, pad)

    def record(idx, out):
        theta, state, value, grad, rejected, evaluations = out
        n = len(idx)
        flat = [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]
        if st.opt_leaves is None:
            st.opt_leaves = [np.zeros((S,) + x.shape[1:], x.dtype) for x in flat]
        for mine, x in zip(st.opt_leaves, flat):
            mine[idx] = x[:n]
        st.theta[idx] = np.asarray(theta)[:n]
        st.value[idx] = np.asarray(value)[:n]
        st.grad[idx] = np.asarray(grad)[:n]
        st.rejected[idx] = np.asarray(rejected)[:n]
        st.evaluations[idx] += np.asarray(evaluations)[:n]

    running = dict(launch(queue.pop(0)) for _ in range(min(workers.n, len(queue))))
    while running:
        future = next(workers.completed(running))
        idx, pad = running.pop(future)
        out = future.result()
        theta, state, value, grad, rejected, _ = out
        n = len(idx)
        moved = ~st.done[idx]
        record(idx, out)
        st.iterations[idx[moved]] += 1
        st.history[idx[moved], st.iterations[idx[moved]]] = st.value[idx[moved]]
        v, g = st.value[idx], st.grad[idx]
        st.done[idx] |= (_stopped(obj, st.theta[idx], g, st.rejected[idx], cfg["tolerance"])
                         | ~np.isfinite(v) | (st.iterations[idx] >= iters))
        save()
        total = (np.where(st.done, iters, st.iterations)).sum() / (S * iters)
        say(f"start{'s' if n > 1 else ''} {', '.join(str(i + 1) for i in idx)} of {S}: "
            f"iteration {', '.join(str(k) for k in st.iterations[idx])}/{iters}, NLL "
            + " ".join(f"{x:.6g}" for x in v), total)
        if st.done[idx].all():
            if queue:
                f, meta = launch(queue.pop(0))
                running[f] = meta
            continue
        done = jnp.asarray(st.done[pad])
        running[workers.submit(opt.step, theta, state, value, grad, mask, done, rejected)] = \
            (idx, pad)


def _held(theta, grad, lower, upper):
    """The coordinates on a bound whose gradient points out of the box (numpy or jax)."""
    return ((theta <= lower) & (grad > 0)) | ((theta >= upper) & (grad < 0))


def _projected_norm(obj: Objective, theta: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Largest entry of the gradient projected on the box: a coordinate at a bound whose
    gradient points out of the box counts 0 (the optimum may lie on a bound)."""
    g = np.where(_held(theta, grad, obj.lower, obj.upper), 0.0, np.asarray(grad, float))
    return np.max(np.abs(g), axis=-1, initial=0.0)


def _stopped(obj: Objective, theta, grad, rejected, tolerance: float) -> np.ndarray:
    """Per point: converged (projected gradient below ``tolerance``) or given up (REJECTIONS
    rejected steps in a row)."""
    return (_projected_norm(obj, np.asarray(theta), np.asarray(grad)) < tolerance) | (
        np.asarray(rejected) >= REJECTIONS)


def laplace_hessian(obj: Objective, theta: np.ndarray, batch: int,
                    workers: _Workers | None = None, grad: np.ndarray | None = None) -> np.ndarray:
    """Hessian of the NLL at ``theta`` (scale) by differences of the exact gradient.

    Central differences with the step eps^(1/3)·max(1, |θ|) of the fit's precision
    (6e-6 in float64: well inside the curvature's scale, far above the gradient's
    round-off); one-sided (against ``grad``, the gradient at ``theta``, evaluated if not
    given) for a coordinate within a step of its bound, whose other side the objective
    clips. 2P gradient evaluations, ``batch`` to a compiled call, on ``workers``."""
    P = len(theta)
    theta = np.asarray(theta, float)
    eps = np.cbrt(np.finfo(obj.dtype).eps) * np.maximum(1.0, np.abs(theta))
    eps = np.minimum(eps, 0.25 * (obj.upper - obj.lower))
    up = theta + eps <= obj.upper
    down = theta - eps >= obj.lower
    rows = [theta + np.eye(P)[i] * eps[i] for i in range(P) if up[i]]
    rows += [theta - np.eye(P)[i] * eps[i] for i in range(P) if down[i]]
    if grad is None and not (up & down).all():
        rows.append(theta)
    g = _gradients(obj, np.array(rows).reshape(-1, P), batch, workers)
    plus = dict(zip(np.flatnonzero(up), g[:up.sum()]))
    minus = dict(zip(np.flatnonzero(down), g[up.sum():up.sum() + down.sum()]))
    here = np.asarray(grad, float) if grad is not None else g[-1]
    H = np.empty((P, P))
    for i in range(P):
        hi = plus.get(i, here)
        lo = minus.get(i, here)
        H[i] = (hi - lo) / (eps[i] * ((i in plus) + (i in minus)))
    return 0.5 * (H + H.T)


def _gradients(obj: Objective, pts: np.ndarray, batch: int,
               workers: _Workers | None = None, values: bool = False):
    """The gradient (and with ``values``, the NLL) at each point, ``batch`` to a call."""
    own = workers is None
    workers = workers or _Workers(1)
    futures = {}
    try:
        for k in range(0, len(pts), batch):
            chunk = pts[k:k + batch]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
            futures[workers.submit(obj.value_and_grad_batch, padded)] = (k, len(chunk))
        v, g = np.empty(len(pts)), np.empty_like(pts)
        for f in workers.completed(futures):
            k, n = futures[f]
            value, grad = f.result()
            v[k:k + n], g[k:k + n] = np.asarray(value)[:n], np.asarray(grad)[:n]
    finally:
        if own:
            workers.close()
    return (v, g) if values else g


def trust_region_step(H, g, theta, lower, upper, radius, fixed=None):
    """A step p that lowers the quadratic model g·p + ½ pᵀHp within the trust region
    ‖p / (upper − lower)‖ ≤ radius and the box: (p, the model's decrease, ≥ 0).

    The coordinates ``fixed`` (bool, optional) stay; at a point where every other one is
    on a bound with the gradient pointing out (first-order optimal on the box), p = 0.
    Otherwise the best of three candidates, each in the box and the region:

    - the exact solution of the trust-region subproblem (Moré-Sorensen by the
      eigenvectors of the scaled Hessian, hard case included) on each face of the box
      the region reaches, where it lies in the box (``_faces``): with a positive definite
      H this is the optimum, as long as at most FACES bounds are within reach;
    - an active set from 0 (``_active_set``): each subproblem step cut at the first bound
      it meets, so that the model falls along every segment;
    - the generalised Cauchy point along the projected gradient (``_cauchy_point``).

    An earlier version put every coordinate that left the box on its bound at once: where
    the model's valley leaves the box at an angle that step could raise the model, and
    the polish stopped on a point that was not a minimum (Matthews' fit)."""
    H, g, theta = (np.asarray(x, float) for x in (H, g, theta))
    lower, upper = np.asarray(lower, float), np.asarray(upper, float)
    width = upper - lower
    Hs = H * width[:, None] * width[None, :]  # in q = p / width
    gs = g * width
    lo, hi = (lower - theta) / width, (upper - theta) / width

    def model(q):
        return -(gs @ q + 0.5 * q @ Hs @ q)

    stay = np.zeros(len(theta), bool) if fixed is None else np.asarray(fixed, bool)
    moving = ~stay & ~_held(theta, g, lower, upper)
    if not moving.any() or not np.any(gs[moving]):
        return np.zeros_like(theta), 0.0  # first-order optimal on the box
    cauchy = _cauchy_point(Hs, gs, lo, hi, radius, stay)
    candidates = [cauchy, _active_set(Hs, gs, lo, hi, radius, stay, np.zeros_like(theta)),
                  *_faces(Hs, gs, lo, hi, radius, stay)]
    q = max(candidates, key=model)
    return q * width, float(model(q))


FACES = 6  # the faces of the box are searched where at most this many bounds are in reach


def _faces(Hs, gs, lo, hi, radius, stay):
    """The solution of the subproblem on each face of the box the region reaches (the
    coordinates whose bound is within ``radius`` each free, on its lower or on its upper
    bound; the rest free), where it lies in the box: the optimum lies on one of them."""
    near = np.flatnonzero(~stay & ((-lo <= radius) | (hi <= radius)))
    if len(near) > FACES:
        return []
    out = []
    for pick in itertools.product((0, -1, 1), repeat=len(near)):
        q = np.zeros_like(gs)
        fixed = stay.copy()
        for i, side in zip(near, pick):
            if side:
                q[i] = lo[i] if side < 0 else hi[i]
                fixed[i] = True
        left = radius ** 2 - q @ q
        if left < 0:
            continue
        free = ~fixed
        if free.any():
            q[free] = _subproblem(Hs[np.ix_(free, free)], (gs + Hs @ q)[free],
                                  math.sqrt(left))
        if np.all(q >= lo) and np.all(q <= hi):
            out.append(q)
    return out


def _active_set(Hs, gs, lo, hi, radius, stay, q):
    """From q (in the box and the region), trust-region steps on the coordinates not on a
    bound, each cut at the first bound it meets (that coordinate then stays), until one
    ends inside the box; then those on a bound whose gradient points inwards are
    released and it goes on, up to 2P passes. Each segment lowers the model."""
    q = np.array(q, float)
    for _ in range(2 * len(q)):
        grad = gs + Hs @ q
        free = ~stay & ((q > lo) & (q < hi) | (q <= lo) & (grad < 0) | (q >= hi) & (grad > 0))
        while free.any():
            left = radius - np.linalg.norm(q)
            if left <= 1e-12 * radius:
                return q
            d = np.zeros_like(q)
            d[free] = _subproblem(Hs[np.ix_(free, free)], (gs + Hs @ q)[free], left)
            with np.errstate(divide="ignore", invalid="ignore"):
                room = np.where(d > 0, (hi - q) / d, np.where(d < 0, (lo - q) / d, np.inf))
            first = int(np.argmin(room))
            if room[first] >= 1.0:
                q = q + d
                break
            alpha = max(room[first], 0.0)
            hit = free & (room <= alpha * (1 + 1e-12))
            hit[first] = True
            q = q + alpha * d
            q[hit] = np.where(d[hit] > 0, hi[hit], lo[hit])
            free &= ~hit
        grad = gs + Hs @ q
        if not np.any(~stay & ((q <= lo) & (grad < 0) | (q >= hi) & (grad > 0))):
            break  # no coordinate on a bound would move inwards
    return q


def _cauchy_point(Hs, gs, lo, hi, radius, stay):
    """The first minimum of the model gs·q + ½ qᵀHs q along the projected gradient path
    q(t) = clip(−t·gs, lo, hi) (coordinates ``stay`` at 0) within ‖q‖ ≤ radius: the
    generalised Cauchy point (Nocedal & Wright, section 16.7), piece by piece between
    the breakpoints where a coordinate reaches its bound."""
    d = np.where(stay, 0.0, -gs)
    with np.errstate(divide="ignore", invalid="ignore"):
        reach = np.where(d > 0, hi / d, np.where(d < 0, lo / d, np.inf))
    q, t = np.zeros_like(gs), 0.0
    for t_next in np.append(np.unique(reach[np.isfinite(reach) & (reach > 0)]), np.inf):
        u = np.where(reach <= t, 0.0, d)  # coordinates on their bound stop
        if not u.any():
            break
        slope, curv = (gs + Hs @ q) @ u, u @ Hs @ u
        if slope >= 0:
            break
        a, b, c = u @ u, 2.0 * q @ u, q @ q - radius ** 2
        span = min(t_next - t, (-b + math.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a))
        tau = span if curv <= 0 else min(span, -slope / curv)
        q = q + tau * u
        if tau < t_next - t:
            break
        t = t_next
        q = np.clip(q, lo, hi)  # those reaching a bound now: exactly on it
    return q


def _subproblem(H, g, radius):
    """argmin g·q + ½ qᵀHq over ‖q‖ ≤ radius (H symmetric, small)."""
    if radius <= 0.0:  # a face of the box that the region only touches: no room to move
        return np.zeros_like(g)
    w, V = np.linalg.eigh(H)
    a = V.T @ g

    def q(lam):
        return -V @ (a / (w + lam))

    if w[0] > 0 and np.linalg.norm(q(0.0)) <= radius:
        return q(0.0)  # the Newton step lies inside
    lo = max(0.0, -w[0])
    hi = lo + np.linalg.norm(a) / radius  # ‖q(hi)‖ ≤ ‖a‖ / (hi − lo) = radius
    tiny = 1e-12 * max(1.0, hi)
    if np.linalg.norm(q(lo + tiny)) <= radius:
        # hard case: g has (almost) no part along the lowest eigenvector; go to the
        # boundary along it
        keep = w + lo > tiny
        base = -V[:, keep] @ (a[keep] / (w[keep] + lo))
        tau = np.sqrt(max(radius ** 2 - base @ base, 0.0))
        return base + tau * V[:, 0]
    for _ in range(200):  # ‖q(λ)‖ falls with λ: bisect ‖q(λ)‖ = radius
        mid = 0.5 * (lo + hi)
        if np.linalg.norm(q(mid)) > radius:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-14 * max(1.0, hi):
            break
    return q(hi)


ACCEPT = 1e-4  # a trust-region step is taken when the NLL falls by this share of the
#               model's predicted decrease


def _new_radius(radius: float, rho: float, scaled_step: np.ndarray) -> float:
    """The trust region after a step (scaled by the bounds) whose actual over predicted
    decrease was rho: a quarter of the step after a poor one, doubled (up to the box's
    diagonal) after a good one that reached the region's edge."""
    size = float(np.linalg.norm(scaled_step))
    if rho < 0.25:
        return 0.25 * size
    if rho > 0.75 and size > 0.99 * radius:
        return min(2.0 * radius, math.sqrt(len(scaled_step)))
    return radius


def _sr1(H: np.ndarray, s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The symmetric rank-one update of H for the step s and gradient change y, skipped
    where its denominator is tiny (Nocedal & Wright, eq. 6.26)."""
    r = y - H @ s
    den = r @ s
    if not np.isfinite(den) or abs(den) < 1e-8 * np.linalg.norm(s) * np.linalg.norm(r):
        return H
    return H + np.outer(r, r) / den


def _polish(obj, st: FitState, B: int, workers: _Workers, cfg, save, say):
    """Trust-region Newton from the best start: the Hessian by differences of the exact
    gradient (``laplace_hessian``), the step from ``trust_region_step``, taken when the
    NLL falls by at least ACCEPT of what the model predicted. Stops at
    ``polish_iterations``, a projected gradient below ``tolerance``, a predicted
    decrease below POLISH_DECREASE, or a stall (POLISH_STALL: a cusp of the NLL, where
    no quadratic model holds, or a Hessian too noisy to follow). The Hessian at the
    final point is the Laplace one."""
    iters = cfg["polish_iterations"]
    if st.polish_history is None or len(st.polish_history) < iters + 1:
        old = st.polish_history if st.polish_history is not None else [st.best_value]
        st.polish_history = np.full(max(iters + 1, len(old)), np.nan)
        st.polish_history[:len(old)] = old
    if st.best_grad is None:
        st.best_grad = _gradients(obj, st.best[None], B, workers)[0]
    say.stage()
    while st.polish_iterations < iters:
        g = st.best_grad
        if _projected_norm(obj, st.best, g) < cfg["tolerance"]:
            break
        if st.hessian is None:
            st.hessian = laplace_hessian(obj, st.best, B, workers, g)
            save()
        p, predicted = trust_region_step(st.hessian, g, st.best, obj.lower, obj.upper,
                                         st.polish_radius)
        if not predicted > POLISH_DECREASE:
            break
        value, grad = _gradients(obj, (st.best + p)[None], B, workers, values=True)
        value, grad = float(value[0]), grad[0]
        rho = (st.best_value - value) / predicted if np.isfinite(value) else -np.inf
        st.polish_radius = _new_radius(st.polish_radius, rho, p / (obj.upper - obj.lower))
        if rho > ACCEPT and np.all(np.isfinite(grad)):
            st.best, st.best_value, st.best_grad = st.best + p, value, grad
            st.hessian = None
        st.polish_iterations += 1
        st.polish_history[st.polish_iterations] = st.best_value
        say(f"polish: iteration {st.polish_iterations}/{iters}, NLL {st.best_value:.8g} "
            f"(step to {value:.8g}, {'taken' if st.hessian is None else 'refused'}; the model "
            f"predicted a decrease of {predicted:.3g})", st.polish_iterations / iters, force=True)
        save()
        k, least = POLISH_STALL
        n = st.polish_iterations
        if st.polish_radius < 1e-12 or (n >= k and st.polish_history[n - k]
                                        - st.polish_history[n] < least):
            break


PROFILE_ROUNDS = 4  # a profile side that has not risen by CHI2_95 / 2 is extended this often


def _profile_side(obj, st: FitState, i: int, side: int, K: int, step: float, start: float):
    """K new points on one side of parameter i's profile, from ``start`` in steps of ``step``
    (scale), stopping at the bound; rows (i, side, value, done)."""
    bound = obj.lower[i] if side < 0 else obj.upper[i]
    rows = []
    for k in range(1, K + 1):
        x = start + side * k * step
        if (x - bound) * side >= 0:
            rows.append((i, side, bound, 0.0))
            break
        rows.append((i, side, x, 0.0))
    return rows


def _first_profile_step(obj, st: FitState, i: int, side: int, K: int, sd: float):
    """The spacing (scale) of the first K points on one side of parameter i's profile, so
    that they reach past the 95% threshold once, or None where the optimum is on that
    side's bound. At an interior optimum: 2.5 Laplace standard deviations (the threshold
    is at 1.96). At an optimum held on the other bound by its gradient g, the profile
    rises linearly from it, by g per unit, where the Laplace curvature says nothing
    (its difference is one-sided there): 1.25 times the distance where g·d = CHI2_95/2."""
    span = (st.best[i] - obj.lower[i]) if side < 0 else (obj.upper[i] - st.best[i])
    tol = 1e-9 * max(1.0, abs(st.best[i]))
    if span <= tol:
        return None
    other = (obj.upper[i] - st.best[i]) if side < 0 else (st.best[i] - obj.lower[i])
    rise = side * st.best_grad[i] if st.best_grad is not None else 0.0
    if other <= tol and rise > 0:
        step = 1.25 * (CHI2_95 / 2) / rise / K
    elif np.isfinite(sd) and sd > 0:
        step = 2.5 * sd / K
    else:
        step = span / K
    return min(step, span / K)


def _profiles(obj, opt, st: FitState, B: int, workers: _Workers, cfg, save, say):
    """Profile likelihoods: rows (parameter, side, scaled value, done) are re-optimised in
    batches of B, ``workers.n`` batches at once; a side that has not risen by CHI2_95 / 2
    at its last point and has not reached its bound gets K more points at twice the
    spacing, up to PROFILE_ROUNDS times. Returns as soon as a finished point lies below the
    optimum while restarts remain (``_lower_profile_point``): the fit will polish from
    there and lay the profiles out again, so the rest of this pass would be discarded."""
    P = len(obj.ids)
    K = cfg["profile_points"]
    which = cfg["profiles"] if cfg["profiles"] is not None else list(obj.ids)
    limit = st.best_value + CHI2_95 / 2
    wanted = [obj.ids.index(pid) for pid in which]
    if st.profile_points is None:
        st.profile_points, st.profile_values = np.zeros((0, 4)), np.zeros(0)
        st.profile_theta = np.zeros((0, P))
    # the parameters asked for now (a resumed fit's setting may have changed): points of
    # others dropped, the first points of new ones laid out
    keep = np.isin(st.profile_points[:, 0], wanted)
    added = [i for i in wanted if i not in st.profile_points[:, 0]]
    if added or not keep.all():
        sd = _laplace_sd(st.hessian, _held_at_best(obj, st))
        rows = []
        for i in added:
            for side in (-1, 1):
                step = _first_profile_step(obj, st, i, side, K, sd[i])
                if step is not None:
                    rows += _profile_side(obj, st, i, side, K, step, st.best[i])
        st.profile_points = np.concatenate([st.profile_points[keep],
                                            np.array(rows, float).reshape(-1, 4)])
        st.profile_values = np.concatenate([st.profile_values[keep], np.full(len(rows), np.nan)])
        st.profile_theta = np.concatenate([st.profile_theta[keep],
                                           np.tile(st.best, (len(rows), 1))])
        save()
    iters = cfg["profile_iterations"]
    say.stage(st.profile_points[:, 3].mean() if len(st.profile_points) else 0.0)
    running: dict = {}  # future -> the rows it re-optimises
    busy: set = set()
    while True:
        if _lower_profile_point(st, cfg["restarts"]) is not None:
            # the fit goes back to its polish from that point, and lays these profiles out
            # again from there: the points under way return unfinished and are dropped (an
            # error in one is not raised here: the next pass meets it again)
            workers.cancel.set()
            for _ in workers.completed(running):
                pass
            workers.cancel.clear()
            return
        if st.profile_points[:, 3].all():
            more = []
            for i, side in {(int(r[0]), int(r[1])) for r in st.profile_points}:
                sel = np.flatnonzero((st.profile_points[:, 0] == i)
                                     & (st.profile_points[:, 1] == side))
                far = sel[np.argmax(np.abs(st.profile_points[sel, 2] - st.best[i]))]
                x = st.profile_points[far, 2]
                bound = obj.lower[i] if side < 0 else obj.upper[i]
                near = sel[np.argmin(np.abs(st.profile_points[sel, 2] - st.best[i]))]
                rounds = len(sel) / K
                new = []
                if rounds >= PROFILE_ROUNDS:
                    pass
                elif st.profile_values[far] < limit and abs(x - bound) > 1e-12:
                    # not risen yet: further out, at twice the spacing
                    step = 2.0 * abs(x - st.best[i]) / len(sel)
                    new = _profile_side(obj, st, i, side, K, step, x)
                    start = far
                elif not st.profile_values[near] - st.best_value <= 2.0 * CHI2_95:
                    # the nearest point rose far past the threshold (or failed): the crossing
                    # lies close to the optimum, where a straight line through one point
                    # says little; K points inside the nearest one
                    step = abs(st.profile_points[near, 2] - st.best[i]) / (2.0 * K)
                    new = _profile_side(obj, st, i, side, K, step, st.best[i])
                    start = None
                if new:
                    more += new
                    warm = st.best if start is None else st.profile_theta[start]
                    st.profile_theta = np.concatenate(
                        [st.profile_theta, np.tile(warm, (len(new), 1))])
            if not more:
                break
            st.profile_points = np.concatenate([st.profile_points, np.array(more, float)])
            st.profile_values = np.concatenate([st.profile_values, np.full(len(more), np.nan)])
            save()
        todo = [j for j in np.flatnonzero(st.profile_points[:, 3] == 0) if j not in busy]
        while todo and len(running) < workers.n:
            group, todo = np.array(todo[:B]), todo[B:]
            pad = np.concatenate([group, np.full(B - len(group), group[-1])])
            theta = np.array(st.profile_theta[pad])  # warm start: the optimum, or the last point
            mask = np.ones((B, P))
            for b, j in enumerate(pad):
                i = int(st.profile_points[j, 0])
                # moved along the profile's path as the Hessian at the optimum predicts it
                path = _profile_path(st.hessian, i, P)
                theta[b] += (st.profile_points[j, 2] - theta[b, i]) * path
                theta[b, i] = st.profile_points[j, 2]
                mask[b, i] = 0.0
            theta = np.clip(theta, obj.lower, obj.upper)
            running[workers.submit(_profile_point, obj, opt, theta, mask, iters,
                                   cfg["tolerance"], workers.cancel, st.hessian)] = group
            busy.update(group)
        future = next(workers.completed(running))
        group = running.pop(future)
        busy.difference_update(group)
        theta, value = future.result()
        st.profile_values[group] = value[: len(group)]
        st.profile_theta[group] = theta[: len(group)]
        st.profile_points[group, 3] = 1.0
        save()
        finished = int(st.profile_points[:, 3].sum())
        say(f"profiles: {finished}/{len(st.profile_points)} points",
            finished / len(st.profile_points), force=True)


def _profile_path(H: np.ndarray | None, i: int, P: int) -> np.ndarray:
    """d θ / d θ_i along parameter i's profile where the NLL is the quadratic of Hessian H
    (P × P): the others at their conditional optimum, −H_oo⁻¹ H_oi (e_i where H_oo is not
    positive definite or there is no Hessian)."""
    d = np.zeros(P)
    d[i] = 1.0
    if H is None or P < 2:
        return d
    o = np.arange(P) != i
    try:
        c = np.linalg.cholesky(H[np.ix_(o, o)])
    except np.linalg.LinAlgError:
        return d
    d[o] = -np.linalg.solve(c.T, np.linalg.solve(c, H[o, i]))
    return d if np.all(np.isfinite(d)) else np.eye(P)[i]


def _profile_point(obj, opt, theta, mask, iters: int, tolerance: float, cancel, H=None):
    """Re-optimise a batch of profile points (their masked coordinate held): (theta, NLL).
    Returns early, unfinished, when ``cancel`` is set (the fit is stopping, or the pass of
    profiles is abandoned for a lower point).

    With a finite Hessian H (the Laplace one), trust-region steps from it, updated by SR1
    from each step's change of gradient: one gradient evaluation a step, and the valley's
    curvature known from the start. Without, optax's L-BFGS (``opt``)."""
    if H is not None and np.all(np.isfinite(H)):
        return _profile_point_tr(obj, theta, mask, iters, tolerance, cancel, H)
    B = len(theta)
    theta = jnp.asarray(theta, obj.dtype)
    state = opt.init(theta)
    value, grad = obj.value_and_grad_batch(theta)
    done = jnp.zeros(B, bool)
    rejected = jnp.zeros(B, jnp.int32)
    mask = jnp.asarray(mask, obj.dtype)
    for _ in range(iters):
        if cancel.is_set():
            break
        theta, state, value, grad, rejected, _ = opt.step(theta, state, value, grad, mask,
                                                          done, rejected)
        done = jnp.asarray(np.asarray(done) | _stopped(obj, theta, grad * mask, rejected,
                                                       tolerance))
        if bool(np.all(np.asarray(done))):
            break
    return np.asarray(theta), np.asarray(value)


def _profile_point_tr(obj, theta, mask, iters, tolerance, cancel, H):
    theta = np.array(theta, float)
    B = len(theta)
    fixed = np.asarray(mask) == 0
    width = obj.upper - obj.lower
    value, grad = (np.array(x, float) for x in obj.value_and_grad_batch(theta))
    hess = [np.array(H, float) for _ in range(B)]
    radius = np.full(B, POLISH_RADIUS)
    done = ~np.isfinite(value)
    for _ in range(iters):
        if cancel.is_set():
            break
        steps, predicted = np.zeros_like(theta), np.zeros(B)
        for b in np.flatnonzero(~done):
            free_grad = np.where(fixed[b], 0.0, grad[b])
            if _projected_norm(obj, theta[b], free_grad) < tolerance:
                done[b] = True
                continue
            steps[b], predicted[b] = trust_region_step(hess[b], grad[b], theta[b], obj.lower,
                                                       obj.upper, radius[b], fixed[b])
            done[b] = not predicted[b] > POLISH_DECREASE
        if done.all():
            break
        new_value, new_grad = (np.array(x, float) for x in
                               obj.value_and_grad_batch(theta + steps))
        for b in np.flatnonzero(~done):
            ok = np.isfinite(new_value[b]) and np.all(np.isfinite(new_grad[b]))
            rho = (value[b] - new_value[b]) / predicted[b] if ok else -np.inf
            radius[b] = _new_radius(radius[b], rho, steps[b] / width)
            if ok:
                s = np.where(fixed[b], 0.0, steps[b])
                hess[b] = _sr1(hess[b], s, np.where(fixed[b], 0.0, new_grad[b] - grad[b]))
            if rho > ACCEPT and ok:
                theta[b], value[b], grad[b] = theta[b] + steps[b], new_value[b], new_grad[b]
            done[b] |= radius[b] < 1e-12
    return theta, value


def _laplace_sd(H: np.ndarray, held: np.ndarray) -> np.ndarray:
    """Standard deviations on the parameter scale from the Hessian (inf where not positive).

    The coordinates ``held`` (on a bound, the NLL falling outwards) are left out: the
    others' come from their block of H, conditional on those at their bounds, and theirs
    are inf (a quadratic says nothing of a minimum on a bound)."""
    sd = np.full(len(H), np.inf)
    free = ~np.asarray(held, bool)
    if not free.any():
        return sd
    try:
        w, V = np.linalg.eigh(H[np.ix_(free, free)])
    except np.linalg.LinAlgError:
        return sd
    # directions of zero or negative curvature: not determined
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(w > 0, 1.0 / np.where(w > 0, w, 1.0), np.inf)
        sd[free] = np.sqrt((V ** 2) @ inv)
    return sd


def _held_at_best(obj: Objective, st: FitState) -> np.ndarray:
    """The parameters on a bound at the best point whose gradient points out of the box."""
    if st.best_grad is None:
        return np.zeros(len(obj.ids), bool)
    return _held(np.asarray(st.best, float), np.asarray(st.best_grad, float), obj.lower,
                 obj.upper)


def _crossing(x0: float, x1: float, d0: float, d1: float, linear: bool) -> float:
    """Where a profile rises past CHI2_95 / 2 between two of its points, at rises d0 < d1
    above the optimum: interpolated linearly in the signed root sqrt(2 d), exact where the
    profile is quadratic (an interior optimum: Δ = (x − x̂)² / 2σ², whose root is linear in
    x, where interpolating Δ itself put the end too near the optimum: at points 1 and 3
    standard deviations out, 1.71 σ for 1.96 σ); ``linear`` (an optimum held on a bound,
    whose profile rises linearly from it by the gradient) interpolates Δ itself."""
    d0 = max(d0, 0.0)
    if linear:
        a, b, target = d0, d1, CHI2_95 / 2
    else:
        a, b, target = math.sqrt(2 * d0), math.sqrt(2 * max(d1, 0.0)), math.sqrt(CHI2_95)
    frac = (target - a) / (b - a) if b > a else 1.0
    return x0 + frac * (x1 - x0)


def summarise(obj: Objective, st: FitState) -> dict:
    """Per parameter: fitted value, Laplace and profile intervals (linear scale), flags."""
    P = len(obj.ids)
    held = _held_at_best(obj, st)
    free = ~held
    sd = _laplace_sd(st.hessian, held) if st.hessian is not None else np.full(P, np.inf)
    cov, minimum = None, None
    if st.hessian is not None and free.any():
        block = st.hessian[np.ix_(free, free)]
        w = np.linalg.eigvalsh(block) if np.all(np.isfinite(block)) else [np.nan]
        minimum = bool(np.all(np.asarray(w) > 0))
        if minimum:  # conditional on the held parameters, which have no row (NaN)
            cov = np.full((P, P), np.nan)
            cov[np.ix_(free, free)] = np.linalg.inv(block)
    z = 1.959963984540054
    rows = {}
    for i, pid in enumerate(obj.ids):
        sc = obj.scales[i]
        q = obj.fp.parameter(pid)
        # exp(log(bound)) may round past the bound (as in ``Objective.linear``): a
        # parameter file must hold a value its scenario accepts
        best = float(np.clip(from_scale(st.best[i], sc), q.lower, q.upper))
        if held[i]:  # on its bound: the bound itself, not exp(log(bound))
            best = q.lower if st.best[i] <= obj.lower[i] else q.upper
        wald = (float(from_scale(max(st.best[i] - z * sd[i], obj.lower[i]), sc)),
                float(from_scale(min(st.best[i] + z * sd[i], obj.upper[i]), sc))) \
            if np.isfinite(sd[i]) else (math.nan, math.nan)
        prof = (math.nan, math.nan)
        flags = []
        if st.profile_points is not None and (st.profile_points[:, 0] == i).any():
            sel = st.profile_points[:, 0] == i
            pts = st.profile_points[sel, 2]
            vals = st.profile_values[sel]
            limit = st.best_value + CHI2_95 / 2
            ends = []
            for side in (-1, 1):
                s = (pts - st.best[i]) * side > 0
                order = np.argsort(np.abs(pts[s] - st.best[i]))
                xs = np.concatenate([[st.best[i]], pts[s][order]])
                ys = np.concatenate([[st.best_value], vals[s][order]])
                end = math.nan
                for k in range(1, len(xs)):
                    if not np.isfinite(ys[k]) or ys[k] >= limit:
                        y1 = ys[k] if np.isfinite(ys[k]) else limit
                        end = _crossing(xs[k - 1], xs[k], ys[k - 1] - st.best_value,
                                        y1 - st.best_value, linear=held[i])
                        break
                bound = obj.lower[i] if side < 0 else obj.upper[i]
                if len(xs) == 1 and abs(st.best[i] - bound) <= 1e-9 * max(1.0, abs(bound)):
                    flags.append(f"optimum on the {'lower' if side < 0 else 'upper'} bound")
                    end = bound
                elif math.isnan(end):
                    last = float(from_scale(xs[-1], sc))
                    flags.append(f"profile flat {'below' if side < 0 else 'above'} "
                                 f"(no rise of {CHI2_95 / 2:.2f} by {last:.4g})")
                    end = xs[-1]
                ends.append(end)
                if np.any(ys[1:][np.isfinite(ys[1:])] < st.best_value - LOWER):
                    flags.append("profile found a lower NLL: the optimum is not global")
            prof = (float(from_scale(ends[0], sc)), float(from_scale(ends[1], sc)))
        profiled = st.profile_points is not None and (st.profile_points[:, 0] == i).any()
        if not profiled:
            flags.append("not profiled")
        # 1 identifiable, 0 not (a flat profile side), -1 unknown (not profiled, and no
        # finite Laplace standard deviation)
        if any(f.startswith("profile flat") for f in flags):
            identifiable = 0
        elif profiled or np.isfinite(sd[i]):
            identifiable = 1
        else:
            identifiable = -1
        rows[pid] = {"value": best, "scale": sc, "sd_scale": float(sd[i]), "wald": wald,
                     "profile": prof, "identifiable": identifiable, "flags": flags}
    notes = []
    if held.any():
        notes.append(f"{', '.join(np.asarray(obj.ids)[held])} on "
                     f"{'its bound' if held.sum() == 1 else 'their bounds'} with the NLL "
                     "falling outwards: a minimum on the boundary of the box has no Laplace "
                     "interval there, and the others' are conditional on "
                     f"{'it' if held.sum() == 1 else 'them'}")
    if minimum is False:
        notes.append("the Hessian at the best point is not positive definite"
                     + (" over the parameters not held at a bound" if held.any() else "")
                     + ": it is not a minimum (the optimisation has not converged), or the "
                     "NLL is not smooth there and the Hessian's differences straddle a kink "
                     "(scenarios/calibration/probe_direction.py tells which); either way "
                     "the Laplace intervals are undefined, and the profiles may start from "
                     "a point that is not optimal")
    return {"parameters": rows, "covariance": cov, "nll": st.best_value, "notes": notes}


def _final_datasets(obj: Objective, st: FitState, summary: dict) -> dict:
    out = {}
    rows = summary["parameters"]
    out["summary/value"] = np.array([rows[p]["value"] for p in obj.ids])
    out["summary/wald"] = np.array([rows[p]["wald"] for p in obj.ids])
    out["summary/profile"] = np.array([rows[p]["profile"] for p in obj.ids])
    out["summary/identifiable"] = np.array([rows[p]["identifiable"] for p in obj.ids])
    out["summary/flags"] = _strings(["; ".join(rows[p]["flags"]) for p in obj.ids])
    out["summary/notes"] = _strings(summary["notes"])
    if summary["covariance"] is not None:
        out["laplace/covariance"] = summary["covariance"]
    theta = jnp.asarray(st.best, obj.dtype)
    closed: dict = {}
    h, sigma, terms = obj.evaluate(theta, closed=closed)
    if closed:
        out["closed_form/id"] = _strings(list(closed))
        out["closed_form/value"] = np.array([float(v) for v in closed.values()])
    ms = obj.fp.measurements
    back = np.empty(len(obj.order), int)
    back[obj.order] = np.arange(len(obj.order))
    out["measurements/simulated"] = np.asarray(h)[back]
    out["measurements/sigma"] = np.asarray(sigma)[back]
    out["measurements/nll"] = np.asarray(terms)[back]
    out["measurements/measurement"] = ms.value
    out["measurements/time_min"] = ms.time_min
    out["measurements/observable"] = _strings([obj.fp.observables[i].id for i in ms.observable])
    out["measurements/condition"] = _strings([obj.fp.conditions[i].id for i in ms.condition])
    for cid, (days, series) in obj.predictions(st.best).items():
        out[f"simulated/{cid}/time_day"] = days
        for oid, v in series.items():
            out[f"simulated/{cid}/{oid}"] = v
    return out


def parameter_file_path(output: str) -> str:
    return os.path.splitext(output)[0] + ".parameters.toml"


def write_parameter_file(obj: Objective, st: FitState, summary: dict, path: str) -> None:
    """The fitted model values as a TOML file a scenario names (``parameters_file``)."""
    where = os.path.relpath(os.path.abspath(obj.fp.path), os.path.dirname(os.path.abspath(path)))
    lines = [f"# fitted by tmesim fit from {where}",
             f"# NLL {st.best_value:.8g}; intervals: 95% profile likelihood",
             *(f"# note: {n}" for n in summary.get("notes", ())), "", "[parameters]"]
    entries = []  # (path, value, note): the fitted values, then the model's fixed ones
    for pid in obj.ids:
        if not obj.fp.parameter(pid).model:
            continue
        r = summary["parameters"][pid]
        lo, hi = r["profile"]
        note = (f"  # 95% [{lo:.6g}, {hi:.6g}]" if np.isfinite([lo, hi]).all()
                else "  # not profiled") \
            + {1: "", 0: " not identifiable", -1: ", identifiability unknown"}[r["identifiable"]] \
            + "".join(f"; {f}" for f in r["flags"] if not f.startswith(("not profiled",
                                                                         "profile flat")))
        entries.append((pid, r["value"], note))
    # so that a scenario naming the file runs the fitted model: what the problem held fixed
    entries += [(q.id, q.nominal, "  # not fitted: fixed in the parameter table")
                for q in obj.fp.parameters if q.model and not q.estimate]
    for table, values in (("", obj.fp.scenario.data["parameters"]),
                          ("diffusion.", obj.fp.scenario.data["diffusion"])):
        entries += [(table + k, v, "  # not fitted: set by the problem's scenario")
                    for k, v in values.items()
                    if table + k not in {e[0] for e in entries}]
    groups: dict = {}
    for pid, value, note in entries:
        group, _, key = pid.rpartition(".")
        if group == "diffusion":
            groups.setdefault(group, []).append(f"{key} = {value!r}{note}")
        elif group:  # initial state, medium, decay: a condition's values, not a scenario table
            groups.setdefault("", []).append(f"# {pid} = {value!r}{note}")
        else:
            lines.append(f"{key} = {value!r}{note}")
    for group, items in groups.items():
        lines += ["", f"[{group}]" if group else "# fitted values of the conditions "
                  "(geometry.radius_um, geometry.medium, ... in a scenario):", *items]
    text = "\n".join(lines) + "\n"

    def write(tmp):
        with open(tmp, "w") as fh:
            fh.write(text)

    _atomic_write(path, write)
