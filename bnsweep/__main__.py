from bnsweep.cli import main

raise SystemExit(main())
