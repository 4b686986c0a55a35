"""The operator's web page (D10): server-rendered HTML with inline SVG plots.

``pages`` holds the routes, ``figures`` what they read from the store,
``views`` the HTML, ``svg`` the plots. The HTTP API mounts `pages.router`
behind its operator authentication.
"""
