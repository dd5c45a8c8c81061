from pimoe.cli import main

raise SystemExit(main())
