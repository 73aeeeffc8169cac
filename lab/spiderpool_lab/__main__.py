import sys

from spiderpool_lab.cli import main

sys.exit(main())
