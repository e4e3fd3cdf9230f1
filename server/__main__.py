"""`python -m server` is `kimi-vl-serve`."""

from server.cli import main

# The vLLM engine spawns worker processes that re-import the main module; the guard keeps them
# from starting a second server.
if __name__ == "__main__":
    main()
