"""`python -m sc2cli`: the `sc2` command (the same `main` as the console script). Importing this module runs
nothing."""

if __name__ == "__main__":
    from .cli import main

    main()
