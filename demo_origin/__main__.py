"""`python -m demo_origin`: serve the demo origin on BIND_HOST (or ORIGIN_HOST):ORIGIN_PORT."""

from demo_origin.server import main

if __name__ == "__main__":
    main()
