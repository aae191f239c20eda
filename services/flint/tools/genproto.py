"""Generate the Python stubs of protos/ into services/flint/.

    python -m flint.tools.genproto          # regenerate in place
    python -m flint.tools.genproto --check  # exit 1 if the committed stubs are stale

The stubs are committed so that an install needs no code generator; the
test suite runs --check so a .proto change without regeneration fails CI.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PROTO_ROOT = REPO / "protos"
OUT_ROOT = REPO / "services"
PROTOS = ("flint/v1/flint.proto", "flint/internal/v1/engine.proto")


def generated_names(proto: str) -> list[str]:
    stem = proto.removesuffix(".proto")
    return [f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"]


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # build-time tool, imported only here

    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    for proto in PROTOS:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(PROTO_ROOT / proto),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")


def stale_files() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = []
        for proto in PROTOS:
            for name in generated_names(proto):
                fresh, committed = Path(tmp) / name, OUT_ROOT / name
                if not committed.exists() or not filecmp.cmp(fresh, committed, shallow=False):
                    stale.append(name)
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the committed stubs are fresh")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated stubs (run `python -m flint.tools.genproto`):", *stale, sep="\n  ")
            return 1
        print("generated stubs are up to date")
        return 0
    generate(OUT_ROOT)
    for proto in PROTOS:
        print("generated", *generated_names(proto))
    return 0


if __name__ == "__main__":
    sys.exit(main())
