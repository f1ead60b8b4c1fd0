"""The web page's static files, served by the API (a package so that wheels carry them)."""
