"""The public client for ``curvedit serve`` (see ``curvedit.service.client``)."""

from curvedit.service.client import AsyncClient, Client, EditResult, Security, StreamError, edit_request

__all__ = ["AsyncClient", "Client", "EditResult", "Security", "StreamError", "edit_request"]
