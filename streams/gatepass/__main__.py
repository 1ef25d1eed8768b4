from gatepass.cli import main

raise SystemExit(main())
