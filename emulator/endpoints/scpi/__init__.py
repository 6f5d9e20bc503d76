"""One module per emulated SCPI instrument family (see ../scpi_instruments.py for the set)."""
