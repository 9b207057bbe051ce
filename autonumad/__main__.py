from autonumad.cli import main

raise SystemExit(main())
