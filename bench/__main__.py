"""`python -m bench`: run the benchmark (options: `python -m bench --help`)."""

from bench.run import main

raise SystemExit(main())
