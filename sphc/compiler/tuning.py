"""Tuning files: the kernel config spaces of a plan, reading and validating a file, baking it into a plan.

``sphc tune`` (``sphc/apps/tune.py``) writes tuning files on a GPU; ``sphc compile --tuning`` reads
one here and bakes each kernel's winner into the plan as a ``rt.Config(...)`` literal made only of
that kernel's own config-space entries (integers and meta names the template defines), plus
``TUNED_FOR``. Only ``device``, ``dtype``, ``batch`` and each kernel's ``best`` are used.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from sphc import kernel_spaces as spaces
from sphc.errors import SphcError

DTYPES = ("float32", "float64")
#: GPU names as ``torch.cuda.get_device_name`` spells them ("NVIDIA H100 80GB HBM3", "Tesla V100-SXM2-16GB").
_DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._()+/-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Bound on the integers a tuning file may carry outside the config spaces (batch, key values).
_MAX_INT = 1 << 40


def kernel_spaces(module_plan) -> dict[str, tuple]:
    """Kernel name → config space, for every kernel the plan generates (read off its kernel plans)."""
    return {s.name: getattr(spaces, s.space) for k in module_plan.kernels for s in k.specs}


@dataclass(frozen=True)
class Tuning:
    """A validated tuning file."""

    file: str
    data: dict


def _int(v: object, lo: int = 0, hi: int = _MAX_INT) -> bool:
    return type(v) is int and lo <= v <= hi


def _short(v: object) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def read_tuning(path: Path | str) -> Tuning:
    """Read and check the schema of a tuning file (``SphcError`` naming the file otherwise)."""
    file = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise SphcError(f"cannot read tuning file {file}: {e.strerror}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise SphcError(
            f"tuning file {file} is not valid JSON: {e}", hint="write it with `sphc tune`"
        ) from None
    check_tuning(data, file)
    return Tuning(file, data)


def check_tuning(data: object, file: str) -> None:
    def bad(where: str, what: str) -> SphcError:
        return SphcError(f"tuning file {file}: {where}: {what}", hint="write it with `sphc tune`")

    if not isinstance(data, dict):
        raise bad("top level", "expected a JSON object")
    for key in ("sphc_version", "source_sha256", "device", "dtype", "batch", "kernels"):
        if key not in data:
            raise bad("top level", f"missing {key!r}")
    if not isinstance(data["sphc_version"], str) or len(data["sphc_version"]) > 64:
        raise bad("sphc_version", "expected a version string")
    if not isinstance(data["source_sha256"], str) or not _SHA256.fullmatch(data["source_sha256"]):
        raise bad("source_sha256", "expected 64 lowercase hex digits")
    dev = data["device"]
    if not isinstance(dev, dict) or not isinstance(dev.get("name"), str):
        raise bad("device", 'expected {"name": ..., "capability": [major, minor]}')
    if not _DEVICE_NAME.fullmatch(dev["name"]):
        raise bad("device.name", f"{_short(dev['name'])} is not a GPU name (letters, digits, ' ._()+/-')")
    cap = dev.get("capability")
    if not isinstance(cap, list) or len(cap) != 2 or not all(_int(c, 0, 99) for c in cap):
        raise bad("device.capability", f"expected [major, minor], got {_short(cap)}")
    if data["dtype"] not in DTYPES:
        raise bad("dtype", f"expected one of {', '.join(DTYPES)}, got {_short(data['dtype'])}")
    if not _int(data["batch"], 1):
        raise bad("batch", f"expected a positive integer, got {_short(data['batch'])}")
    kernels = data["kernels"]
    if not isinstance(kernels, dict):
        raise bad("kernels", "expected an object mapping kernel names to results")
    for name, k in kernels.items():
        where = f"kernels[{_short(name)}]"
        if not isinstance(k, dict) or not isinstance(k.get("best"), dict):
            raise bad(where, 'expected an object with "best"')
        best = k["best"]
        if set(best) != {"meta", "num_warps", "num_stages"} or not isinstance(best["meta"], dict):
            raise bad(f"{where}.best", 'expected {"meta": {...}, "num_warps": n, "num_stages": n}')
        for m, v in (
            *best["meta"].items(),
            ("num_warps", best["num_warps"]),
            ("num_stages", best["num_stages"]),
        ):
            if not _int(v, 1):
                raise bad(f"{where}.best", f"{_short(m)} must be a positive integer, got {_short(v)}")
        key = k.get("key", {})
        if not isinstance(key, dict) or not all(_int(v) for v in key.values()):
            raise bad(f"{where}.key", "expected an object of integers")
        times = k.get("times_ms", {})
        if not isinstance(times, dict) or not all(type(t) in (int, float) for t in times.values()):
            raise bad(f"{where}.times_ms", "expected an object of numbers")


def source_mismatch(tuning: Tuning, text: str) -> str | None:
    """A warning when the tuning file was made for other ``.sph`` text (configs may still fit)."""
    sha = hashlib.sha256(text.encode()).hexdigest()
    if tuning.data["source_sha256"] == sha:
        return None
    return (
        f"tuning file {tuning.file} was made for other model text (source_sha256 "
        f"{tuning.data['source_sha256'][:12]}..., this model {sha[:12]}...); its configs are used where they fit"
    )


def _config_literal(c) -> str:
    meta = "(" + "".join(f"({k!r}, {int(v)}), " for k, v in c.meta).rstrip(" ") + ")"
    return f"rt.Config(meta={meta}, num_warps={int(c.num_warps)}, num_stages={int(c.num_stages)})"


def baked_configs(module_plan, tuning: Tuning) -> dict[str, object]:
    """Kernel name → the config of its space the tuning file names (``SphcError`` for anything else)."""
    spaces = kernel_spaces(module_plan)
    out = {}
    for name, k in tuning.data["kernels"].items():
        if name not in spaces:
            raise SphcError(
                f"tuning file {tuning.file}: {_short(name)} is not a kernel of this model",
                hint=f"its kernels: {', '.join(spaces) or 'none'}; was the file tuned for another model?",
            )
        space = spaces[name]
        best = k["best"]
        names = {m for c in space for m, _ in c.meta}
        unknown = sorted(set(best["meta"]) - names, key=str)
        if unknown or set(best["meta"]) != names:
            raise SphcError(
                f"tuning file {tuning.file}: kernel {name}: meta-parameters {_short(sorted(best['meta']))}, "
                f"expected {sorted(names)}"
            )
        want = (best["meta"], best["num_warps"], best["num_stages"])
        match = next((c for c in space if (c.kwargs, c.num_warps, c.num_stages) == want), None)
        if match is None:
            raise SphcError(
                f"tuning file {tuning.file}: kernel {name}: {_short(best)} is not a config of its space",
                hint="re-run `sphc tune` for this model and this version of sphc",
            )
        out[name] = match
    return out


def bake(module_plan, tuning: Tuning):
    """The plan with the tuning file's winners as ``rt.Config`` literals and ``TUNED_FOR`` set."""
    baked = {name: _config_literal(c) for name, c in baked_configs(module_plan, tuning).items()}
    d = tuning.data
    tuned_for = {
        "device": d["device"]["name"],
        "capability": tuple(int(c) for c in d["device"]["capability"]),
        "dtype": d["dtype"],
        "batch": int(d["batch"]),
    }
    kernels = tuple(
        replace(k, specs=tuple(replace(s, baked=baked.get(s.name)) for s in k.specs))
        for k in module_plan.kernels
    )
    return replace(module_plan, kernels=kernels, tuned_for=repr(tuned_for))
