"""The routes of the HTTP API, one module per resource; :func:`..app.create_http_app`
mounts them."""
