"""The base class of errors caused by user input (the CLI prints them in one line, exit 2)."""


class UserError(ValueError):
    pass
