from switchllm.cli import main

raise SystemExit(main())
