import sys

from netlang.cli import main

sys.exit(main())
