from dqagent.cli.main import main

raise SystemExit(main())
