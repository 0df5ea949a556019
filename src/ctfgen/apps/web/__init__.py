"""`ctfgen serve`: a local web page to try CTF. `service` holds the logic (no web framework needed);
`app` builds and launches the Gradio page (the optional extra `pip install -e ".[web]"`)."""
from .service import PageRequest, PageResult, PageService, class_names_for

__all__ = ["PageRequest", "PageResult", "PageService", "class_names_for"]
