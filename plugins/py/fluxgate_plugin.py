"""fluxgate_plugin: the Python helper for FluxGate plugins (contract fluxgate:plugin@0.2,
built with componentize-py). It makes the hooks feel native: a ``Plugin`` class whose
hooks are declared by defining them, strings instead of bytes, actions as values.

    from fluxgate_plugin import Plugin, Action, export

    class Tag(Plugin):
        def init(self, config):             # the route's config, parsed
            self.tag = config.get("tag", "a")
        def on_request(self, req):          # return None (continue) or an Action
            req.set_header("x-tag", self.tag)

    WitWorld = export(Tag)                  # what componentize-py builds

``fluxgate_plugin.testing`` runs a plugin under plain Python (``unittest``) the way the
gateway calls it. This module imports the generated bindings (``wit_world``) only when
``export`` is used inside a component, so tests need no componentize-py.
"""

import json

__all__ = ["Plugin", "Request", "Response", "Action", "KvError", "export", "log", "kv", "now_ms", "testing"]

CONTRACT = "fluxgate:plugin@0.2.0"


def _bytes(value):
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError("expected str or bytes, got %s" % type(value).__name__)


def _text(value):
    return None if value is None else bytes(value).decode("utf-8", "replace")


class Request:
    """The request a hook borrows: reads and edits go to the gateway's own request."""

    def __init__(self, raw):
        self.raw = raw

    def method(self):
        return self.raw.method()

    def path(self):
        return self.raw.path()

    def query(self):
        """The raw query string without '?', or None."""
        return self.raw.query()

    def query_param(self, name):
        """One query parameter, percent-decoded, or None."""
        from urllib.parse import parse_qs

        values = parse_qs(self.query() or "", keep_blank_values=True).get(name)
        return values[0] if values else None

    def header(self, name):
        """The first value of a header as text (name in any case), or None."""
        return _text(self.raw.header(name))

    def header_bytes(self, name):
        return self.raw.header(name)

    def header_values(self, name):
        return [_text(v) for v in self.raw.header_values(name)]

    def headers(self):
        """Every header as (name, text); copies all of them, so prefer ``header``."""
        return [(n, _text(v)) for n, v in self.raw.headers()]

    def client_ip(self):
        return self.raw.client_ip()

    def route(self):
        return self.raw.route()

    def param(self, name):
        return self.raw.param(name)

    def params(self):
        return list(self.raw.params())

    def body(self):
        """The body (set ``request_body = True`` on the class), or None."""
        return self.raw.body()

    def body_text(self):
        return _text(self.body())

    def body_json(self):
        text = self.body_text()
        return None if text is None else json.loads(text)

    def set_header(self, name, value):
        self.raw.set_header(name, _bytes(value))

    def append_header(self, name, value):
        self.raw.append_header(name, _bytes(value))

    def remove_header(self, name):
        self.raw.remove_header(name)

    def set_path(self, path):
        self.raw.set_path(path)

    def set_query(self, query):
        """Replaces the query (without '?'); None removes it."""
        self.raw.set_query(query)

    def set_body(self, body):
        self.raw.set_body(_bytes(body))

    def stash(self, value):
        """Keeps a value (at most 4 KiB) for this plugin's on_response of the request."""
        self.raw.stash(_bytes(value))

    def stashed(self):
        return self.raw.stashed()

    def stashed_text(self):
        return _text(self.stashed())


class Response:
    """The answer an on_response hook borrows."""

    def __init__(self, raw):
        self.raw = raw

    def status(self):
        return self.raw.status()

    def set_status(self, status):
        self.raw.set_status(status)

    def header(self, name):
        return _text(self.raw.header(name))

    def header_values(self, name):
        return [_text(v) for v in self.raw.header_values(name)]

    def headers(self):
        return [(n, _text(v)) for n, v in self.raw.headers()]

    def body(self):
        return self.raw.body()

    def body_text(self):
        return _text(self.body())

    def set_header(self, name, value):
        self.raw.set_header(name, _bytes(value))

    def append_header(self, name, value):
        self.raw.append_header(name, _bytes(value))

    def remove_header(self, name):
        self.raw.remove_header(name)

    def set_body(self, body):
        self.raw.set_body(_bytes(body))

    def set_json(self, value):
        self.set_header("content-type", "application/json")
        self.set_body(json.dumps(value, separators=(",", ":")))


class Action:
    """What ``on_request`` returns: ``None`` or ``Action.CONTINUE`` goes on; a direct
    answer (``Action.json(403, {...})``) skips the upstream."""

    CONTINUE = None

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @staticmethod
    def _headers(headers):
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        return [(n.lower(), _bytes(v)) for n, v in items]

    @classmethod
    def respond(cls, status, body=b"", headers=None):
        return cls(status, cls._headers(headers), _bytes(body))

    @classmethod
    def text(cls, status, text, headers=None):
        return cls(status, [("content-type", b"text/plain; charset=utf-8")] + cls._headers(headers), _bytes(text))

    @classmethod
    def json(cls, status, value, headers=None):
        body = json.dumps(value, separators=(",", ":"))
        return cls(status, [("content-type", b"application/json")] + cls._headers(headers), _bytes(body))

    @classmethod
    def error(cls, status, error, message):
        """The gateway's error shape: {"error", "message", "status"}."""
        return cls.json(status, {"error": error, "message": message, "status": status})

    def __repr__(self):
        return "Action(%d, %r, %r)" % (self.status, self.headers, self.body)


class Plugin:
    """Subclass it. ``init(config)`` gets the route's config (a dict) and raises to
    refuse it (the message becomes the gateway's log line); ``on_request(req)`` returns
    ``None`` or an ``Action``; ``on_response(req, resp)`` edits ``resp``. Only the
    hooks a subclass defines are declared, so the gateway calls exactly those. Set
    ``request_body = True`` / ``response_body = True`` to get bodies."""

    request_body = False
    response_body = False

    def init(self, config):
        pass

    def on_request(self, req):
        return None

    def on_response(self, req, resp):
        pass

    @classmethod
    def declared(cls):
        """(on_request, on_response, request_body, response_body) as the gateway sees it."""
        return (
            cls.on_request is not Plugin.on_request,
            cls.on_response is not Plugin.on_response,
            bool(cls.request_body),
            bool(cls.response_body),
        )


def _host():
    """The contract's host imports inside a component; the in-memory fakes of
    ``testing`` anywhere else."""
    try:
        from wit_world.imports import host, types
    except ImportError:
        return _FAKE, _FakeTypes
    return host, types


class _Log:
    """Log lines, tagged with the plugin's name by the gateway (16 per call, 4 KiB each)."""

    def _write(self, level, message):
        host, types = _host()
        host.log(getattr(types.LogLevel, level), str(message))

    def trace(self, message):
        self._write("TRACE", message)

    def debug(self, message):
        self._write("DEBUG", message)

    def info(self, message):
        self._write("INFO", message)

    def warn(self, message):
        self._write("WARN", message)

    def error(self, message):
        self._write("ERROR", message)


class KvError(Exception):
    """The store refused a write (key or value too long, too many writes in one call)."""


class _Kv:
    """The plugin's key-value store, shared by its instances in one gateway process."""

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except Exception as e:  # componentize-py raises Err(value) for a result's error
            raise KvError(str(getattr(e, "value", e))) from None

    def get(self, key):
        return _host()[0].kv_get(key)

    def get_string(self, key):
        return _text(self.get(key))

    def set(self, key, value, ttl_ms=None):
        self._call(_host()[0].kv_set, key, _bytes(value), ttl_ms)

    def delete(self, key):
        return _host()[0].kv_delete(key)

    def incr(self, key, delta=1, ttl_ms=None):
        return self._call(_host()[0].kv_incr, key, delta, ttl_ms)


log = _Log()
kv = _Kv()


def now_ms():
    """Wall-clock milliseconds since the Unix epoch."""
    return _host()[0].now_ms()


def export(plugin_class):
    """The ``WitWorld`` class componentize-py builds: the contract's exports, calling
    ``plugin_class`` (a ``Plugin`` subclass) with the helper's views. Outside a
    component (no generated ``wit_world``, e.g. under unittest) it returns None."""
    try:
        import wit_world
        from wit_world.imports import types
        from componentize_py_types import Err
    except ImportError:
        return None

    on_request, on_response, request_body, response_body = plugin_class.declared()
    state = {}

    class WitWorld(wit_world.WitWorld):
        def init(self, config):
            try:
                plugin = plugin_class()
                plugin.init(json.loads(config))
            except Exception as e:
                raise Err(str(e) or type(e).__name__)
            state["plugin"] = plugin
            return types.PluginInfo(
                on_request=on_request,
                on_response=on_response,
                request_body=request_body,
                response_body=response_body,
            )

        def on_request(self, req):
            action = state["plugin"].on_request(Request(req)) if on_request else None
            if action is None:
                return types.RequestAction_Continue()
            return types.RequestAction_Respond(
                types.DirectResponse(status=action.status, headers=action.headers, body=action.body)
            )

        def on_response(self, req, resp):
            if on_response:
                state["plugin"].on_response(Request(req), Response(resp))

    return WitWorld


# --- testing: the plugin under plain Python, the way the gateway calls it -------------

import re as _re

_TOKEN = _re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_RESERVED = {
    "content-length", "transfer-encoding", "connection", "keep-alive",
    "upgrade", "te", "trailer", "proxy-connection",
}
_MAX_FIELDS = 256
_MAX_HEADER_BYTES = 64 * 1024
_MAX_STASH = 4096


class _FakeTypes:
    class LogLevel:
        TRACE, DEBUG, INFO, WARN, ERROR = "trace", "debug", "info", "warn", "error"


class _FakeHost:
    """In-memory host imports: key-value store with TTLs, settable clock, captured logs."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.store = {}
        self.logs = []
        self.clock = 1_700_000_000_000
        self.writes = 0

    def _live(self, key):
        entry = self.store.get(key)
        if entry and entry[1] is not None and entry[1] <= self.clock:
            del self.store[key]
            return None
        return entry

    def _write(self, key, value):
        if len(key.encode()) > 1024:
            raise KvError("key longer than 1024 bytes")
        if len(value) > 64 * 1024:
            raise KvError("value longer than 65536 bytes")
        self.writes += 1
        if self.writes > 64:
            raise KvError("more than 64 writes in one hook call")

    def log(self, level, message):
        self.logs.append((level, str(message)[:4096]))

    def kv_get(self, key):
        entry = self._live(key)
        return entry[0] if entry else None

    def kv_set(self, key, value, ttl_ms):
        self._write(key, value)
        self.store[key] = (bytes(value), None if ttl_ms is None else self.clock + ttl_ms)

    def kv_delete(self, key):
        found = self._live(key) is not None
        self.store.pop(key, None)
        return found

    def kv_incr(self, key, delta, ttl_ms):
        entry = self._live(key)
        try:
            current = int(entry[0]) if entry else 0
        except ValueError:
            current = 0
        value = str(current + delta).encode()
        self._write(key, value)
        expires = entry[1] if entry else (None if ttl_ms is None else self.clock + ttl_ms)
        self.store[key] = (value, expires)
        return current + delta

    def now_ms(self):
        return self.clock


_FAKE = _FakeHost()


class testing:
    """Runs a ``Plugin`` subclass without a gateway: ``init`` with a config, only the
    hooks it declares, the stash carried to ``on_response``, and the gateway's rules
    enforced on every edit (a broken rule raises ``testing.RuleBroken`` naming it,
    where the gateway would fail the call).

        plugin = testing.load(MyPlugin, {"allow": ["10.0.0.0/8"]})
        req = testing.request(path="/x", client_ip="10.1.2.3", headers={"x-a": "1"})
        action = plugin.on_request(req)     # None (continue) or an Action
        assert req.header("x-tag") == "a"   # edits are applied to req
    """

    class InitError(Exception):
        """``init`` refused the config."""

    class RuleBroken(AssertionError):
        """The plugin broke one of the gateway's output rules."""

    @staticmethod
    def _rule(message):
        raise testing.RuleBroken("plugin broke a rule: " + message)

    class _Fields:
        def __init__(self, headers):
            items = headers.items() if isinstance(headers, dict) else (headers or [])
            self.list = [(n.lower(), _bytes(v)) for n, v in items]

        def get(self, name):
            for n, v in self.list:
                if n == name.lower():
                    return v
            return None

        def all(self, name):
            return [v for n, v in self.list if n == name.lower()]

        @staticmethod
        def _name(name):
            if not _TOKEN.match(name):
                testing._rule("header name %r is not an HTTP token" % name)
            lower = name.lower()
            if lower in _RESERVED:
                testing._rule("header %s is the gateway's: framing and connection headers cannot be edited" % lower)
            return lower

        @staticmethod
        def _value(name, value):
            value = _bytes(value)
            if any((b < 0x20 and b != 0x09) or b == 0x7F for b in value):
                testing._rule("the value of header %s holds a control character (CR, LF, NUL, ...)" % name)
            return value

        def _bound(self):
            if len(self.list) > _MAX_FIELDS:
                testing._rule("more than %d header fields" % _MAX_FIELDS)
            if sum(len(n) + len(v) for n, v in self.list) > _MAX_HEADER_BYTES:
                testing._rule("more than %d bytes of headers" % _MAX_HEADER_BYTES)

        def set(self, name, value):
            n = self._name(name)
            v = self._value(n, value)
            self.list = [(m, w) for m, w in self.list if m != n] + [(n, v)]
            self._bound()

        def append(self, name, value):
            n = self._name(name)
            self.list.append((n, self._value(n, value)))
            self._bound()

        def remove(self, name):
            n = self._name(name)
            self.list = [(m, w) for m, w in self.list if m != n]

    class RawRequest:
        """A fake of the contract's ``request`` resource."""

        def __init__(self, method="GET", path="/", query=None, headers=None, client_ip="127.0.0.1",
                     route="test", params=None, body=None):
            self._method, self._path, self._query = method, path, query
            self.fields = testing._Fields(headers)
            self._client_ip, self._route = client_ip, route
            self._params = list((params or {}).items()) if isinstance(params, dict) else list(params or [])
            self._body = None if body is None else _bytes(body)
            self._stash = None
            self.body_declared = False
            self.gone = False

        def _edit(self):
            if self.gone:
                testing._rule("the request was edited in on-response, after it went upstream")

        def method(self):
            return self._method

        def path(self):
            return self._path

        def query(self):
            return self._query

        def header(self, name):
            return self.fields.get(name)

        def header_values(self, name):
            return self.fields.all(name)

        def headers(self):
            return list(self.fields.list)

        def client_ip(self):
            return self._client_ip

        def route(self):
            return self._route

        def param(self, name):
            return dict(self._params).get(name)

        def params(self):
            return list(self._params)

        def body(self):
            return self._body if self.body_declared else None

        def set_header(self, name, value):
            self._edit()
            self.fields.set(name, value)

        def append_header(self, name, value):
            self._edit()
            self.fields.append(name, value)

        def remove_header(self, name):
            self._edit()
            self.fields.remove(name)

        def set_path(self, path):
            self._edit()
            if not path.startswith("/") or any(c in path for c in "?# \t\r\n"):
                testing._rule("path %r: must start with '/' and hold no '?', '#' or whitespace" % path)
            self._path = path

        def set_query(self, query):
            self._edit()
            if query is not None and any(c in query for c in "# \t\r\n"):
                testing._rule("query %r is not a valid query" % query)
            self._query = query

        def set_body(self, body):
            self._edit()
            if not self.body_declared:
                testing._rule("set-body without declaring the body in plugin-info")
            self._body = _bytes(body)

        def stash(self, value):
            self._edit()
            value = _bytes(value)
            if len(value) > _MAX_STASH:
                testing._rule("a stash of %d bytes is larger than %d" % (len(value), _MAX_STASH))
            self._stash = value

        def stashed(self):
            return self._stash

    class RawResponse:
        """A fake of the contract's ``response`` resource."""

        def __init__(self, status=200, headers=None, body=None):
            self._status = status
            self.fields = testing._Fields(headers)
            self._body = None if body is None else _bytes(body)
            self.body_declared = False

        def status(self):
            return self._status

        def set_status(self, status):
            if not isinstance(status, int) or not 200 <= status <= 599:
                testing._rule("status %r is not in 200-599" % (status,))
            self._status = status

        def header(self, name):
            return self.fields.get(name)

        def header_values(self, name):
            return self.fields.all(name)

        def headers(self):
            return list(self.fields.list)

        def body(self):
            return self._body if self.body_declared else None

        def set_header(self, name, value):
            self.fields.set(name, value)

        def append_header(self, name, value):
            self.fields.append(name, value)

        def remove_header(self, name):
            self.fields.remove(name)

        def set_body(self, body):
            self._body = _bytes(body)

    class Harness:
        def __init__(self, plugin, info):
            self.plugin = plugin
            self.info = info

        def on_request(self, req):
            """Runs on_request (if declared); edits stay on ``req``; returns the Action
            or None."""
            req.raw.body_declared = self.info[2]
            _FAKE.writes = 0
            if not self.info[0]:
                return None
            action = self.plugin.on_request(req)
            if action is not None:
                if not isinstance(action, Action):
                    testing._rule("on_request returned %r, not None or an Action" % (action,))
                if not isinstance(action.status, int) or not 200 <= action.status <= 599:
                    testing._rule("status %r is not in 200-599" % (action.status,))
                fields = testing._Fields([])
                for name, value in action.headers:
                    fields.append(name, value)
            return action

        def on_response(self, req, resp):
            """Runs on_response (if declared): ``req`` as it went upstream, edits on
            ``resp``."""
            resp.raw.body_declared = self.info[3]
            _FAKE.writes = 0
            if not self.info[1]:
                return
            req.raw.gone = True
            try:
                self.plugin.on_response(req, resp)
            finally:
                req.raw.gone = False

    @staticmethod
    def load(plugin_class, config=None):
        """Initialises ``plugin_class`` with ``config`` (a dict or JSON text); raises
        ``testing.InitError`` with the plugin's refusal."""
        text = config if isinstance(config, str) else json.dumps(config or {})
        plugin = plugin_class()
        try:
            plugin.init(json.loads(text))
        except Exception as e:
            raise testing.InitError(str(e) or type(e).__name__) from e
        return testing.Harness(plugin, plugin_class.declared())

    @staticmethod
    def request(**fields):
        """A request as a hook sees it (``Request`` over a fake resource): method,
        path, query, headers (dict or pairs), client_ip, route, params, body."""
        return Request(testing.RawRequest(**fields))

    @staticmethod
    def response(status=200, headers=None, body=None):
        return Response(testing.RawResponse(status, headers, body))

    @staticmethod
    def logs():
        """Log lines written so far, as (level, message)."""
        return list(_FAKE.logs)

    @staticmethod
    def reset():
        """Forgets the key-value store, the logs and the clock."""
        _FAKE.reset()

    @staticmethod
    def set_clock(ms):
        _FAKE.clock = ms
