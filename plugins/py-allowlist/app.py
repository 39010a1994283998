"""py-allowlist: lets in only clients whose address is on an allow-list of IPs and
CIDR ranges from the route's config; the others get 403 with a JSON error.

    plugins = [{ name = "py-allowlist", config = { allow = ["10.0.0.0/8", "::1"] } }]

The address is the TCP peer the gateway saw (``client-ip``), not X-Forwarded-For, which
a client can write. Optional: ``status`` (default 403) and ``message``.
"""

import ipaddress

from fluxgate_plugin import Action, Plugin, export, log


class Allowlist(Plugin):
    def init(self, config):
        allow = config.get("allow")
        if not isinstance(allow, list) or not allow:
            raise ValueError("allow must be a non-empty list of IP addresses or CIDR ranges")
        networks = []
        for entry in allow:
            try:
                networks.append(ipaddress.ip_network(str(entry), strict=False))
            except ValueError:
                raise ValueError("allow: %r is not an IP address or CIDR range" % (entry,))
        self.v4 = [n for n in networks if n.version == 4]
        self.v6 = [n for n in networks if n.version == 6]
        self.status = config.get("status", 403)
        if not isinstance(self.status, int) or not 400 <= self.status <= 499:
            raise ValueError("status must be a 4xx code")
        self.message = config.get("message", "client {ip} is not allowed")

    def allowed(self, ip):
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        networks = self.v4 if address.version == 4 else self.v6
        return any(address in network for network in networks)

    def on_request(self, req):
        ip = req.client_ip()
        if self.allowed(ip):
            return None
        log.info("refused %s" % ip)
        return Action.error(self.status, "forbidden", self.message.replace("{ip}", ip))


WitWorld = export(Allowlist)
