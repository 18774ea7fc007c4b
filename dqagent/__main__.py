from dqagent.cli import main

raise SystemExit(main())
