"""Request handling behind the routes: validation, the pipelines, and the wire shapes of replies."""
