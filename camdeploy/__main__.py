import sys

from camdeploy.cli import main

sys.exit(main())
