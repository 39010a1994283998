//! Listening sockets, set up the same way for HTTP and gossip.

use std::io;
use std::net::SocketAddr;

/// Accept backlog of the HTTP and TLS listeners: deep, for bursts of new connections.
pub const ACCEPT_BACKLOG: i32 = 1024;

/// A non-blocking TCP listener with SO_REUSEADDR (restart without waiting for
/// TIME_WAIT) and the given accept backlog; with `reuse_port`, SO_REUSEPORT too, so
/// each worker can bind its own listener on the address (set only then: otherwise a
/// second gateway started by mistake on the port would silently share its traffic).
pub fn listen_tcp(
    addr: SocketAddr,
    backlog: i32,
    reuse_port: bool,
) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Another worker's listener on the same address as `listener`: its own socket when
/// `listener` has SO_REUSEPORT (the kernel spreads connections over the workers'
/// queues), else the same socket shared (a listener bound by someone else: tests,
/// inherited sockets).
pub fn sibling(
    listener: &std::net::TcpListener,
    backlog: i32,
) -> io::Result<std::net::TcpListener> {
    if socket2::SockRef::from(listener).reuse_port()? {
        listen_tcp(listener.local_addr()?, backlog, true)
    } else {
        listener.try_clone()
    }
}
