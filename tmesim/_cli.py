"""The ``tmesim`` command."""

from __future__ import annotations

import argparse
import shlex
import sys

from ._inspect import DEFAULT_PLOT_FIELDS, DEFAULT_PLOT_OBSERVABLES


def _png_path(h5_path: str) -> str:
    import os

    return os.path.splitext(h5_path)[0] + ".png"


def _run(args) -> int:
    import os

    from ._inspect import plot_file
    from ._output import xdmf_path
    from ._run import run_scenario
    from ._scenario import load_scenario

    scenario = load_scenario(args.scenario, args.set or ())
    output = args.output or os.path.splitext(os.path.basename(args.scenario))[0] + ".h5"
    if os.path.exists(output) and not args.overwrite:
        raise ValueError(f"{output} exists; pass --overwrite to replace it, or "
                         f"'tmesim resume {output}' to continue it")
    print(f"tmesim run: {scenario.name}: {scenario.data['run']['days']:g} days, "
          f"{scenario.total_steps} steps of {scenario.dt:g} min -> {output}", file=sys.stderr)
    run_scenario(scenario, output, shlex.join(sys.argv), _progress(args))
    _finish(output, xdmf_path(output), plot_file(output, _png_path(output)))
    return 0


def _resume(args) -> int:
    from ._inspect import plot_file
    from ._output import xdmf_path
    from ._run import resume

    resume(args.file, _progress(args))
    _finish(args.file, xdmf_path(args.file), plot_file(args.file, _png_path(args.file)))
    return 0


def _progress(args):
    return None if args.quiet else sys.stderr


def _finish(*paths) -> None:
    from ._inspect import inspect_text

    print(inspect_text(paths[0]))
    print("wrote " + ", ".join(paths))


def _inspect(args) -> int:
    from ._inspect import inspect_text

    print(inspect_text(args.file))
    return 0


def _plot(args) -> int:
    from ._inspect import plot_file

    def names(text, default):
        return tuple(x for x in text.split(",") if x) if text else default

    days = [float(d) for d in args.days.split(",")] if args.days else None
    png = plot_file(args.file, args.output or _png_path(args.file),
                    names(args.fields, DEFAULT_PLOT_FIELDS), days,
                    names(args.observables, DEFAULT_PLOT_OBSERVABLES))
    print(f"wrote {png}")
    return 0


def _model(args) -> int:
    from ._describe import describe_model

    print(describe_model(args.geometry, args.markdown))
    return 0


def main(argv=None) -> int:
    from . import __version__

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
    rp.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    rp.set_defaults(run=_run)
    sp = sub.add_parser("resume",
                        help="continue a run (killed or finished) from its last checkpoint")
    sp.add_argument("file", help="HDF5 run file")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    sp.set_defaults(run=_resume)
    ip = sub.add_parser("inspect", help="what is in a run file")
    ip.add_argument("file", help="HDF5 run file")
    ip.set_defaults(run=_inspect)
    pp = sub.add_parser("plot", help="PNG of mid-plane slices and observable time courses")
    pp.add_argument("file", help="HDF5 run file")
    pp.add_argument("-o", "--output", help="PNG file (default: next to the HDF5 file)")
    pp.add_argument("--fields",
                    help=f"comma-separated fields (default {','.join(DEFAULT_PLOT_FIELDS)})")
    pp.add_argument("--days", help="comma-separated days to show (default: start, middle, end)")
    pp.add_argument("--observables", help="comma-separated observables for the time courses "
                    f"(default {','.join(DEFAULT_PLOT_OBSERVABLES)})")
    pp.set_defaults(run=_plot)
    args = parser.parse_args(argv)
    from ._run import RunError

    try:
        return args.run(args)
    except (ValueError, OSError, RunError) as err:
        print(f"tmesim {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tmesim {args.command}: interrupted; the output keeps every snapshot so far "
              "(continue with tmesim resume FILE)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
