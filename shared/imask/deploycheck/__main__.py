from imask.deploycheck.checks import main

raise SystemExit(main())
