"""The ``tmesim`` command."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings

from ._inspect import DEFAULT_PLOT_FIELDS, DEFAULT_PLOT_OBSERVABLES


def _job(args) -> bool:
    """Join the job of several processes if asked (``--distributed``); whether this process
    speaks for the job (process 0, or the one process)."""
    from ._devices import first_process, join_job

    if args.distributed:
        join_job()
    return first_process()


def _run(args) -> int:
    from ._run import agreed, run_scenario, stop_on_signals
    from ._scenario import load_scenario

    speaks = _job(args)  # before our handlers: jax.distributed installs its own for SIGTERM
    with stop_on_signals():
        sets = list(args.set or ()) + ([] if args.devices is None
                                       else [f"run.devices={args.devices}"])
        scenario = agreed(load_scenario, args.scenario, sets)  # on every process of a job
        output = args.output or os.path.splitext(os.path.basename(args.scenario))[0] + ".h5"
        if speaks and not args.quiet:
            print(f"tmesim run: {scenario.name}: {scenario.data['run']['days']:g} days, "
                  f"{scenario.total_steps} steps of {scenario.dt:g} min -> {output}",
                  file=sys.stderr)
        run_scenario(scenario, output, shlex.join(sys.argv), _progress(args), args.overwrite)
        return _finish(output, args.quiet) if speaks else _stopped()


def _resume(args) -> int:
    from ._run import resume, stop_on_signals

    speaks = _job(args)  # before our handlers, as for run
    with stop_on_signals():
        resume(args.file, _progress(args), args.devices)
        return _finish(args.file, args.quiet) if speaks else _stopped()


def _progress(args):
    return None if args.quiet else sys.stderr


def _stopped() -> int:
    """The exit code of a run that completed: 128 + a signal received after its last step."""
    from ._run import _STOP

    return 128 + _STOP[0] if _STOP else 0


def _finish(path, quiet: bool) -> int:
    """After a run: the summary (unless quiet), the summary plot of the fields that were stored."""
    from ._inspect import inspect_text, plot_file
    from ._output import png_path, xdmf_path

    code = _stopped()
    if code:  # a signal after the last step: the run is complete, skip the plot
        return code
    if not quiet:
        print(inspect_text(path))
    written = [path, xdmf_path(path)]
    try:
        written.append(plot_file(path, png_path(path)))
    except OSError as err:  # a full disk: the run file is complete, the picture can wait
        print(f"tmesim: warning: cannot write {png_path(path)} ({err}); the run file is "
              f"complete: draw it later with tmesim plot {path}", file=sys.stderr)
    print("wrote " + ", ".join(written))
    return 0


def _fit(args) -> int:
    from ._fit import fit, parameter_file_path
    from ._fitplot import fit_text, plot_fit
    from ._run import stop_on_signals

    settings = {k: v for k, v in (("starts", args.starts), ("iterations", args.iterations),
                                  ("batch", args.batch), ("workers", args.workers),
                                  ("devices", args.devices),
                                  ("seed", args.seed)) if v is not None}
    if args.no_profiles:
        settings["profiles"] = []
    output = args.output or os.path.splitext(os.path.basename(args.problem))[0] + "_fit.h5"
    speaks = _job(args)  # before our handlers, as for run
    with stop_on_signals():
        fit(args.problem, output, overwrite=args.overwrite, progress=_progress(args),
            settings=settings, summarise=args.summarise)
    if not speaks:  # process 0 of the job prints and draws
        return 0
    if not args.quiet:
        print(fit_text(output))
    written = [output, parameter_file_path(output)] + plot_fit(output)
    print("wrote " + ", ".join(written))
    return 0


def _inspect(args) -> int:
    from ._inspect import inspect_text

    print(inspect_text(args.file))
    return 0


def _plot(args) -> int:
    from ._fitplot import is_fit_result, plot_fit
    from ._inspect import plot_file

    if is_fit_result(args.file):
        prefix = os.path.splitext(args.output)[0] if args.output else None
        print("wrote " + ", ".join(plot_fit(args.file, prefix)))
        return 0

    def names(text, default):
        return tuple(x for x in text.split(",") if x) if text else default

    from ._output import png_path

    try:
        days = [float(d) for d in args.days.split(",")] if args.days else None
    except ValueError:
        raise ValueError(f"--days {args.days}: expected comma-separated numbers of days, "
                         "e.g. 0,5,10") from None
    png = plot_file(args.file, args.output or png_path(args.file),
                    names(args.fields, None), days,
                    names(args.observables, DEFAULT_PLOT_OBSERVABLES))
    print(f"wrote {png}")
    return 0


def _model(args) -> int:
    from ._describe import describe_model

    print(describe_model(args.geometry, args.markdown))
    return 0


def main(argv=None) -> int:
    from . import __version__

    # warnings as one line each, as the command's other messages
    warnings.formatwarning = lambda message, *_, **__: f"tmesim: warning: {message}\n"
    parser = argparse.ArgumentParser(prog="tmesim", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tmesim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    mp = sub.add_parser("model", help="print every field and process of the niche model, "
                        "with parameter values, units and sources")
    mp.add_argument("--geometry", choices=("organoid", "tissue"), default="organoid",
                    help="which boundary conditions to show")
    mp.add_argument("--markdown", action="store_true", help="print Markdown (docs/model.md)")
    mp.set_defaults(run=_model)

    rp = sub.add_parser("run",
                        help="run a scenario file (TOML); writes HDF5, XDMF and a PNG summary")
    rp.add_argument("scenario", help="scenario file, e.g. scenarios/untreated_niche.toml")
    rp.add_argument("-o", "--output",
                    help="HDF5 file to write (default: the scenario's name + .h5)")
    rp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a scenario value, e.g. --set run.days=3 --set grid.n=16 "
                         "--set parameters.o2_uptake=800 --set dose.0.level_nM=500 (repeatable)")
    rp.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    rp.add_argument("--devices", type=int, help="split the grid along x over N devices, one "
                    "slab each (0: all; sets run.devices; default 1)")
    rp.add_argument("--distributed", action="store_true", help="one process of a job over "
                    "several hosts (jax.distributed; see docs/devices.md): process 0 writes "
                    "the file; use with --devices 0")
    rp.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    rp.set_defaults(run=_run)
    sp = sub.add_parser("resume",
                        help="continue a run (killed or finished) from its last checkpoint")
    sp.add_argument("file", help="HDF5 run file")
    sp.add_argument("--devices", type=int, help="split the grid over N devices (0: all), "
                    "whatever the run used (default: the run's run.devices)")
    sp.add_argument("--distributed", action="store_true", help="one process of a job over "
                    "several hosts, as for run")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    sp.set_defaults(run=_resume)
    fp = sub.add_parser("fit", help="fit a calibration problem (PEtab-style tables); writes "
                        "an HDF5 result, the fitted parameters as TOML and PNGs")
    fp.add_argument("problem", help="problem file (TOML naming a scenario and four tables)")
    fp.add_argument("-o", "--output", help="HDF5 result (default: the problem's name + _fit.h5); "
                    "an existing one from the same files is resumed")
    fp.add_argument("--starts", type=int, help="number of starts (overrides [fit] starts)")
    fp.add_argument("--iterations", type=int, help="iterations per start at most")
    fp.add_argument("--batch", type=int, help="starts (profile points) per compiled call, "
                    "under vmap")
    fp.add_argument("--workers", type=int, help="compiled calls at once, each on its own "
                    "thread (default: one per CPU core on a CPU)")
    fp.add_argument("--devices", type=int, help="devices each compiled call's batch is "
                    "split over (default 1; 0: every device)")
    fp.add_argument("--distributed", action="store_true", help="one process of a job over "
                    "several hosts, as for run: process 0 writes the result; use with "
                    "--devices 0")
    fp.add_argument("--seed", type=int, help="seed of the starting points")
    fp.add_argument("--no-profiles", action="store_true", help="skip the profile likelihoods")
    fp.add_argument("--overwrite", action="store_true", help="start afresh, replacing the result")
    fp.add_argument("--summarise", action="store_true",
                    help="make a finished result's summary, simulated observables and "
                         "parameter file again with this version (after an upgrade); "
                         "nothing is fitted again")
    fp.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    fp.set_defaults(run=_fit)
    ip = sub.add_parser("inspect", help="what is in a run file or a fit result")
    ip.add_argument("file", help="HDF5 run file or fit result")
    ip.set_defaults(run=_inspect)
    pp = sub.add_parser("plot", help="PNG of mid-plane slices and observable time courses; "
                        "for a fit result: fit against data, waterfall, profiles")
    pp.add_argument("file", help="HDF5 run file or fit result")
    pp.add_argument("-o", "--output", help="PNG file (default: next to the HDF5 file)")
    pp.add_argument("--fields",
                    help=f"comma-separated fields (default {','.join(DEFAULT_PLOT_FIELDS)})")
    pp.add_argument("--days", help="comma-separated days to show (default: start, middle, end)")
    pp.add_argument("--observables", help="comma-separated observables for the time courses "
                    f"(default {','.join(DEFAULT_PLOT_OBSERVABLES)})")
    pp.set_defaults(run=_plot)
    args = parser.parse_args(argv)
    try:
        from ._run import Interrupted, RunError  # imports JAX: seconds
    except KeyboardInterrupt:
        print(f"tmesim {args.command}: interrupted", file=sys.stderr)
        return 130
    try:
        code = args.run(args)
        sys.stdout.flush()  # here, so a reader that left early is caught below
        return code
    except BrokenPipeError:  # `tmesim inspect FILE | head`: the reader has what it wanted
        _quiet_stdout()
        return 0
    except Interrupted as err:
        # leave at once: a compile may still run on the worker thread, and tearing
        # the interpreter down around it can crash; the run file is already closed
        print(f"tmesim {args.command}: {err}", file=sys.stderr)
        _quiet_stdout()
        sys.stderr.flush()
        from ._devices import leave_job

        try:
            leave_job()
        finally:  # a partner that never came: JAX gives up after its timeout
            os._exit(128 + err.signum)
    except (ValueError, OSError, RunError) as err:
        print(f"tmesim {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tmesim {args.command}: interrupted", file=sys.stderr)
        return 130


def _quiet_stdout() -> None:
    """Flush stdout, or point it at /dev/null when its reader is gone (no error at exit)."""
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
