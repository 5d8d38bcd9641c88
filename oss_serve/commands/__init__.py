"""One module per `oss-serve` subcommand; each defines `register(app)`.

cli.py registers every module found here, so a new subcommand is one new file.
"""
