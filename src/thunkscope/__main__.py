"""``python -m thunkscope``: the same as the ``thunkscope`` command."""

import sys

from thunkscope._cli import main

sys.exit(main())
