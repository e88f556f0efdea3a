"""The admin console's pieces: templates and static files, SVG charts, the sealed session, page data."""
