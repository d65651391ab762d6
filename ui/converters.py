"""Path converters for the operator pages. Imported by each app's urls.py before its patterns."""

from django.urls import register_converter

from opscore_site.api import IdConverter

# An agent or workflow id in a page URL: no '/', no NUL (PostgreSQL refuses NUL in a query: a 500),
# at most 255 characters. Anything else does not match: 404.
register_converter(IdConverter, "opsid")
