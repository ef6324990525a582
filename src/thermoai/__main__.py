from thermoai.cli import main

raise SystemExit(main())
