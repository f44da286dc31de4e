import sys

from timm_cct.demo.run import main

sys.exit(main())
