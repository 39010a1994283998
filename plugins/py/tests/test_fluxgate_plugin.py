"""The helper and its test double: ``python3 -m unittest discover -s tests -t .``
(from plugins/py)."""

import json
import unittest

from fluxgate_plugin import Action, Plugin, kv, log, now_ms, testing


class Nothing(Plugin):
    pass


class Everything(Plugin):
    request_body = True

    def init(self, config):
        if config.get("refuse"):
            raise ValueError("refused: %s" % config["refuse"])
        self.config = config

    def on_request(self, req):
        assert req.method() == "POST"
        assert req.query_param("q") == "a b"
        assert req.header("X-Key") == "k"
        assert req.body_json() == {"n": 1}
        req.set_header("x-seen", "yes")
        req.set_path("/rewritten")
        req.stash("from-request")
        if req.header("x-deny"):
            return Action.error(401, "unauthorized", "no key")
        return None

    def on_response(self, req, resp):
        resp.set_header("x-stashed", req.stashed_text())
        resp.set_status(201)


class HelperTest(unittest.TestCase):
    def setUp(self):
        testing.reset()

    def test_the_hooks_defined_are_the_hooks_declared(self):
        self.assertEqual(testing.load(Nothing).info, (False, False, False, False))
        self.assertEqual(testing.load(Everything).info, (True, True, True, False))

    def test_init_gets_the_config_and_its_exception_is_the_refusal(self):
        self.assertEqual(testing.load(Everything, {"a": [1]}).plugin.config, {"a": [1]})
        with self.assertRaisesRegex(testing.InitError, "refused: yes"):
            testing.load(Everything, {"refuse": "yes"})

    def test_requests_read_as_text_and_edit_in_place(self):
        plugin = testing.load(Everything)
        req = testing.request(method="POST", path="/p", query="q=a%20b", headers={"x-key": "k"}, body='{"n":1}')
        self.assertIsNone(plugin.on_request(req))
        self.assertEqual(req.header("x-seen"), "yes")
        self.assertEqual(req.path(), "/rewritten")
        resp = testing.response(200)
        plugin.on_response(req, resp)
        self.assertEqual(resp.header("x-stashed"), "from-request")
        self.assertEqual(resp.status(), 201)

    def test_actions_carry_status_headers_and_body(self):
        plugin = testing.load(Everything)
        req = testing.request(method="POST", query="q=a+b", headers={"x-key": "k", "x-deny": "1"}, body='{"n":1}')
        action = plugin.on_request(req)
        self.assertEqual(action.status, 401)
        self.assertIn(("content-type", b"application/json"), action.headers)
        self.assertEqual(json.loads(action.body), {"error": "unauthorized", "message": "no key", "status": 401})

    def test_the_gateways_rules_are_enforced(self):
        def edit(fn, **kwargs):
            class P(Plugin):
                def on_request(self, req):
                    return fn(req)

            return lambda: testing.load(P).on_request(testing.request(**kwargs))

        for fn, reason in [
            (lambda r: r.set_header("content-length", "1"), "is the gateway's"),
            (lambda r: r.set_header("x-a", "a\r\nb"), "control character"),
            (lambda r: r.set_header("bad name", "v"), "not an HTTP token"),
            (lambda r: r.set_path("relative"), "must start with '/'"),
            (lambda r: r.stash("x" * 4097), "larger than 4096"),
            (lambda r: r.set_body("b"), "without declaring the body"),
            (lambda r: Action.text(101, "x"), "not in 200-599"),
        ]:
            with self.assertRaisesRegex(testing.RuleBroken, reason):
                edit(fn)()

        class Late(Plugin):
            def on_response(self, req, resp):
                req.set_header("x-late", "1")

        with self.assertRaisesRegex(testing.RuleBroken, "after it went upstream"):
            testing.load(Late).on_response(testing.request(), testing.response())

    def test_kv_log_and_the_clock_go_to_the_fake_host(self):
        kv.set("k", "v", 1000)
        self.assertEqual(kv.incr("n", 2), 2)
        log.info("count 2")
        self.assertEqual(kv.get_string("k"), "v")
        self.assertEqual(testing.logs(), [("info", "count 2")])
        testing.set_clock(now_ms() + 1001)
        self.assertIsNone(kv.get("k"), "expired")

        class Flood(Plugin):
            def on_request(self, req):
                for i in range(65):
                    kv.set("k%d" % i, "v")

        from fluxgate_plugin import KvError

        with self.assertRaisesRegex(KvError, "more than 64 writes"):
            testing.load(Flood).on_request(testing.request())


if __name__ == "__main__":
    unittest.main()
