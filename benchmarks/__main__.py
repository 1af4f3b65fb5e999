"""``python -m benchmarks``: every benchmark; see benchmarks/suite.py."""

from benchmarks.suite import main

if __name__ == "__main__":
    main()
