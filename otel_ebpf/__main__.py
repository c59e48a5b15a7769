from otel_ebpf.cli import main

raise SystemExit(main())
