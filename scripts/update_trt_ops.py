#!/usr/bin/env python
"""Regenerate vr/export/data/onnx_tensorrt_operators.json from a copy of onnx-tensorrt's docs/operators.md.

    python scripts/update_trt_ops.py operators.md --branch main --commit <sha> [--retrieved 2026-12-01]

The operator support matrix of the TensorRT ONNX parser lives in
https://github.com/onnx/onnx-tensorrt/blob/<branch>/docs/operators.md. vr's TensorRT compatibility
check (vr/export/trt_compat.py) reads the JSON this script writes; the JSON is never edited by hand.
Name the branch and commit the copy came from (``--commit unknown`` when that is not known), so the
data says what it describes.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import re
import sys
from pathlib import Path

REPO = "onnx/onnx-tensorrt"
DOC_PATH = "docs/operators.md"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "vr" / "export" / "data" / "onnx_tensorrt_operators.json"
HEADER = re.compile(r"TensorRT\s+([0-9.]+)\s+supports operators in the inclusive range of "
                    r"opset\s+(\d+)\s+to opset\s+(\d+)", re.IGNORECASE)
# The type names the matrix's "Supported Types" column uses.
TYPE_TOKENS = {"FP32", "FP16", "BF16", "FP8", "FP4", "INT4", "INT8", "INT32", "INT64", "UINT8", "BOOL"}
DATA_TYPES = re.compile(r"TensorRT supports the following ONNX data types:\s*(.+)")


def parse_operators_md(text: str) -> dict:
    """The matrix as data: version, opset range, data types, notes, and op -> {supported, types, restrictions}."""
    header = HEADER.search(text)
    if header is None:
        raise SystemExit("not onnx-tensorrt's operators.md: no 'TensorRT X supports operators in the inclusive "
                         "range of opset A to opset B' line")
    types_line = DATA_TYPES.search(text)
    data_types = [t.strip() for t in re.split(r",|\band\b", types_line.group(1)) if t.strip()] if types_line else []
    notes = [line.lstrip("> ").removeprefix("Note:").strip() for line in text.splitlines()
             if line.startswith("> Note:")]
    operators: dict[str, dict] = {}
    for line in text.splitlines():
        row = _table_row(line)
        if row is not None:
            name, entry = row
            if name in operators:
                raise SystemExit(f"operator {name} appears twice in the matrix")
            operators[name] = entry
    if not operators:
        raise SystemExit("no operator rows found in the support matrix")
    return {"tensorrt_version": header.group(1), "opset_min": int(header.group(2)),
            "opset_max": int(header.group(3)), "data_types": data_types, "notes": notes,
            "operators": dict(sorted(operators.items()))}


def _table_row(line: str) -> tuple[str, dict] | None:
    """One matrix row (``| Op | Y | FP32, FP16 | restriction``, trailing pipe optional), or None."""
    if not line.startswith("|"):
        return None
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) < 2 or cells[0] in ("Operator", "") or set(cells[0]) <= set("-: "):
        return None
    supported = cells[1].upper().startswith("Y")
    if not supported:  # an "N" row may carry its explanation in the types column
        types, rest = [], cells[2:]
    else:
        types, rest = [t.strip() for t in cells[2].split(",") if t.strip()] if len(cells) > 2 else [], cells[3:]
        unknown = [t for t in types if t not in TYPE_TOKENS]
        if unknown:
            raise SystemExit(f"operator {cells[0]}: unknown type(s) {unknown} in the matrix: the format changed, "
                             f"update TYPE_TOKENS here and the mapping in vr/export/trt_compat.py")
    restrictions = re.sub(r"<br\s*/?>", " ", " ".join(c for c in rest if c)).strip()
    return cells[0], {"supported": supported, "types": types, "restrictions": restrictions}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("operators_md", type=Path, help="a copy of onnx-tensorrt's docs/operators.md")
    p.add_argument("--branch", required=True, help="branch the copy came from (e.g. main, release/10.15)")
    p.add_argument("--commit", required=True, help="commit the copy came from ('unknown' if not known)")
    p.add_argument("--commit-note", default="", help="why the commit is unknown, or anything else about the copy")
    p.add_argument("--retrieved", default=datetime.date.today().isoformat(), help="date the copy was taken")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)

    raw = args.operators_md.read_bytes()
    matrix = parse_operators_md(raw.decode("utf-8"))
    data = {
        "source": {
            "repository": REPO,
            "path": DOC_PATH,
            "url": f"https://github.com/{REPO}/blob/{args.branch}/{DOC_PATH}",
            "branch": args.branch,
            "commit": None if args.commit == "unknown" else args.commit,
            "commit_note": args.commit_note,
            "sha256": hashlib.sha256(raw).hexdigest(),
            "retrieved": args.retrieved,
            "tensorrt_version": matrix["tensorrt_version"],
            "generated_by": "scripts/update_trt_ops.py (do not edit by hand)",
        },
        **matrix,
    }
    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from vr.util.io import atomic_write_text

    atomic_write_text(args.out, text)
    print(f"{args.out}: {len(matrix['operators'])} operators, TensorRT {matrix['tensorrt_version']}, "
          f"opset {matrix['opset_min']}-{matrix['opset_max']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
