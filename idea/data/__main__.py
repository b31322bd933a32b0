"""`python -m idea.data describe|download`: dataset statistics and downloads."""
from __future__ import annotations

import json
import sys

from idea.argparsing import StrictArgumentParser
from idea.data.describe import describe, format_description
from idea.data.download import DownloadError, download
from idea.data.interactions import DataFormatError, DataNotFoundError
from idea.data.registry import DATASETS, data_dir_of, load_split
from idea.splits import PROTOCOLS, SplitConfig


def main(argv: list[str] | None = None) -> int:
    parser = StrictArgumentParser(prog="python -m idea.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("describe", help="dataset and split statistics")
    d.add_argument("dataset", help=f"one of {sorted(DATASETS)}")
    d.add_argument("--data-dir", help="data folder (default: $IDEA_DATA_DIR, else ./data)")
    d.add_argument("--protocol", choices=PROTOCOLS, default="temporal")
    d.add_argument("--max-len", type=int, default=50)
    d.add_argument("--json", action="store_true", help="print one JSON object")
    g = sub.add_parser("download", help="fetch McAuley's 5-core review file into the data dir")
    g.add_argument("dataset", help="beauty, sports or toys")
    g.add_argument("--data-dir", help="data folder (default: $IDEA_DATA_DIR, else ./data)")
    g.add_argument("--base-url", help="mirror to download from instead of McAuley's host")
    args = parser.parse_args(argv)
    try:
        if args.command == "describe":
            data, split = load_split(args.dataset, args.data_dir, SplitConfig(args.protocol, args.max_len))
            desc = describe(data, split)
            print(json.dumps(desc) if args.json else format_description(desc))
        else:
            path = download(args.dataset, data_dir_of(args.data_dir), base_url=args.base_url)
            print(f"{args.dataset}: ready at {path}")
    except (DataNotFoundError, DataFormatError, DownloadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
