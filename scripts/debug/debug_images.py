"""Debug image loading: a contact sheet of images as the model receives them.

Decodes (or reads from the cache) the images of the config's labels file exactly as training does,
and draws N of them after preprocessing and normalisation, with the six zones outlined (the 3x2
grid, or the lung-mask zones with [Data] mask_dir) and each zone's label. The same sheet as
`python main.py --mode check --preview N`.

    python scripts/debug/debug_images.py [--config config/config.ini] [--n 20] [--output debug_images.png]
        [--set Data.labels_csv=other.csv ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from src.config.loader import load_config  # noqa: E402
from src.data.load import load_data  # noqa: E402
from src.data.preprocess import Normalization  # noqa: E402
from src.evaluation.preview import write_preview  # noqa: E402
from src.utils.errors import CSIError  # noqa: E402
from src.utils.logging import logger, setup_logging  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/config.ini", help="INI file (default %(default)s)")
    parser.add_argument("--n", type=int, default=20, help="images on the sheet (default %(default)s)")
    parser.add_argument("--output", default="debug_images.png", help="PNG to write (default %(default)s)")
    parser.add_argument("--seed", type=int, help="which images are drawn (default [Training] seed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config key; repeatable")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be >= 1")
    setup_logging("info")
    try:
        cfg = load_config(args.config, args.overrides)
        bundle = load_data(cfg)
        seed = cfg.training.seed if args.seed is None else args.seed
        path = write_preview(bundle, Normalization.of(cfg.data), args.n, seed, args.output, str(cfg.data.labels_csv))
    except CSIError as exc:
        logger.error(str(exc))
        return 2
    print(f"wrote {path}: {min(args.n, len(bundle.table))} images as the model receives them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
