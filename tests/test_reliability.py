"""Reliability of run files and of the command line (docs/reliability.md cites each test).

A run file is laid out in full when it is created (every dataset contiguous and
allocated, its blocks reserved); after that a run only writes data into place.
The tests check that property byte for byte, then attack live runs the way
people do: a full disk (a file-size limit, portable; a real full tmpfs where
this machine can mount one), kill -9 at random moments, SIGINT during the first
compile, SIGTERM, a second writer, sidecars that belong to something else, a
reader of a live file, and a closed pipe.
"""

import io
import os
import random
import resource
import shutil
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
from helpers import held_open
from test_runs import TINY, UNTREATED, _tmesim

from tmesim import load_scenario, main
from tmesim._output import Output, latest_checkpoint, read_status, snapshot_count
from tmesim._run import _COMPILE_SECONDS, Progress, _observe_host, build
from tmesim._solve import start_state

SETS = sum((["--set", s] for s in TINY + ["run.days=2", "run.output_every_days=0.25",
                                          "run.checkpoint_every_days=0.5"]), [])
ENV = dict(os.environ, PYTHONUNBUFFERED="1", TMESIM_PROGRESS_SECONDS="0")
_SECONDS = {}


def _raw_regions(path):
    """(offset, size) of every dataset's data in the file: the only bytes a run may change."""
    regions = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            assert obj.id.get_create_plist().get_layout() in (h5py.h5d.CONTIGUOUS,
                                                              h5py.h5d.COMPACT), name
            if obj.id.get_offset() is not None:  # compact data lives in its header
                regions.append((obj.id.get_offset(), obj.id.get_storage_size()))

    with h5py.File(path, "r") as h5:
        h5.visititems(visit)
    return regions


def _structure(path, regions):
    data = bytearray(open(path, "rb").read())
    for offset, size in regions:
        data[offset:offset + size] = bytes(size)
    return bytes(data)


def test_after_creation_a_run_changes_only_data_in_place(tmp_path):
    """Snapshots, checkpoints, the status and a resume's truncation write only inside the
    datasets' preallocated data: every other byte of the file (superblock, object headers,
    B-trees, heaps) is the same as when it was created, and the file never grows; so no
    moment of a run can leave its structure half-written."""
    sc = load_scenario(UNTREATED, TINY + ["run.days=1"])
    built = build(sc)
    fields = start_state(built.setup.problem, built.setup.values)
    obs, host = _observe_host(built, fields)
    path = tmp_path / "s.h5"
    created = Output.create(path, sc, built.setup, "test", 5)
    created.publish()
    created.close()
    size = os.path.getsize(path)
    regions = _raw_regions(path)
    before = _structure(path, regions)  # closed: the superblock's "open for writing" flag clear
    out = Output.open(path)
    assert read_status(out.h5) == ("running", "")
    names = list(built.setup.table.names)
    for k in range(5):
        out.snapshot(k * 360.0, host + k, names, obs)
        if k % 2 == 0:
            out.checkpoint(k * 72, host + k)
    out.set_status("failed", "x" * 5000)  # longer than the slot: cut, not grown
    out.truncate(3)
    out.set_status("complete")
    out.close()
    assert os.path.getsize(path) == size
    assert _structure(path, regions) == before
    with h5py.File(path, "r") as h5:
        assert snapshot_count(h5) == 3 and read_status(h5) == ("complete", "")
        np.testing.assert_array_equal(h5["time"][:3], [0.0, 360.0, 720.0])
        assert np.isnan(h5["time"][3:]).all()  # slots not (or no longer) written
        step, outputs, state = latest_checkpoint(h5)
        assert (step, outputs) == (288, 5) and np.array_equal(state, host + 4)
    # the blocks are reserved, not a sparse promise; the mode is a plain new file's
    assert os.stat(path).st_blocks * 512 >= size
    mask = os.umask(0o022)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask


def _limit_file_size(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, as a full disk gives ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _run(*args, limit=None, env=ENV, timeout=600):
    return subprocess.run(_tmesim(*args), capture_output=True, text=True, env=env,
                          timeout=timeout, preexec_fn=None if limit is None else
                          _limit_file_size(limit))


def _same_run(a, b):
    with h5py.File(a) as x, h5py.File(b) as y:
        assert read_status(y)[0] == "complete"
        assert snapshot_count(x) == snapshot_count(y) == x["time"].shape[0]
        np.testing.assert_array_equal(x["time"][...], y["time"][...])
        for group in ("fields", "observables"):
            for name in x[group]:
                assert np.array_equal(x[group][name][...], y[group][name][...]), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run the attacked runs must reproduce bit for bit (a second run,
    so its compile comes from the cache as the attacked runs' does; ``seconds``: how long
    that took, start-up included)."""
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    for _ in range(2):
        start = time.time()
        done = _run("run", str(UNTREATED), "-o", str(path), "-q", "--overwrite", *SETS)
        assert done.returncode == 0 and done.stderr == "", done.stderr  # -q: nothing
    _SECONDS["reference"] = time.time() - start
    return path


def test_no_room_for_the_file_is_refused_before_anything_is_written(tmp_path, reference):
    """A file-size limit below the run file's size (a full disk, portably): a clean refusal
    naming the file and the room needed, exit 2, and an existing output untouched."""
    out = tmp_path / "o.h5"
    shutil.copy(reference, out)
    before = out.read_bytes()
    done = _run("run", str(UNTREATED), "-o", str(out), "--overwrite", *SETS, limit=100_000)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "no room for the run file" in done.stderr
    assert "o.h5" in done.stderr and "MiB" in done.stderr
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.h5"]


def test_resume_needs_no_room(tmp_path, reference):
    """A run killed half-way resumes with a file-size limit equal to the file's size (its
    room was reserved at creation), and the result is the uninterrupted run's."""
    out = tmp_path / "k.h5"
    _kill_at(out, day=1.0)
    done = _run("resume", str(out), "-q", limit=os.path.getsize(out))
    assert done.returncode == 0, done.stderr
    _same_run(reference, out)


def _in_small_tmpfs(directory, size, script):
    """Run the shell ``script`` with a tmpfs of ``size`` mounted at ``directory``, in a
    private user and mount namespace (``unshare -rm``: no root needed where the kernel
    allows user namespaces); None where that is not possible here."""
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs "
                            f"{directory}"], capture_output=True)
    if probe.returncode != 0:
        return None
    return subprocess.run(["unshare", "-rm", "sh", "-c",
                           f"mount -t tmpfs -o size={size} tmpfs {directory} && {script}"],
                          capture_output=True, text=True, env=ENV, timeout=600)


def test_a_really_full_disk(tmp_path, reference):
    """On a tmpfs of the run file's size plus a little (the disk the issue's tester filled):
    a run too big for it is refused and leaves nothing; then a run killed half-way is
    copied in, the rest of the disk is filled, and the resume completes the file to the
    uninterrupted result; the sidecars it cannot write are warnings, not failures."""
    killed = tmp_path / "k.h5"
    _kill_at(killed, day=1.0)
    disk = tmp_path / "disk"
    disk.mkdir()
    size = os.path.getsize(killed) + (256 << 10)
    tm = " ".join(_quote(a) for a in _tmesim())
    big = " ".join(_quote(a) for a in SETS + ["--set", "run.output_every_days=0.125"])
    script = (f"cd {disk} && {tm} run {_quote(str(UNTREATED))} -o big.h5 -q {big}; "
              "echo big=$?; ls; "
              f"cp {killed} k.h5 && (cat /dev/zero > filler 2>/dev/null; true) && df -k . && "
              f"{tm} resume k.h5 -q; echo resume=$?; cp k.h5 {tmp_path}/out.h5")
    done = _in_small_tmpfs(disk, size, script)
    if done is None:
        pytest.skip("this machine lets no unprivileged process mount a tmpfs (`unshare -rm` "
                    "needs user namespaces), so a really full disk cannot be made here; the "
                    "full-disk cases still run with a file-size limit (test_no_room_..., "
                    "test_resume_needs_no_room)")
    out = done.stdout
    assert "big=2" in out and "big.h5" not in out.split("big=2")[1].split("Filesystem")[0]
    assert "no room for the run file" in done.stderr
    assert "resume=0" in out, done.stderr
    assert "No space left on device" in done.stderr  # the sidecars' warnings
    assert "Traceback" not in done.stderr
    _same_run(reference, tmp_path / "out.h5")


def _quote(a):
    import shlex

    return shlex.quote(a)


def _kill_at(out, day, sig=signal.SIGKILL):
    """Start a run and send ``sig`` once it reports ``day``; returns the process's return
    code and the rest of its stderr."""
    proc = subprocess.Popen(_tmesim("run", str(UNTREATED), "-o", str(out), *SETS),
                            stderr=subprocess.PIPE, text=True, env=ENV)
    start = time.time()
    for line in proc.stderr:
        if line.split()[:1] == ["day"] and float(line.split()[1]) >= day:
            break
        assert time.time() - start < 300
    proc.send_signal(sig)
    err = proc.stderr.read()
    return proc.wait(timeout=120), err


def _kill_and_resume(tmp_path, reference, moments):
    """kill -9 at each moment (seconds after the start, or into a resume), resuming each
    time; every killed file is readable with whole snapshots; the end is bit-identical."""
    out = tmp_path / "r.h5"
    started = False
    for wait in moments:
        if not started:
            proc = subprocess.Popen(_tmesim("run", str(UNTREATED), "-o", str(out), "-q",
                                            *SETS), env=ENV)
        else:
            proc = subprocess.Popen(_tmesim("resume", str(out), "-q"), env=ENV)
        time.sleep(wait)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():
            started = True
            with h5py.File(out, "r") as h5:  # a valid file: no recovery tool needed
                n = snapshot_count(h5)
                assert read_status(h5)[0] in ("running", "complete")
                assert n >= 1 and np.isfinite(h5["time"][:n]).all()
                assert latest_checkpoint(h5) is not None
                assert np.isfinite(h5["fields/tumor"][n - 1]).all()
    args = ("resume", str(out), "-q") if started else ("run", str(UNTREATED), "-o", str(out),
                                                        "-q", *SETS)
    done = _run(*args)
    assert done.returncode == 0, done.stderr
    _same_run(reference, out)


def _moments(n, seed, seconds):
    """Random kill moments over a run's life (start-up, compile, steps, writes)."""
    rng = random.Random(seed)
    return [rng.uniform(0.05, 0.95) * seconds for _ in range(n)]


def test_kill_9_at_three_random_moments_then_resume_is_bit_identical(tmp_path, reference):
    _kill_and_resume(tmp_path, reference, _moments(3, 1, _SECONDS["reference"]))


@pytest.mark.slow
def test_kill_9_at_twenty_random_moments_then_resume_is_bit_identical(tmp_path, reference):
    _kill_and_resume(tmp_path, reference, _moments(20, 2, _SECONDS["reference"]))


def _interrupt_during_compile(tmp_path, sig, name):
    """``sig`` right after the run says it is compiling, with an empty compilation cache
    (so XLA is compiling): a clean exit 128 + sig, no segfault, status "interrupted", and
    the file resumes to the uninterrupted result."""
    out = tmp_path / f"{name}.h5"
    env = dict(ENV, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "empty-cache"))
    proc = subprocess.Popen(_tmesim("run", str(UNTREATED), "-o", str(out), *SETS),
                            stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:
        if "compiling" in line:
            break
    proc.send_signal(sig)
    err = proc.stderr.read()
    code = proc.wait(timeout=120)
    assert code == 128 + sig, (code, err)
    assert "Traceback" not in err and "tmesim resume" in err
    with h5py.File(out, "r") as h5:
        status, message = read_status(h5)
        assert status == "interrupted" and signal.Signals(sig).name in message
    return out


def test_sigint_during_the_first_compile_ends_cleanly_and_resumes(tmp_path, reference):
    out = _interrupt_during_compile(tmp_path, signal.SIGINT, "int")
    done = _run("resume", str(out), "-q")
    assert done.returncode == 0, done.stderr
    _same_run(reference, out)


def test_sigterm_mid_run_marks_the_file_interrupted(tmp_path, reference):
    out = tmp_path / "term.h5"
    code, err = _kill_at(out, day=0.5, sig=signal.SIGTERM)
    assert code == 128 + signal.SIGTERM and "Traceback" not in err
    assert main(["inspect", str(out)]) == 0
    done = _run("resume", str(out), "-q")
    assert done.returncode == 0, done.stderr
    _same_run(reference, out)


def test_sigint_before_the_file_exists_writes_nothing(tmp_path):
    out = tmp_path / "early.h5"
    proc = subprocess.Popen(_tmesim("run", str(UNTREATED), "-o", str(out), *SETS),
                            stderr=subprocess.PIPE, text=True, env=ENV)
    assert proc.stderr.readline().startswith("tmesim run:")  # validated, now building
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, err
    assert "was not written" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("how", ["one CPU", "two host devices"])
def test_the_same_file_on_one_cpu_and_with_two_host_devices(tmp_path, reference, how):
    """Bit for bit the reference (run on every core, one device): pinned to one CPU with
    taskset (XLA's thread pools shrink to it), or with XLA told to make two CPU devices."""
    out = tmp_path / "d.h5"
    cmd = _tmesim("run", str(UNTREATED), "-o", str(out), "-q", *SETS)
    env = dict(ENV)
    if how == "one CPU":
        if shutil.which("taskset") is None:
            pytest.skip("`taskset` (util-linux) is not installed, so the run cannot be "
                        "pinned to one CPU; the two-device case still runs")
        cmd = ["taskset", "-c", "0", *cmd]
    else:
        env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr
    _same_run(reference, out)


@pytest.mark.slow
def test_sigint_during_compile_never_crashes_16_times(tmp_path):
    """The issue saw a segfault after SIGINT in 6 of 16 first compiles."""
    for k in range(16):
        _interrupt_during_compile(tmp_path, signal.SIGINT, f"i{k}")


def test_a_second_writer_is_refused_and_touches_nothing(tmp_path, reference):
    """``run --overwrite`` and ``resume`` on a file another process holds open for writing
    are refused before anything is truncated; the holder keeps its file."""
    live = tmp_path / "live.h5"
    shutil.copy(reference, live)
    before = live.read_bytes()
    with held_open(live):
        assert main(["run", str(UNTREATED), "-o", str(live), "--overwrite", "-q",
                     *SETS]) == 2
        assert main(["resume", str(live), "-q"]) == 2
    assert live.read_bytes() == before
    assert not (tmp_path / "live.png").exists() and not (tmp_path / "live.xdmf").exists()


def test_sidecars_of_something_else_are_never_replaced(tmp_path, reference, capsys):
    """``-o foo.h5`` with a foo.png or foo.xdmf already there: refused without --overwrite,
    and with it too unless they are tmesim's sidecars of foo.h5."""
    png, xdmf = tmp_path / "foo.png", tmp_path / "foo.xdmf"
    png.write_bytes(b"\x89PNG\r\n\x1a\nsomeone's figure")
    args = ["run", str(UNTREATED), "-o", str(tmp_path / "foo.h5"), "-q", *SETS]
    assert main(args) == 2
    assert "foo.png exists; pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 2
    assert "not the sidecar of foo.h5" in capsys.readouterr().err
    png.unlink()
    xdmf.write_text("<Xdmf/>")
    assert main(args + ["--overwrite"]) == 2
    assert xdmf.read_text() == "<Xdmf/>" and not (tmp_path / "foo.h5").exists()
    xdmf.unlink()
    # a run's own sidecars (its plot, its XDMF) are replaced with it
    shutil.copy(reference, tmp_path / "foo.h5")
    assert main(["plot", str(tmp_path / "foo.h5")]) == 0
    assert main(args + ["--overwrite"]) == 0


def test_a_foreign_hdf5_file_is_named_as_such(tmp_path, capsys):
    foreign = tmp_path / "other.h5"
    with h5py.File(foreign, "w") as h5:
        h5["x"] = np.arange(3)
    for command in ("inspect", "plot", "resume"):
        assert main([command, str(foreign)]) == 2
        err = capsys.readouterr().err
        assert "other.h5: not a tmesim run file" in err and "Traceback" not in err, err
    (tmp_path / "text.h5").write_text("not hdf5")
    assert main(["resume", str(tmp_path / "text.h5")]) == 2
    assert "not an HDF5 file" in capsys.readouterr().err


def test_readers_of_a_live_file_see_only_complete_snapshots(tmp_path, reference, capsys):
    """``inspect`` and ``plot`` of a file whose run is still writing (the run's file copied
    mid-write: a snapshot's data written, its count not yet) read the complete ones."""
    live = tmp_path / "live.h5"
    shutil.copy(reference, live)
    with h5py.File(live, "r+") as h5:  # snapshot 5 half-written: data there, not counted
        h5["snapshots"][0] = 5
        h5["time"][5:] = np.nan
        h5["fields/tumor"][5] = np.nan
    assert main(["inspect", str(live)]) == 0
    assert "5 snapshots, day 0 to 1" in capsys.readouterr().out
    assert main(["plot", str(live), "-o", str(tmp_path / "p.png")]) == 0
    assert main(["plot", str(live), "-o", str(tmp_path / "p.png"), "--days", "2"]) == 2
    assert "outside the snapshots stored, day 0 to 1" in capsys.readouterr().err


def test_command_line_as_people_use_it(tmp_path, reference, capsys):
    """A "compiling" line before the first step, `inspect` and `plot` of the file while the
    run writes it, a summary plot from the fields stored, `inspect | head` not an error
    (-q: the reference fixture; the ETA: the next test)."""
    out = tmp_path / "o.h5"
    proc = subprocess.Popen(_tmesim("run", str(UNTREATED), "-o", str(out), *SETS, "--set",
                                    'run.fields=["oxygen"]'),
                            stderr=subprocess.PIPE, text=True, env=ENV)
    reads = 0
    while proc.poll() is None:  # every read while the run writes succeeds
        if out.exists():
            assert main(["inspect", str(out)]) == 0
            assert main(["plot", str(out), "-o", str(tmp_path / "g.png"), "--fields",
                         "oxygen"]) == 0, capsys.readouterr().err
            reads += 1
    lines = proc.stderr.read().splitlines()
    assert proc.wait() == 0 and reads >= 1, lines
    assert "compiling" in lines[1] and lines[2].split()[:2] == ["day", "0.25"], lines
    assert (tmp_path / "o.png").exists()
    piped = subprocess.run(" ".join(_quote(a) for a in _tmesim("inspect", str(reference)))
                           + " | head -1", shell=True, capture_output=True, text=True)
    assert piped.stdout.startswith(str(reference)) and piped.stderr == ""


def test_the_eta_leaves_the_compile_out():
    """10 of 100 steps done in 50 s, 40 of them compiling: 90 s left, not 450 s."""
    stream = io.StringIO()
    show = Progress(100, 0, stream, every=0.0)
    show.start -= 50.0
    _COMPILE_SECONDS[0] += 40.0
    show(10, 144.0)
    assert "(compiling 0:00:40)  ETA 0:01:30" in stream.getvalue()


@pytest.mark.parametrize("name", ["run.h5", "résultat.h5", "实验.h5", "a--b.h5"])
def test_sidecars_are_recognised_whatever_the_name(tmp_path, name):
    """PNG text is Latin-1 (tEXt) or UTF-8 (iTXt) by the name's letters; an XML comment
    may not hold "--": tmesim's own sidecars are recognised for any run file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tmesim._output import sidecar_of, sidecar_tag

    h5 = tmp_path / name
    fig = plt.figure(figsize=(1, 1))
    fig.savefig(tmp_path / "p.png", metadata={"Source": sidecar_tag(h5)})
    plt.close(fig)
    assert sidecar_of(tmp_path / "p.png", h5)
    assert not sidecar_of(tmp_path / "p.png", tmp_path / "other.h5")
    xdmf = tmp_path / "p.xdmf"
    xdmf.write_text(f"<?xml version='1.0' ?>\n<!-- {sidecar_tag(h5)} -->\n<Xdmf/>",
                    encoding="utf-8")
    assert sidecar_of(xdmf, h5) and not sidecar_of(xdmf, tmp_path / "other.h5")
