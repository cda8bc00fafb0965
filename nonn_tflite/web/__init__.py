"""The browser side of NoNN: a live dashboard served by the package itself, and an HTML report.

Everything here uses the standard library (``http.server`` and Server-Sent Events) plus what
the live nodes already need (paho-mqtt, numpy); the page is static HTML/JS/CSS in ``static/``,
with no CDN, no build step and no external fonts, so it works on a laptop without internet.
"""
