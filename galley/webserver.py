"""Daphne's command line with Twisted's own form parsing turned off (`python -m galley.webserver`).

Twisted parses every multipart/form-data POST body itself before Daphne hands the raw body to
Django: a malformed body then gets a bare 400 without the API's error body, and each upload is
parsed twice, once on the reactor thread that serves every other request. Django parses it anyway.

It also listens with a deep accept queue: Twisted's default of 50 pending connections makes a burst of
clients connecting at once fail with connection resets before Daphne sees them."""

from typing import Any

from daphne import cli, http_protocol
from daphne.cli import CommandLineInterface

LISTEN_BACKLOG = 1024
_build_endpoints = cli.build_endpoint_description_strings


def _endpoints_with_backlog(*args: Any, **kwargs: Any) -> list[str]:
    endpoints = _build_endpoints(*args, **kwargs)
    return [f"{e}:backlog={LISTEN_BACKLOG}" if e.startswith("tcp:") else e for e in endpoints]


cli.build_endpoint_description_strings = _endpoints_with_backlog

_daphne_init = http_protocol.WebRequest.__init__


def _init_without_form_parsing(self: http_protocol.WebRequest, *args: Any, **kwargs: Any) -> None:
    _daphne_init(self, *args, **kwargs)
    self._parsePOSTFormSubmission = False


http_protocol.WebRequest.__init__ = _init_without_form_parsing  # type: ignore[method-assign]

if __name__ == "__main__":
    CommandLineInterface.entrypoint()
