"""The ``tmesim`` command."""

from __future__ import annotations

import argparse
import shlex
import sys


def _spheroid(args) -> int:
    import jax.numpy as jnp

    from ._spheroid import HYPOXIC, NECROTIC, run_oxygen_spheroid, write_hdf5

    if args.float64:
        import jax

        jax.config.update("jax_enable_x64", True)
    result = run_oxygen_spheroid(
        radius=args.radius, n=args.grid, spacing=args.spacing, t_end=args.t_end, dt=args.dt,
        dtype=jnp.float64 if args.float64 else jnp.float32,
    )
    write_hdf5(args.output, result, shlex.join(sys.argv))
    print(f"centre oxygen {result['centre_oxygen']:.2f} mmHg "
          f"(infinite medium, no decay: {result['infinite_medium_centre_oxygen']:.2f} mmHg); "
          f"O2 < {HYPOXIC:g} mmHg within r = {result['hypoxic_radius']:.0f} um, "
          f"< {NECROTIC:g} mmHg within r = {result['necrotic_threshold_radius']:.0f} um "
          f"of a {result['radius']:.0f} um spheroid; {result['wall_s']:.1f} s")
    print(f"wrote {args.output}")
    return 0


def _model(args) -> int:
    from ._model import describe_model

    print(describe_model(args.geometry, args.markdown))
    return 0


def main(argv=None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(prog="tmesim", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tmesim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("spheroid-oxygen",
                        help="oxygen diffusion and uptake in a tumour spheroid (PhysiCell values)")
    sp.add_argument("-o", "--output", default="spheroid_oxygen.h5", help="HDF5 file to write")
    sp.add_argument("--radius", type=float, default=250.0, help="spheroid radius, um")
    sp.add_argument("--grid", type=int, default=96, help="voxels per axis")
    sp.add_argument("--spacing", type=float, default=10.0, help="voxel size, um")
    sp.add_argument("--t-end", type=float, default=5.0, help="simulated time, min")
    sp.add_argument("--dt", type=float, default=0.01, help="time step, min")
    sp.add_argument("--float64", action="store_true", help="double precision")
    sp.set_defaults(run=_spheroid)
    mp = sub.add_parser("model", help="print every field and process of the niche model, "
                        "with parameter values, units and sources")
    mp.add_argument("--geometry", choices=("organoid", "tissue"), default="organoid",
                    help="which boundary conditions to show")
    mp.add_argument("--markdown", action="store_true", help="print Markdown (docs/model.md)")
    mp.set_defaults(run=_model)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as err:
        print(f"tmesim {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
