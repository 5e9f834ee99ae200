"""CSI-Predictor command line: `python main.py --mode MODE` (see --help)."""

from src.cli.main import main

if __name__ == "__main__":
    main()
