"""{{name}}: a FluxGate plugin. It adds a header to every answer the client gets; the
value comes from the route's config (`config = { greeting = "..." }`)."""

from fluxgate_plugin import Plugin, export


class Greeter(Plugin):
    def init(self, config):
        self.greeting = config.get("greeting", "hello from {{name}}")
        if not isinstance(self.greeting, str) or any(
            (ord(c) < 32 and c != "\t") or ord(c) == 127 for c in self.greeting
        ):
            raise ValueError("greeting must be a valid header value")

    def on_response(self, req, resp):
        resp.set_header("x-greeting", self.greeting)


# componentize-py builds the class named WitWorld into the component.
WitWorld = export(Greeter)
