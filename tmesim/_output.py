"""HDF5 trajectories with checkpoints, their XDMF sidecar, and observables.

Layout (format 2):
    /meta         attrs: format, tmesim and JAX versions, device, seed, scenario
                  text and overrides, the text of the parameters_file it names
                  (and its path), command line, name; datasets status
                  ("running", "complete", "failed", "interrupted") and message
    /grid         attrs: shape, spacing (um), copies (8 for a simulated octant);
                  datasets x, y, z: voxel centres (um)
    /params       one scalar dataset per model parameter (attrs unit, meaning,
                  source, and lower, upper, scale: the bounds the run was built for)
    /snapshots    (1,): how many snapshots are complete (written after them)
    /time         (T,) snapshot times in min, T = every snapshot of the run; NaN
                  in the slots not written yet
    /fields/NAME  (T, X, Y, Z); attrs units, kind
    /observables/NAME  (T,) time series (NaN where not written); attr units, meaning
    /checkpoint/a, /checkpoint/b   two slots (F, X, Y, Z), written alternately;
                  /checkpoint/info rows a, b: (seq, step, outputs), seq −1 while
                  a slot is being written; resume takes the newest.

Every dataset is contiguous and allocated when the file is created, and the
file's blocks are reserved then (``posix_fallocate``): after creation a run
writes data into place and never changes the file's structure. A crash, a
kill, a signal or a full disk at any moment therefore leaves a valid file
with every completed snapshot and the last good checkpoint, and a full disk
is found before the run starts (or never, for ``resume``). Each snapshot and
checkpoint is made durable (flushed and fsync'd) before the count or the
slot's seq that declares it complete. Readers take the first
``/snapshots`` entries. Fields are stored as (x, y, z) in C order;
the XDMF sidecar therefore lists dimensions as (X, Y, Z), which ParaView reads
as (z, y, x): ParaView's X axis is tmesim's z (and Z is x).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
from xml.sax.saxutils import quoteattr

import h5py
import numpy as np

from ._observables import OBSERVABLES
from ._parameters import PARAMETERS

FORMAT = 2
STATUS_BYTES, MESSAGE_BYTES = 16, 2048


class OutputError(OSError):
    """A run file that cannot be created, opened or written (the message names it)."""


def device_text() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.platform}: {getattr(d, 'device_kind', d)}"


def _dcpl(fill=None):
    """Contiguous, allocated at creation; NaN written there for ``fill``, else nothing."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER if fill is None else h5py.h5d.FILL_TIME_ALLOC)
    return dcpl


def _placed(group, name, shape, dtype, fill=None):
    """A dataset whose storage exists from the start (writes never change the file's structure)."""
    dcpl = _dcpl(fill)
    dtype = np.dtype(dtype)
    if fill is not None:
        dcpl.set_fill_value(np.array(fill, dtype))
    return group.create_dataset(name, shape=shape, dtype=dtype, dcpl=dcpl)


def snapshot_count(h5: h5py.File) -> int:
    """Number of complete snapshots (a live or killed run's file has fewer than its slots)."""
    n = int(np.asarray(h5["snapshots"][...]).reshape(-1)[0])
    return max(0, min(n, int(h5["time"].shape[0])))


def read_status(h5: h5py.File) -> tuple[str, str]:
    """(status, message) of a run file."""
    m = h5["meta"]
    return tuple(bytes(np.asarray(m[key][...]).reshape(-1)[0]).rstrip(b"\0")
                 .decode("utf-8", "replace") for key in ("status", "message"))


def _fixed(text: str, size: int) -> np.bytes_:
    raw = text.encode("utf-8")
    if len(raw) > size:
        raw = raw[:size - 3].decode("utf-8", "ignore").encode("utf-8") + b"..."
    return np.bytes_(raw)


class Output:
    """An HDF5 run file being written (new or resumed). ``path`` is the name the
    run is known by; ``h5`` may be open under a temporary name until ``publish``."""

    def __init__(self, path, h5: h5py.File, file_name=None):
        self.path = str(path)
        self.h5 = h5
        self.file_name = str(file_name or path)  # where the file is now
        self.published = self.file_name == self.path

    # -- creation -----------------------------------------------------------
    @classmethod
    def create(cls, path, scenario, setup, command: str, snapshots: int) -> Output:
        """A new run file for ``path`` with room for ``snapshots`` snapshots, its space
        reserved, built under a temporary name beside ``path`` (``publish`` renames it).

        A disk without room raises ``OutputError`` before HDF5 writes a byte (HDF5
        failing to write its own structure can crash the process), and nothing is
        left behind.
        """
        path = str(path)
        directory, base = os.path.split(os.path.abspath(path))
        try:
            fd, file_name = tempfile.mkstemp(prefix=base + ".", suffix=".partial", dir=directory)
        except OSError as err:
            raise OutputError(f"{path}: cannot create the run file ({err.strerror})") from None
        try:
            if hasattr(os, "fchmod"):  # a plain new file's mode, not mkstemp's 0600
                mask = os.umask(0o022)
                os.umask(mask)
                os.fchmod(fd, 0o666 & ~mask)
            _allocate(fd, path, _planned_bytes(scenario, setup, snapshots))
            os.ftruncate(fd, 0)  # the room exists: give it back to HDF5, which starts anew
        except BaseException:
            os.unlink(file_name)
            raise
        finally:
            os.close(fd)
        try:
            h5 = h5py.File(file_name, "w")
        except (OSError, RuntimeError) as err:
            os.unlink(file_name)
            raise OutputError(f"{path}: cannot create the run file ({err})") from None
        out = cls(path, h5, file_name)
        try:
            cls._layout(h5, scenario, setup, command, snapshots)
            h5.flush()
            out.reserve()
        except BaseException as err:
            out.discard()
            if isinstance(err, OutputError):
                raise
            if isinstance(err, (OSError, RuntimeError)):
                raise OutputError(f"{path}: cannot write the run file ({err})") from None
            raise
        return out

    @staticmethod
    def _layout(h5, scenario, setup, command, snapshots):
        import jax

        from . import __version__

        meta = h5.create_group("meta")
        meta.attrs.update({
            "format": FORMAT, "tmesim_version": __version__, "jax_version": jax.__version__,
            "device": device_text(), "seed": scenario.data["run"]["seed"],
            "scenario": scenario.text, "scenario_source": scenario.source,
            "overrides": list(scenario.overrides) or [""], "command": command,
            # the named parameters_file as the run read it: a resume uses these values
            "parameters_file_source": (scenario.parameters_file or ("", ""))[0],
            "parameters_file": (scenario.parameters_file or ("", ""))[1],
            "name": scenario.name, "python": sys.version.split()[0],
        })
        # shape (1,), not scalars: HDF5 allocates a scalar's storage at its first write
        # written here, not as fill values: h5py passes a string fill value as a pointer
        _placed(meta, "status", (1,), f"S{STATUS_BYTES}")[0] = b"running"
        _placed(meta, "message", (1,), f"S{MESSAGE_BYTES}")[0] = b""
        grid = setup.grid
        g = h5.create_group("grid")
        g.attrs.update({"shape": grid.shape, "spacing": grid.spacing,
                        "copies": setup.problem.copies, "units": "um", "dt_min": scenario.dt})
        for a, name in enumerate("xyz"):
            g.create_dataset(name, data=grid.centers(a))
        p = h5.create_group("params")
        bounds = setup.problem.bounds
        for q in PARAMETERS:
            ds = p.create_dataset(q.name, data=float(setup.values["params"][q.name]))
            lower, upper, scale = bounds.get(q.name)
            ds.attrs.update({"unit": q.unit, "meaning": q.meaning, "source": q.source,
                             "lower": lower, "upper": upper, "scale": scale})
        _placed(h5, "snapshots", (1,), "i8", 0)
        _placed(h5, "time", (snapshots,), "f8", np.nan).attrs["units"] = "min"
        fields = h5.create_group("fields")
        shape = grid.shape
        dtype = np.dtype(setup.values["params"]["o2_uptake"].dtype)
        for name in scenario.stored_fields:
            s = setup.table.species[setup.table.index(name)]
            ds = _placed(fields, name, (snapshots,) + shape, dtype)
            ds.attrs.update({"units": s.units, "kind": s.kind,
                             "diffusion": float(setup.values["diffusion"].get(name, 0.0)),
                             "decay": float(setup.values["decay"].get(name, 0.0))})
        obs = h5.create_group("observables")
        for name, (unit, meaning) in OBSERVABLES.items():
            ds = _placed(obs, name, (snapshots,), "f8", np.nan)
            ds.attrs.update({"units": unit, "meaning": meaning})
        ck = h5.create_group("checkpoint")
        state = (len(setup.table),) + shape
        for slot in ("a", "b"):
            _placed(ck, slot, state, dtype)
        _placed(ck, "info", (2, 3), "i8", -1)

    @classmethod
    def open(cls, path) -> Output:
        """An existing run file, for writing (locked: refused while another process writes it)."""
        return cls(path, open_run(path, writable=True))

    def publish(self) -> None:
        """Give a file created under a temporary name its run's name (an atomic rename,
        made durable), then write its sidecar."""
        if not self.published:
            os.replace(self.file_name, self.path)
            self.file_name, self.published = self.path, True
            _fsync_directory(self.path)
        self.sidecar()

    def reserve(self) -> None:
        """Reserve the disk blocks of the whole file (again: a copy may have lost them),
        so no write of the run can find the disk full."""
        _allocate(self.h5.id.get_vfd_handle(), self.path, os.path.getsize(self.file_name))

    # -- writing ------------------------------------------------------------
    @property
    def n_outputs(self) -> int:
        return snapshot_count(self.h5)

    def _durable(self) -> None:
        """Flush HDF5's buffers and fsync: everything written so far is on disk."""
        self.h5.flush()
        try:
            fd = self.h5.id.get_vfd_handle()
        except (TypeError, ValueError, RuntimeError):
            return  # a driver without a file descriptor: flushed is as far as it goes
        os.fsync(fd)  # its errors (EIO, ENOSPC) must stop the run before the count moves

    def truncate(self, n: int) -> None:
        """Keep the first n snapshots (those up to the checkpoint a resume starts from)."""
        self.h5["snapshots"][0] = n
        self._durable()
        self.h5["time"][n:] = np.nan
        self._durable()

    def snapshot(self, t_min: float, fields: np.ndarray, names, obs: dict) -> None:
        k = self.n_outputs
        for name, ds in self.h5["fields"].items():
            ds[k] = fields[names.index(name)]
        for name, ds in self.h5["observables"].items():
            ds[k] = obs[name]
        self.h5["time"][k] = t_min
        self._durable()
        self.h5["snapshots"][0] = k + 1  # a snapshot counts once it is on disk
        self._durable()
        if self.published:
            self.sidecar()

    def sidecar(self) -> None:
        """Rewrite the XDMF sidecar; a failure (a full disk) is reported, not fatal."""
        try:
            write_xdmf(self.path, self.h5)
        except OSError as err:
            print(f"tmesim: warning: cannot write {xdmf_path(self.path)} ({err}); the run "
                  "file is unaffected", file=sys.stderr)

    def checkpoint(self, step: int, fields: np.ndarray) -> None:
        info = self.h5["checkpoint/info"]
        seqs = np.asarray(info[:, 0])
        slot = int(np.argmin(seqs))  # the older (or never written) slot
        info[slot] = (-1, -1, -1)  # invalid while being written
        self._durable()
        self.h5["checkpoint"]["ab"[slot]][...] = fields
        self._durable()
        info[slot] = (int(seqs.max()) + 1, step, self.n_outputs)
        self._durable()

    def set_status(self, status: str, message: str = "") -> None:
        self.h5["meta/status"][0] = _fixed(status, STATUS_BYTES)
        self.h5["meta/message"][0] = _fixed(message, MESSAGE_BYTES)
        self._durable()

    def close(self) -> None:
        self.h5.close()

    def discard(self) -> None:
        """Close, and remove the file if it was never published."""
        try:
            self.h5.close()
        finally:
            if not self.published:
                os.unlink(self.file_name)


METADATA_BYTES = 4 << 20  # bound on the structure (0.16 MiB measured: 31 fields, 8^3, 3 snapshots)


def _planned_bytes(scenario, setup, snapshots: int) -> int:
    """Size of a run file: its data, known exactly, and a bound on its structure."""
    voxels = int(np.prod(setup.grid.shape))
    item = np.dtype(setup.values["params"]["o2_uptake"].dtype).itemsize
    fields = len(scenario.stored_fields) * snapshots + 2 * len(setup.table)
    return fields * voxels * item + (len(OBSERVABLES) + 1) * snapshots * 8 + METADATA_BYTES


def _fsync_directory(path) -> None:
    """Make a rename in ``path``'s directory durable (POSIX; elsewhere a no-op)."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # a directory that cannot be fsync'd (some network filesystems)
    finally:
        os.close(fd)


def _allocate(fd: int, name: str, size: int) -> None:
    """posix_fallocate, with a message that says what to do when there is no room."""
    try:
        os.posix_fallocate(fd, 0, size)
    except AttributeError:  # no posix_fallocate (macOS, Windows): check the free space
        if shutil.disk_usage(os.path.dirname(os.path.abspath(name))).free < size:
            _no_room(name, size, errno.ENOSPC)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            _no_room(name, size, err.errno)
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise OutputError(f"{name}: cannot reserve room for the run file "
                              f"({err.strerror})") from None


def _no_room(name: str, size: int, code: int):
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(name))).free
    raise OutputError(
        f"{name}: no room for the run file: it needs {size / 2**20:.1f} MiB and "
        f"{free / 2**20:.1f} MiB are free there ({os.strerror(code)}); "
        "store fewer fields (run.fields) or fewer snapshots (run.output_every_days), "
        "or write elsewhere (-o)") from None


@contextlib.contextmanager
def reading(path):
    """Whatever a damaged file makes h5py or NumPy raise while it is read becomes one
    ValueError naming the file (the checks in ``open_run`` catch the usual damage)."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, OSError) as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{path}: damaged run file ({type(err).__name__}: {err})") from None


def open_run(path, writable: bool = False) -> h5py.File:
    """A run file of this format, checked; OutputError (naming the file) if it is not one.

    For reading it takes no lock, so a live run's file can be read (the complete
    snapshots: ``snapshot_count``); for writing HDF5's lock refuses a second writer.
    """
    if not os.path.isfile(path):
        raise OutputError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise OutputError(f"{path}: not an HDF5 file, so not a tmesim run file")
    try:
        h5 = h5py.File(path, "r+") if writable else h5py.File(path, "r", locking=False)
    except (OSError, RuntimeError) as err:
        if writable and "lock" in str(err).lower():
            raise OutputError(f"{path}: another process has the file open (a run still "
                              "going?)") from None
        raise OutputError(f"{path}: cannot open the run file{' for writing' * writable} "
                          f"({err})") from None
    try:
        _check_layout(h5)
    except OutputError as err:
        h5.close()
        raise OutputError(f"{path}: {err}") from None
    return h5


_META_TEXT = ("scenario", "scenario_source", "command", "name", "tmesim_version",
              "jax_version", "device")


def _check_layout(h5: h5py.File) -> None:
    """Raise OutputError unless ``h5`` is a whole tmesim run file this version can read:
    every object there, with the types and shapes the readers and ``resume`` rely on."""
    meta = h5.get("meta")
    fmt = meta.attrs.get("format") if isinstance(meta, h5py.Group) else None
    if fmt is None or "snapshots" not in h5:
        raise OutputError("not a tmesim run file of format 2 (no /meta format or /snapshots; "
                          "files written before tmesim 0.1's format 2 cannot be read)")
    if np.ndim(fmt) != 0 or not np.issubdtype(np.asarray(fmt).dtype, np.integer) \
            or int(fmt) != FORMAT:
        raise OutputError(f"/meta format {fmt!r}: this tmesim reads format {FORMAT}")

    def need(key, kind, shape=None, dtype=None):
        obj = h5.get(key)
        what = "group" if kind is h5py.Group else "dataset"
        if not isinstance(obj, kind):
            raise OutputError(f"/{key} missing or not a {what}: not a whole tmesim run file")
        if shape is not None and (obj.ndim != len(shape) or any(
                want is not None and got != want for got, want in zip(obj.shape, shape))):
            raise OutputError(f"/{key}: shape {obj.shape}, expected {shape}")
        if dtype is not None and obj.dtype.kind not in dtype:
            raise OutputError(f"/{key}: type {obj.dtype}, expected kind {dtype!r}")
        return obj

    for name in _META_TEXT:
        if not isinstance(meta.attrs.get(name), str):
            raise OutputError(f"/meta attribute {name!r} missing or not text")
    over = meta.attrs.get("overrides")
    if not (isinstance(over, np.ndarray) and over.ndim == 1
            and all(isinstance(o, str) for o in over)):
        raise OutputError("/meta attribute 'overrides' missing or not a list of text")
    grid = need("grid", h5py.Group)
    shape = np.asarray(grid.attrs.get("shape", ()))
    spacing = np.asarray(grid.attrs.get("spacing", ()), dtype=object)
    if not (shape.shape == (3,) and np.issubdtype(shape.dtype, np.integer)
            and (shape > 0).all()):
        raise OutputError(f"/grid attribute 'shape' is {shape!r}: expected 3 positive integers")
    try:
        ok = spacing.shape == (3,) and all(float(h) > 0 for h in spacing) and \
            float(grid.attrs["dt_min"]) > 0 and int(grid.attrs["copies"]) in (1, 8)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise OutputError("/grid attributes 'spacing' (3 positive numbers), 'dt_min' (> 0) "
                          "and 'copies' (1 or 8) expected")
    cube = tuple(int(n) for n in shape)
    need("meta/status", h5py.Dataset, (1,), "S")
    need("meta/message", h5py.Dataset, (1,), "S")
    need("snapshots", h5py.Dataset, (1,), "iu")
    slots = need("time", h5py.Dataset, (None,), "f").shape[0]
    for name in need("fields", h5py.Group, None):
        need(f"fields/{name}", h5py.Dataset, (slots, *cube), "f")
    for name in need("observables", h5py.Group, None):
        need(f"observables/{name}", h5py.Dataset, (slots,), "f")
    state = need("checkpoint/a", h5py.Dataset, (None, *cube), "f").shape
    need("checkpoint/b", h5py.Dataset, state, "f")
    need("checkpoint/info", h5py.Dataset, (2, 3), "iu")
    for attr in ("units", "meaning"):
        for name, ds in h5["observables"].items():
            if not isinstance(ds.attrs.get(attr), str):
                raise OutputError(f"/observables/{name}: attribute {attr!r} missing")
    for name, ds in h5["fields"].items():
        if not isinstance(ds.attrs.get("units"), str):
            raise OutputError(f"/fields/{name}: attribute 'units' missing")


def latest_checkpoint(h5: h5py.File):
    """(step, outputs, fields) of the newest complete checkpoint, or None."""
    if "checkpoint/info" not in h5:
        return None
    info = np.asarray(h5["checkpoint/info"][...])
    if info.shape != (2, 3) or info[:, 0].max() < 0:
        return None
    slot = int(np.argmax(info[:, 0]))
    seq, step, outputs = (int(v) for v in info[slot])
    return step, outputs, h5["checkpoint"]["ab"[slot]][...]


# --------------------------------------------------------------------------
def xdmf_path(h5_path) -> str:
    root, _ = os.path.splitext(str(h5_path))
    return root + ".xdmf"


def png_path(h5_path) -> str:
    root, _ = os.path.splitext(str(h5_path))
    return root + ".png"


def sidecar_tag(h5_path) -> str:
    """What a sidecar (XDMF comment, PNG "Source" text) says of the run file it belongs to."""
    name = os.path.basename(str(h5_path)).replace("--", "-_")  # "--" may not be in an XML comment
    return f"tmesim run file {name}"


def sidecar_of(sidecar, h5_path) -> bool:
    """Whether the file ``sidecar`` is the XDMF or PNG sidecar tmesim wrote for ``h5_path``."""
    tag = sidecar_tag(h5_path).encode("utf-8")
    try:
        with open(sidecar, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    if head.startswith(b"\x89PNG\r\n\x1a\n"):  # walk the text chunks before the image data
        pos = 8
        while pos + 8 <= len(head):
            size = int.from_bytes(head[pos:pos + 4], "big")
            kind, data = head[pos + 4:pos + 8], head[pos + 8:pos + 8 + size]
            if kind == b"IDAT":
                break
            key, _, value = data.partition(b"\0")
            if key == b"Source":
                if kind == b"tEXt":  # Latin-1 text
                    return value.decode("latin-1") == sidecar_tag(h5_path)
                if kind == b"iTXt" and value[:1] == b"\0":  # uncompressed UTF-8 text
                    return value[2:].split(b"\0", 2)[-1] == tag
            pos += 12 + size
        return False
    return b"<!-- " + tag + b" -->" in head[:1024]


def write_xdmf(h5_path, h5: h5py.File | None = None) -> str:
    """Write (atomically) the XDMF 2 sidecar describing every stored snapshot.

    One temporal collection of uniform grids (3DCoRectMesh, cell-centred
    attributes); each attribute is a hyperslab of /fields/NAME, so the
    sidecar adds no data. ``h5``: the file, if already open. Returns the sidecar's path.
    """
    path = xdmf_path(h5_path)
    href = os.path.basename(str(h5_path))
    if h5 is None:
        with h5py.File(h5_path, "r", locking=False) as opened:
            return write_xdmf(h5_path, opened)
    slots = int(h5["time"].shape[0])
    times = h5["time"][:snapshot_count(h5)]  # only complete snapshots
    shape = tuple(int(n) for n in h5["grid"].attrs["shape"])
    spacing = tuple(float(h) for h in h5["grid"].attrs["spacing"])
    precision = {n: ds.dtype.itemsize for n, ds in h5["fields"].items()}
    dims = " ".join(str(n) for n in shape)
    points = " ".join(str(n + 1) for n in shape)
    lines = ['<?xml version="1.0" ?>', '<!DOCTYPE Xdmf SYSTEM "Xdmf.dtd" []>',
             f"<!-- {sidecar_tag(h5_path)} -->",
             '<Xdmf Version="2.0">', " <Domain>",
             '  <Grid Name="tmesim" GridType="Collection" CollectionType="Temporal">']
    for k, t in enumerate(times):
        lines += [f'   <Grid Name="t{k}" GridType="Uniform">',
                  f'    <Time Value="{float(t)!r}" />',
                  f'    <Topology TopologyType="3DCoRectMesh" Dimensions="{points}" />',
                  '    <Geometry GeometryType="ORIGIN_DXDYDZ">',
                  '     <DataItem Format="XML" Dimensions="3">0 0 0</DataItem>',
                  '     <DataItem Format="XML" Dimensions="3">'
                  f'{" ".join(map(repr, spacing))}</DataItem>',
                  "    </Geometry>"]
        for name, prec in precision.items():
            lines += [f'    <Attribute Name={quoteattr(name)} '
                      'AttributeType="Scalar" Center="Cell">',
                      f'     <DataItem ItemType="HyperSlab" Dimensions="{dims}" Type="HyperSlab">',
                      '      <DataItem Dimensions="3 4" Format="XML">'
                      f'{k} 0 0 0 1 1 1 1 1 {dims}</DataItem>',
                      f'      <DataItem Dimensions="{slots} {dims}" NumberType="Float" '
                      f'Precision="{prec}" Format="HDF">{href}:/fields/{name}</DataItem>',
                      "     </DataItem>", "    </Attribute>"]
        lines.append("   </Grid>")
    lines += ["  </Grid>", " </Domain>", "</Xdmf>", ""]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    os.replace(tmp, path)
    return path
