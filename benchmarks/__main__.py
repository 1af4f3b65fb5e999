"""``python -m benchmarks``: run the core benchmark."""

from benchmarks.core import main

if __name__ == "__main__":
    main()
