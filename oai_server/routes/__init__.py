"""Thin HTTP routes: parse the body, call the serving object on `app.state`, pick the response."""
