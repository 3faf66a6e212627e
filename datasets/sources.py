"""The raw dataset a params key names is where it says, in its official layout (DVC stage source@<name>).

DVC hashes a stage's dependencies before it runs the stage's command, so prepare@<name> on a missing root fails
with DVC's bare "No such file or directory". This check does not depend on the root: it runs before prepare@<name>
and says which key to fix, what belongs there and how to fix it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from datasets import duke, mars
from datasets.errors import DatasetError, command_parser, run_cli

# Per layout: its name, what its root holds, and where that comes from (the official archives; nothing is downloaded).
LAYOUTS = {
    "mars": ("MARS", mars.LAYOUT,
             "bbox_train/ and bbox_test/ (a folder of <pid>C<camera>T<tracklet>F<frame>.jpg images per identity) and "
             f"info/ with MARS-evaluation's {', '.join(mars.INFO_FILES[:-1])} and {mars.INFO_FILES[-1]}",
             "MARS's bbox_train.zip and bbox_test.zip and MARS-evaluation's info/"),
    "duke": ("DukeMTMC-VideoReID", duke.LAYOUT, "train/, query/ and gallery/, each of <pid>/<tracklet>/<frame>.jpg",
             "DukeMTMC-VideoReID.zip"),
}


def check_source(layout: str, root: Path, param: str, synthetic_root: Path | None = None) -> None:
    """Raise DatasetError naming `param` unless `root` holds every path of `layout`; a missing root that is
    `synthetic_root` passes (stage synthesize@<name> writes it, maybe after this check)."""
    root = Path(root)
    if synthetic_root is not None and root == Path(synthetic_root) and not root.exists():
        return
    name, paths, expected, origin = LAYOUTS[layout]
    elsewhere = f"set {param} to the folder that holds {name}"
    if not root.exists():
        problem, fix = "nothing is there", f"put {name} there, or {elsewhere}"
    elif not root.is_dir():
        problem, fix = "that is a file, not a folder", elsewhere
    else:
        # A missing folder stands for its files: info/ missing is one problem, not six.
        missing = [p if "." in p else f"{p}/" for p in paths if (root / p).parent.is_dir() and not (root / p).exists()]
        if not missing:
            return
        problem, fix = f"it lacks {', '.join(missing)}", f"restore what it lacks from {origin}, or {elsewhere}"
    shown = str(root) if root.is_absolute() else f"{root} (that is {root.resolve()})"
    raise DatasetError(
        f"{param} in params.yaml is {shown}, and {problem}. Expected {name} there in its official layout: {expected}. "
        f"To fix it, {fix}; then run dvc repro again (nothing is downloaded)."
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: check one raw dataset root and record the source that prepare reads; DatasetError exits with code 2."""
    parser = command_parser(
        "datasets.sources", "Check that a raw dataset is at the root its params key names, in its official layout.",
        ["python -m datasets.sources --format mars --root /data/MARS --param data.sources.mars.root "
         "--out data/sources/mars.json",
         "python -m datasets.sources --format duke --root data/raw/synthetic/duke --param data.sources.duke.root "
         "--synthetic-root data/raw/synthetic/duke --out data/sources/duke.json"])
    parser.add_argument("--format", required=True, choices=sorted(LAYOUTS), help="the layout of --root")
    parser.add_argument("--root", required=True, type=Path, help="the dataset's root folder")
    parser.add_argument("--param", required=True, help="the params key that names --root, for the message")
    parser.add_argument("--synthetic-root", type=Path,
                        help="the folder stage synthesize@<name> writes: a --root there may not exist yet")
    parser.add_argument("--out", required=True, type=Path,
                        help="where to record the source, e.g. data/sources/mars.json")
    args = parser.parse_args(argv)
    check_source(args.format, args.root, args.param, args.synthetic_root)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")  # whole or not at all: DVC hashes it
    tmp.write_text(json.dumps({"format": args.format, "root": str(args.root)}, indent=2) + "\n")
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    run_cli(main)
