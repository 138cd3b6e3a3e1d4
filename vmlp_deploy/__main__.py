"""``python -m vmlp_deploy`` is the same as the ``vmlp-deploy`` command."""

import sys

from .cli import main

sys.exit(main())
