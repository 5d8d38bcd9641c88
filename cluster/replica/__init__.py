"""The replica's side of the request path: its Redis queue, links to routers, the host."""
