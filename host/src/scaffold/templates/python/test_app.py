"""`python3 -m unittest`: the plugin without a gateway, through fluxgate_plugin.testing
(the gateway's rules enforced, only the declared hooks called)."""

import unittest

from fluxgate_plugin import testing
from app import Greeter


class GreeterTest(unittest.TestCase):
    def test_every_answer_gets_the_greeting(self):
        plugin = testing.load(Greeter, {"greeting": "hi"})
        req = testing.request(path="/anything")
        plugin.on_request(req)
        resp = testing.response(200)
        plugin.on_response(req, resp)
        self.assertEqual(resp.header("x-greeting"), "hi")
        with self.assertRaisesRegex(testing.InitError, "valid header value"):
            testing.load(Greeter, {"greeting": "a\nb"})


if __name__ == "__main__":
    unittest.main()
