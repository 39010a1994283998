"""py-allowlist's own tests, under plain Python (no gateway, no componentize-py):
    python3 -m unittest discover -s plugins/py-allowlist -t plugins/py-allowlist
(with plugins/py on PYTHONPATH for the helper)."""

import json
import unittest

from fluxgate_plugin import testing

from app import Allowlist


class AllowlistTest(unittest.TestCase):
    def setUp(self):
        testing.reset()
        self.plugin = testing.load(Allowlist, {"allow": ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"]})

    def call(self, ip):
        return self.plugin.on_request(testing.request(path="/x", client_ip=ip))

    def test_declares_only_on_request(self):
        self.assertEqual(self.plugin.info, (True, False, False, False))

    def test_addresses_in_the_list_go_on(self):
        for ip in ["10.0.0.1", "10.255.255.255", "192.168.1.7", "2001:db8::1", "::ffff:10.1.2.3"]:
            self.assertIsNone(self.call(ip), ip)

    def test_others_get_403_json(self):
        for ip in ["11.0.0.1", "192.168.1.8", "2001:db9::1", "::1", "not-an-ip"]:
            action = self.call(ip)
            self.assertIsNotNone(action, ip)
            self.assertEqual(action.status, 403)
            self.assertIn(("content-type", b"application/json"), action.headers)
            body = json.loads(action.body)
            self.assertEqual(body["error"], "forbidden")
            self.assertEqual(body["status"], 403)
        self.assertIn(("info", "refused 11.0.0.1"), testing.logs())

    def test_status_and_message_are_configurable(self):
        plugin = testing.load(Allowlist, {"allow": ["::1"], "status": 404, "message": "no {ip}"})
        action = plugin.on_request(testing.request(client_ip="127.0.0.1"))
        self.assertEqual(action.status, 404)
        self.assertEqual(json.loads(action.body)["message"], "no 127.0.0.1")

    def test_a_bad_config_is_refused_with_its_reason(self):
        for config, reason in [
            ({}, "non-empty list"),
            ({"allow": []}, "non-empty list"),
            ({"allow": ["10.0.0.0/33"]}, "not an IP address or CIDR range"),
            ({"allow": ["::1"], "status": 200}, "4xx"),
        ]:
            with self.assertRaisesRegex(testing.InitError, reason):
                testing.load(Allowlist, config)


if __name__ == "__main__":
    unittest.main()
