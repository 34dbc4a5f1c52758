"""Train, evaluate and save an agent: ``python train.py --algo ppo --env rlattn/TMaze-v0 --extractor attention``."""

import sys

if __name__ == "__main__":
    try:  # torch, SB3 and the envs load first: a Ctrl-C meanwhile is one line too
        from agents.cli import main
    except KeyboardInterrupt:
        print("train.py: interrupted before training started; nothing was saved", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
