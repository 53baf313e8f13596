from mubench.cli import main

raise SystemExit(main())
