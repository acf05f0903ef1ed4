"""The configuration: the option table, the typed Config, parsing and resolution, main.py's command line, the
scripts' parser and error wrapper."""
