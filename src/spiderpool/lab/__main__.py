import sys

from spiderpool.lab.cli import main

sys.exit(main())
