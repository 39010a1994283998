// memberlist-peer: one HashiCorp memberlist node driven over stdin/stdout, so the Rust
// end-to-end tests can check FluxGate's gossip against the reference implementation.
//
// Built from Debian's packages in GOPATH mode (no module download), see
// tests/e2e/interop.rs. Flags:
//
//	-name NAME   node name (required)
//	-bind IP     address to bind and advertise (default 127.0.0.1; loopback only in tests)
//	-port N      gossip port, UDP and TCP (default 0: any free port)
//	-advertise-port N  port to advertise instead (default: the bound one)
//	-key B64     AES key (16, 24 or 32 bytes, base64) for encrypted gossip
//
// Standard input, one command a line:
//
//	join ADDR[,ADDR...]   join through these seeds; answers "joined N" or "error join: ..."
//	members               answers "members NAME=STATE ..." (every known node)
//	broadcast TEXT        queues TEXT as a user broadcast (memberlist gossips it for us)
//	leave                 leaves gracefully; answers "left"
//	quit                  exits (so does the end of standard input)
//
// Standard output, one event a line: "ready NAME IP:PORT" once, then "member NAME alive"
// for every join and update, "member NAME dead" for every departure, and "user BYTES"
// for every user message received. memberlist 0.2.2 keeps a node's state beside its
// Node, not in Node.State, so a delegate cannot tell a death from a graceful leave, and
// "members" lists the members not dead or left, each as alive. memberlist's own log
// (suspicions, failed probes, TCP fallback pings) goes to standard error.
package main

import (
	"bufio"
	"encoding/base64"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/hashicorp/memberlist"
)

var out sync.Mutex

func say(format string, args ...interface{}) {
	out.Lock()
	defer out.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

// events prints membership changes as memberlist's EventDelegate reports them.
type events struct{}

func (events) NotifyJoin(n *memberlist.Node)   { say("member %s alive", n.Name) }
func (events) NotifyUpdate(n *memberlist.Node) { say("member %s alive", n.Name) }
func (events) NotifyLeave(n *memberlist.Node)  { say("member %s dead", n.Name) }

// delegate receives user messages and hands out our own broadcasts. Like any memberlist
// application that does not re-broadcast, it never relays what others sent.
type delegate struct {
	queue *memberlist.TransmitLimitedQueue
}

type broadcast []byte

func (b broadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b broadcast) Message() []byte                       { return b }
func (b broadcast) Finished()                             {}

func (d *delegate) NodeMeta(limit int) []byte { return nil }
func (d *delegate) NotifyMsg(msg []byte)      { say("user %d", len(msg)) }
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.queue.GetBroadcasts(overhead, limit)
}
func (d *delegate) LocalState(join bool) []byte            { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool) {}

func main() {
	name := flag.String("name", "", "node name")
	bind := flag.String("bind", "127.0.0.1", "bind and advertise address")
	port := flag.Int("port", 0, "gossip port (0: any)")
	advertisePort := flag.Int("advertise-port", 0, "advertised port (0: the bound one)")
	key := flag.String("key", "", "base64 AES key")
	flag.Parse()
	if *name == "" {
		fmt.Fprintln(os.Stderr, "-name is required")
		os.Exit(2)
	}

	config := memberlist.DefaultLANConfig()
	config.Name = *name
	config.BindAddr = *bind
	config.BindPort = *port
	config.AdvertiseAddr = *bind
	config.AdvertisePort = *port
	if *advertisePort != 0 {
		config.AdvertisePort = *advertisePort
	}
	config.LogOutput = os.Stderr
	config.Events = events{}
	if *key != "" {
		raw, err := base64.StdEncoding.DecodeString(*key)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bad -key:", err)
			os.Exit(2)
		}
		config.SecretKey = raw
	}
	// The queue exists before memberlist starts asking for broadcasts; it is empty (and
	// so never counts members) until the first "broadcast" command, after "ready".
	var list *memberlist.Memberlist
	d := &delegate{queue: &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return list.NumMembers() },
		RetransmitMult: config.RetransmitMult,
	}}
	config.Delegate = d

	list, err := memberlist.Create(config)
	if err != nil {
		fmt.Fprintln(os.Stderr, "create:", err)
		os.Exit(1)
	}
	local := list.LocalNode()
	say("ready %s %s:%d", local.Name, local.Addr, local.Port)

	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		fields := strings.Fields(lines.Text())
		if len(fields) == 0 {
			continue
		}
		switch fields[0] {
		case "join":
			if len(fields) < 2 {
				say("error join: no address")
				continue
			}
			n, err := list.Join(strings.Split(fields[1], ","))
			if err != nil {
				say("error join: %s", strings.ReplaceAll(err.Error(), "\n", " "))
			} else {
				say("joined %d", n)
			}
		case "members":
			var parts []string
			for _, m := range list.Members() {
				parts = append(parts, m.Name+"=alive")
			}
			say("members %s", strings.Join(parts, " "))
		case "broadcast":
			text := strings.TrimSpace(strings.TrimPrefix(lines.Text(), "broadcast"))
			d.queue.QueueBroadcast(broadcast(text))
			say("queued %d", len(text))
		case "leave":
			if err := list.Leave(config.GossipInterval * 10); err != nil {
				say("error leave: %s", err)
			} else {
				say("left")
			}
		case "quit":
			list.Shutdown()
			return
		default:
			say("error unknown command %q", fields[0])
		}
	}
	list.Shutdown()
}
