"""``python -m metricsflow`` is the ``metricsflow`` command."""

from metricsflow.cli import main

if __name__ == "__main__":
    main()
