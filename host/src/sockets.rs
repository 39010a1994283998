//! Listening sockets, set up the same way for HTTP and gossip.

use std::io;
use std::net::SocketAddr;

/// A non-blocking TCP listener with SO_REUSEADDR (restart without waiting for
/// TIME_WAIT) and the given accept backlog.
pub fn listen_tcp(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}
