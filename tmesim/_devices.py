"""Ensembles over devices (issue 15): which devices, and a batch split among them.

A batch of independent runs (organoids, parameter sets, conditions, a fit's
starts) needs no communication: each device takes an equal share of the
members and runs the same program on it. ``over_devices`` does this with
``jax.shard_map`` over a one-axis mesh: inside, each device runs the batched
function on its own members, so its loops (the time loop, a conjugate-gradient
solve's iterations) stop when its own members are done. Under ``jax.jit`` of a
``vmap`` with the batch merely placed over devices, XLA's partitioner keeps
``vmap``'s meaning instead: a while loop runs until every member of the whole
batch is done, and each of its iterations agrees on that across devices (an
all-reduce per conjugate-gradient iteration, measured on the organoid). A
fit's compiled calls go through ``over_devices`` with ``[fit] devices``.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def select_devices(n: int, where: str) -> list | None:
    """The first ``n`` devices of the default backend (0: all of them); None for one (the
    default device). ``where`` names the setting in the error when there are fewer. In a
    job of several processes (``jax.distributed``) every process must take part: ``n``
    is 0 or the job's device count."""
    available = jax.devices()
    if n == 0:
        n = len(available)
    if n > len(available):
        raise ValueError(f"{where}: devices = {n}, but this process sees {len(available)} "
                         f"({', '.join(str(d) for d in available)}); set it to at most "
                         f"{len(available)}, or 0 for all")
    if jax.process_count() > 1 and n != len(available):
        raise ValueError(f"{where}: devices = {n}, but this job of {jax.process_count()} "
                         f"processes has {len(available)} devices and each process must "
                         "hold a share: set it to 0 (all)")
    return None if n == 1 else available[:n]


def join_job() -> None:
    """Join a job of several processes (one per host or GPU) with ``jax.distributed``.

    The coordinator's address is $JAX_COORDINATOR_ADDRESS (host:port of process 0);
    the number of processes and this one's index come from $JAX_NUM_PROCESSES and
    $JAX_PROCESS_ID where set, else from a cluster JAX detects (SLURM, Open MPI,
    ...). Call before anything else uses JAX."""
    import os

    known = {}
    for key, arg in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if os.environ.get(key):
            try:
                known[arg] = int(os.environ[key])
            except ValueError:
                raise ValueError(f"${key} = {os.environ[key]!r}: expected a whole number"
                                 ) from None
    try:
        jax.distributed.initialize(**known)
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"cannot join a job of several processes ({err}); set "
                         "JAX_COORDINATOR_ADDRESS=host:port (process 0's), "
                         "JAX_NUM_PROCESSES and JAX_PROCESS_ID, or start the processes under "
                         "SLURM or Open MPI") from None


def leave_job() -> None:
    """Leave the job of several processes, if this process is in one, together with the
    others (``jax.distributed.shutdown``: a barrier, then each disconnects). Called
    before ``os._exit``, which skips the shutdown JAX registers for the interpreter's
    exit: a process that left without it could take the job's coordination service
    (process 0's) with it while another still used it, and JAX aborts a process that
    loses the service. The processes of a stopped run reach this at the same
    snapshot (they agree on signals and errors), so nobody waits long."""
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


def first_process() -> bool:
    """Whether this is the job's process 0 (the one process of a job of one): the process
    that writes a run's file and prints its progress). Outside a job this does not
    start JAX."""
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def whole(x) -> np.ndarray:
    """``x`` as one host array: a global array split over the processes of a job is
    gathered from all of them, one leading entry (a field) at a time, so a device holds
    one whole field at most on top of its share (every process must call this, and
    receives all of it)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    return np.stack([_gathered(x[i]) for i in range(x.shape[0])])


def _gathered(x) -> np.ndarray:
    """A global array split over the processes of a job, whole on every process."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def everywhere(tree):
    """Every array of ``tree`` whole on every process of a job, as host arrays (each leaf
    gathered at once: for small outputs, such as a fit's points); in one process,
    ``tree`` as it is. Every process must call this."""
    if jax.process_count() == 1:
        return tree
    return jax.tree_util.tree_map(
        lambda x: _gathered(x) if not getattr(x, "is_fully_addressable", True)
        else np.asarray(x), tree)


def each_process(values) -> np.ndarray:
    """The small integer array ``values`` of every process of the job, stacked (a job of
    one: ``values`` with a leading axis of 1). Every process must call this."""
    values = np.asarray(values, np.int32)
    if jax.process_count() == 1:
        return values[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(values))


def over_devices(fn, devices=None):
    """``fn`` (a batch -> a batch: every input and output leaf has the batch as its leading
    axis, e.g. ``jax.vmap(f)``) run with the batch split evenly over ``devices``
    (default: every device of the default backend), compiled once: each device runs
    ``fn`` on its share, and no data moves between devices. A batch that is not a
    multiple of the device count is padded with copies of its last member, whose
    results are dropped (in one process; a job of several, ``jax.distributed``, needs
    a multiple). The inputs may live anywhere: they are placed first (in a job every
    process gives the same whole batch, or a global array split as the outputs are, and
    holds its share of the outputs; ``everywhere`` gathers them)."""
    devices = list(jax.devices() if devices is None else devices)
    mesh = Mesh(np.array(devices), ("batch",))
    split = PartitionSpec("batch")
    sharding = NamedSharding(mesh, split)
    mapped = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=split, out_specs=split,
                                   check_vma=False))

    def call(*batch):
        sizes = {np.shape(x)[0] if np.ndim(x) else None
                 for x in jax.tree_util.tree_leaves(batch)}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(f"over_devices: every input needs the same leading (batch) "
                             f"axis; got leading sizes {sorted(map(str, sizes))}")
        (size,) = sizes
        pad = -size % len(devices)
        if pad and jax.process_count() > 1:
            raise ValueError(f"over_devices: a batch of {size} does not split evenly over "
                             f"the job's {len(devices)} devices, and across processes the "
                             f"padding cannot be cut back: give a multiple of {len(devices)}")
        if pad:
            batch = jax.tree_util.tree_map(
                lambda x: np.concatenate([x, np.repeat(np.asarray(x)[-1:], pad, 0)]), batch)
        if jax.process_count() > 1:  # every process gives the whole batch, keeps its share
            batch = jax.tree_util.tree_map(
                lambda x: np.asarray(x) if getattr(x, "is_fully_addressable", True) else x,
                batch)
        out = mapped(*jax.device_put(batch, sharding))
        return jax.tree_util.tree_map(lambda y: y[:size], out) if pad else out

    call.lower = lambda *batch: mapped.lower(*jax.device_put(batch, sharding))
    return call
