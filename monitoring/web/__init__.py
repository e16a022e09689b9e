"""The status page: an HTML template, its CSS and JS (served inline: the network is private and
the page must not load anything from outside), and the renderer that fills it."""
