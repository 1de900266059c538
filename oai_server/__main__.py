"""`python -m oai_server serve ...` is the same as `oai-server serve ...`."""

from .cli import main

main()
