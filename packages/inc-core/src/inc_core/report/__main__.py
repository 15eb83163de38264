"""``python -m inc_core.report DIR``: a saved model's report (the tables of its report.html).

Reads DIR/inc.json only: no framework is imported and the model is not loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .facts import from_manifest, model_sizes
from .tables import all_tables


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inc_core.report",
        description="Print the report of a model saved by inc (QuantizedModel.save): fp32 vs "
        "int8, how it was made, the tuning trials and the per-op plan with each op's SQNR.",
    )
    parser.add_argument("directory", type=Path, help="a folder written by q.save(...)")
    args = parser.parse_args(argv)
    manifest_path = args.directory / "inc.json"
    if not manifest_path.is_file():
        parser.error(f"{args.directory} is not a saved inc model: {manifest_path} is missing")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        parser.error(f"{manifest_path} is not valid JSON: {exc}")
    if not isinstance(manifest, dict):
        parser.error(f"{manifest_path} is not an inc manifest (a JSON object)")
    if not isinstance(manifest.get("sizes"), dict):  # saved before inc.json had sizes
        files = manifest.get("files")
        manifest["sizes"] = model_sizes(args.directory, files if isinstance(files, dict) else {})
    print("\n\n".join(table.text() for table in all_tables(from_manifest(manifest))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
