"""The applications over the library: the command line (cli/) and the web page (web/)."""
