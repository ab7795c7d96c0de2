"""python -m flowad"""

import sys

from flowad.cli import main

sys.exit(main())
