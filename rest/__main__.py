import sys

from rest.cli import main

sys.exit(main())
