"""``python -m smnas.forkserver serve|stop|status``."""
import sys

from smnas.forkserver.server import main

sys.exit(main())
