"""Train, evaluate and save an agent: ``python train.py --algo ppo --env rlattn/TMaze-v0 --extractor attention``."""

import sys

from agents.cli import main

if __name__ == "__main__":
    sys.exit(main())
