"""``python -m mapo_bench`` and ``accelerate launch -m mapo_bench`` entry point."""

from mapo_bench.cli import main

if __name__ == "__main__":
    main()
