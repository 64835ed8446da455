"""The ``sphc`` command line: compile, check, explain. Argument handling only, no compiler logic.

Exit codes: 0 ok; 1 a user mistake (a located diagnostic on stderr, no traceback); 2 usage
(argparse); 3 an internal error, printed as a bug with the ``SPHC_DEBUG=1`` hint.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from . import __version__, config
from .analysis import explain_table
from .errors import SphcError
from .pipeline import STAGES, check_source, compile_source

_EXAMPLES = {
    "compile": 'sphc compile examples/efficient.sph -o model.py\n  python -c "import model"',
    "check": "sphc check examples/mnist.sph",
    "explain": "sphc explain examples/mnist.sph",
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
        s = sub.add_parser(
            name,
            help=help_,
            description=f"{help_}. Example:\n  {_EXAMPLES[name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        s.add_argument("model", type=Path, help="the .sph file")
        if name == "compile":
            s.add_argument(
                "-o", "--output", help="output file (default: MODEL.py next to the input; - for stdout)"
            )
            s.add_argument(
                "--emit", choices=STAGES, default="python", help="stop after this stage and print it"
            )
    return p


def _run(args: argparse.Namespace) -> int:
    try:
        text = args.model.read_text(encoding="utf-8")
    except OSError as e:
        raise SphcError(f"cannot read {args.model}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise SphcError(
            f"cannot read {args.model}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})",
            hint="save the model as UTF-8",
        ) from None
    file = str(args.model)
    if args.command == "check":
        a = check_source(text, file)
        print(f"{file}: ok ({len(a.layers)} layers, {a.params:,} parameters)")
    elif args.command == "explain":
        print(explain_table(check_source(text, file)))
    else:
        out = compile_source(text, file, emit=args.emit)
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
        return _run(args)
    except SphcError as e:
        print(e.render(), file=sys.stderr)
        return 1
    except Exception:  # a bug in sphc, not the user's fault
        if config.debug():
            traceback.print_exc()
        else:
            print(
                "internal error: this is a bug in sphc; rerun with SPHC_DEBUG=1 for the traceback",
                file=sys.stderr,
            )
        return 3
