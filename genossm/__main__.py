from genossm.cli import main

raise SystemExit(main())
