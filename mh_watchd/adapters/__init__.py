"""One module per outside thing: files, sqlite, HTTP, PyAV, the OS."""
